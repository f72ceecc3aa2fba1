"""The confusion-matrix figure training logs with its run (and ``report`` re-exports)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from signflow_zoo.common.errors import ReportError
from signflow_zoo.common.figures import new_figure, save_figure
from signflow_zoo.common.text import plot_text


def plot_confusion(cm: Any, labels: Sequence[str] | None, path: str | os.PathLike,
                   title: str = "Confusion matrix", normalize: bool = True) -> Path:
    """Heatmap of a confusion matrix (rows true, columns predicted), row-normalised by default.

    Tick labels shrink with the class count and are hidden beyond 40 classes. Class names are shown as written
    (``$`` is not mathtext, control characters are escaped).
    """
    import numpy as np

    m = np.asarray(cm, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ReportError(f"a confusion matrix must be square and non-empty, got shape {m.shape}")
    n = m.shape[0]
    if labels is not None and len(labels) != n:
        raise ReportError(f"{len(labels)} class labels given for a {n}x{n} confusion matrix; give one per class")
    if normalize:
        rows = m.sum(axis=1, keepdims=True)
        m = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    size = min(10.0, max(5.5, 3.0 + n * 0.09))
    fig = new_figure(size + 1.2, size, layout="compressed")  # "constrained" pushes fixed-aspect axes off the edge
    ax = fig.subplots()
    im = ax.imshow(m, cmap="Blues", interpolation="nearest", vmin=0.0)  # auto vmax: a weak model stays visible
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("fraction of the true class" if normalize else "count")
    names = [plot_text(x) for x in labels] if labels is not None else [str(i) for i in range(n)]
    if n <= 40:
        font = max(5.0, min(9.0, 240.0 / n))
        ax.set_xticks(range(n), names, rotation=90, fontsize=font)
        ax.set_yticks(range(n), names, fontsize=font)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    else:  # names would be unreadable: class indices every few classes, to find a cell
        step = 10 if n <= 200 else 50
        ax.set_xticks(range(0, n, step))
        ax.set_yticks(range(0, n, step))
        ax.tick_params(labelsize=7)
        ax.set_xlabel(f"predicted (class index; {n} classes, names hidden)")
        ax.set_ylabel(f"true (class index; {n} classes, names hidden)")
    if n <= 12:
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    ax.text(j, i, f"{m[i, j]:.2f}" if normalize else f"{m[i, j]:.0f}", ha="center", va="center",
                            fontsize=7, color="white" if m[i, j] > 0.6 * (m.max() or 1) else "black")
    acc = float(np.trace(np.asarray(cm, dtype=float)) / max(np.asarray(cm, dtype=float).sum(), 1))
    ax.set_title(f"{plot_text(title)} (top-1 {100 * acc:.1f}%)", fontsize=11)
    return save_figure(fig, path)


# -- everything at once ------------------------------------------------------------------------------
