"""Figures drawn with matplotlib's object API on an Agg canvas: no pyplot, so no global state, no GUI backend,
and safe in threads. matplotlib is imported only when a figure is drawn."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from signflow_zoo.common.errors import ReportError


def new_figure(width: float, height: float, layout: Literal["constrained", "compressed", "tight"] = "constrained"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=150, layout=layout)
    FigureCanvasAgg(fig)  # no pyplot: no global state, no GUI backend, safe in threads
    return fig


def save_figure(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    except OSError as exc:
        raise ReportError(f"cannot write the plot {path}: {exc.strerror or exc}; choose another folder") from None
    return path
