"""Plots from flat bench records: accuracy vs latency (Pareto), latency distributions, confusion matrix.

Drawn with matplotlib's object API on an Agg canvas (no pyplot: no global state, no GUI backend, safe in
threads). :func:`write_report` writes the tables and plots of one set of records into a folder.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

from signflow_zoo.report.escape import plot_text
from signflow_zoo.report.records import (REFERENCE_BACKEND, ReportError, accuracy_interval, batch_sizes_of, is_noisy, number,
                             preset_order, started_ms)
from signflow_zoo.report.tables import comparison_table, fmt_ms
from signflow_zoo.common.figures import new_figure as _figure
from signflow_zoo.common.figures import save_figure as _save
from signflow_zoo.model.confusion import plot_confusion  # noqa: F401  - one of the report figures


# -- plots -------------------------------------------------------------------------------------------


def pareto_front(points: Sequence[tuple[float, float]],
                 intervals: Sequence[tuple[float, float]] | None = None) -> list[int]:
    """Indices of the points no other point beats (lower x *and* higher y), ordered by x ascending.

    x is a cost (latency), y a gain (accuracy). Without ``intervals`` a point is dropped when another has
    x <= and y >= with one of them strict (identical points are all kept). With ``intervals`` (y's 95%
    interval per point) accuracy differences must be real: a point stays on the front only if its
    interval lies entirely above the interval of every faster point, so a one-clip accuracy edge never
    makes a slower backend "the better choice".
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    if intervals is not None:
        best_hi = -math.inf
        for i in order:
            lo, hi = intervals[i]
            if lo > best_hi:
                front.append(i)
            best_hi = max(best_hi, hi)
        return front
    best = -math.inf
    for i in order:
        x, y = points[i]
        if y > best:
            front.append(i)
            best = y
        elif front and (x, y) == tuple(points[front[-1]]):
            front.append(i)
    return front


_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]


def _plain_log_ticks(axis, lo: float, hi: float) -> None:
    """Log-axis ticks a reader reads as numbers (2, 5, 10, 20 ms), also over a narrow range."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    if hi / lo >= 6:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    else:  # within less than a decade a log locator leaves one tick or none
        axis.set_major_locator(MaxNLocator(nbins=5))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _point(rec: dict[str, Any], b: int) -> tuple[float, float]:
    """(p50 ms at batch ``b``, top-1 %) of a record that has both (plot_pareto keeps only those)."""
    x, y = number(rec, f"latency_p50_ms_b{b}"), number(rec, "accuracy_top1")
    assert x is not None and y is not None
    return x, 100 * y


def plot_pareto(records: Sequence[dict[str, Any]], path: str | os.PathLike, batch_size: int = 1) -> Path:
    """Accuracy vs latency, one point per (preset, backend), the Pareto front stepped and ringed.

    One panel per host when the records come from several machines: latencies of different
    machines are not comparable, so each host gets its own front.
    """
    b = int(batch_size)
    newest: dict[tuple, dict[str, Any]] = {}
    for r in sorted(records, key=started_ms):
        x, y = number(r, f"latency_p50_ms_b{b}"), number(r, "accuracy_top1")
        if x is not None and y is not None and x > 0:
            newest[(r.get("host", ""), r.get("preset", ""), r.get("backend", ""))] = r
    if not newest:
        have = batch_sizes_of(records)
        hint = f" (latencies exist at batch sizes {', '.join(map(str, have))}: pass one of those)" if have and b not in have else ""
        raise ReportError(
            f"nothing to plot: no record has both a p50 latency at batch {b} (latency_p50_ms_b{b}) and a top-1 "
            f"accuracy (accuracy_top1){hint}; run `signflow-zoo bench` with accuracy evaluation on"
        )
    order = preset_order()
    hosts = sorted({k[0] for k in newest})
    presets = sorted({k[1] for k in newest}, key=lambda p: (order.get(p, len(order)), p))
    backends = sorted({k[2] for k in newest}, key=lambda x: (x != REFERENCE_BACKEND, x))
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    palette = colormaps["tab10"]
    color = {bk: palette(i % 10) for i, bk in enumerate(backends)}
    marker = {p: _MARKERS[i % len(_MARKERS)] for i, p in enumerate(presets)}

    fig = _figure(6.0 * len(hosts) + 2.4, 5.0)
    axes = fig.subplots(1, len(hosts), sharey=True, squeeze=False)[0]
    any_noisy = any_failed = any_ci = False
    for ax, host in zip(axes, hosts):
        keys = [k for k in newest if k[0] == host]
        pts = [_point(newest[k], b) for k in keys]
        cis = [accuracy_interval(newest[k]) for k in keys]
        ok = [i for i, k in enumerate(keys) if newest[k].get("status", "ok") == "ok"]
        for k, (x, y), ci in zip(keys, pts, cis):
            if ci is not None:
                any_ci = True
                ax.errorbar([x], [y], yerr=[[max(0.0, y - ci[0])], [max(0.0, ci[1] - y)]], fmt="none", ecolor=color[k[2]], alpha=0.5,
                            capsize=3, linewidth=1.0, zorder=2)
            noisy, status = is_noisy(newest[k], b), newest[k].get("status", "ok")
            any_noisy, any_failed = any_noisy or noisy, any_failed or status != "ok"
            hollow = status != "ok"  # a failed backend is shown, but cannot be a recommendation
            ax.scatter([x], [y], s=60, marker=marker[k[1]], zorder=3, alpha=0.6 if noisy else 1.0,
                       facecolors="none" if hollow else color[k[2]], edgecolors=color[k[2]],
                       linewidths=1.5 if hollow else 0.0)
            # the preset is named only when several are plotted (the marker legend names a single one, and
            # neighbouring points' identical labels overprinted each other)
            label = (k[1] if len(presets) > 1 else "") + (" ~" if noisy else "") + (f" ({status})" if hollow else "")
            if label.strip():
                ax.annotate(plot_text(label.strip()), (x, y), textcoords="offset points", xytext=(6, 4), fontsize=7,
                            color="0.25")
        ok_cis = [ci for i in ok if (ci := cis[i]) is not None]
        use_ci = len(ok_cis) == len(ok)
        front = [pts[ok[i]] for i in pareto_front([pts[i] for i in ok], ok_cis if use_ci else None)]
        fx, fy = [p[0] for p in front], [p[1] for p in front]
        ax.step(fx, fy, where="post", color="0.35", linestyle="--", linewidth=1.2, zorder=2)
        ax.scatter(fx, fy, s=190, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4)
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis, min(p[0] for p in pts), max(p[0] for p in pts))
        ax.set_xlabel(f"p50 latency at batch {b} (ms, log scale)")
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.1)
        ax.margins(x=0.15, y=0.12)
        if len(hosts) > 1:
            ax.set_title(plot_text(f"host {host}"), fontsize=10)
    axes[0].set_ylabel("top-1 accuracy (%)")
    fig.suptitle(f"Top-1 vs p50 latency at batch {b}, Pareto front ringed", fontsize=11)

    # names from results are data: plot_text escapes mathtext ($) and control characters
    handles = [Line2D([], [], linestyle="none", marker="o", color=color[bk], label=plot_text(bk)) for bk in backends]
    handles += [Line2D([], [], linestyle="none", marker=marker[p], color="0.3", label=plot_text(p)) for p in presets]
    handles.append(Line2D([], [], linestyle="--", marker="o", markerfacecolor="none", markeredgecolor="black",
                          markersize=10, color="0.35", label="Pareto front"))
    if any_failed:
        handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="none", markeredgecolor="0.3",
                              label="hollow: status not ok\n(not on the front)"))
    if any_noisy:
        handles.append(Line2D([], [], linestyle="none", marker="o", color="0.3", alpha=0.6,
                              label="faded, ~: noisy latency"))
    if any_ci:
        handles.append(Line2D([], [], linestyle="-", marker="_", color="0.5",
                              label="bar: 95% interval of top-1\n(front: a slower point stays\nonly above every faster one)"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="colour: backend\nmarker: preset",
               title_fontsize=8, frameon=False, alignment="left")
    return _save(fig, path)


def plot_latency_distributions(samples: dict[str, Sequence[float]], path: str | os.PathLike,
                               title: str = "Per-iteration latency") -> Path:
    """Box plot of per-iteration latencies (ms) per label, e.g. ``"large / onnx-cpu / b1"``."""
    data = {label: [float(v) for v in vals if v is not None and math.isfinite(float(v))]
            for label, vals in samples.items()}
    data = {k: v for k, v in data.items() if v}
    if not data:
        raise ReportError("nothing to plot: every latency sample list is empty; time at least one backend first")
    labels = list(data)
    lo = min(min(v) for v in data.values())
    hi = max(max(v) for v in data.values())
    fig = _figure(max(5.5, 1.3 * len(labels) + 2.5), 4.8)
    ax = fig.subplots()
    ax.boxplot([data[k] for k in labels], showfliers=True, whis=(1, 99),
               medianprops={"color": "tab:red", "linewidth": 1.5},
               flierprops={"marker": ".", "markersize": 3, "alpha": 0.5})
    ax.set_xticks(range(1, len(labels) + 1), [plot_text(k) for k in labels])
    ax.set_xlim(0.5, len(labels) + 0.9)  # room for the last median's label
    for i, k in enumerate(labels, start=1):
        med = sorted(data[k])[len(data[k]) // 2]
        ax.annotate(f"{fmt_ms(med)} ms", (i + 0.27, med), va="center", ha="left", fontsize=7, color="tab:red")
    if lo > 0 and hi / lo > 20:
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis, lo, hi)
        ax.set_ylabel("latency per iteration (ms, log scale)")
    else:
        ax.set_ylabel("latency per iteration (ms)")
    ax.set_xlabel("preset / backend / batch  (whiskers: p1-p99, red: median)")
    ax.tick_params(axis="x", labelrotation=25, labelsize=8)
    for t in ax.get_xticklabels():
        t.set_horizontalalignment("right")
    ax.grid(True, axis="y", which="both", alpha=0.25)
    ax.set_title(plot_text(title), fontsize=11)
    return _save(fig, path)


def write_report(records: Sequence[dict[str, Any]], out_dir: str | os.PathLike, fmt: str = "png", *,
                 batch_size: int = 1, samples: dict[str, Sequence[float]] | None = None) -> dict[str, Path]:
    """The table as Markdown and CSV, the Pareto plot and (given ``samples``) the latency plot.

    ``fmt`` is the image format (png, svg, pdf). A plot the records cannot feed is left out rather than
    failing the report; the returned dict names only the files written.
    """
    fmt = fmt.lstrip(".").lower()
    if fmt not in ("png", "svg", "pdf"):
        raise ReportError(f"unknown image format {fmt!r}; choose png, svg or pdf")
    out = Path(out_dir)
    written: dict[str, Path] = {}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for key, table_fmt, name in (("table_markdown", "markdown", "comparison.md"),
                                     ("table_csv", "csv", "comparison.csv")):
            p = out / name
            p.write_text(comparison_table(records, fmt=table_fmt) + "\n", encoding="utf-8")
            written[key] = p
    except OSError as exc:
        raise ReportError(f"cannot write the report into {out}: {exc.strerror or exc}; choose another folder") from None
    try:
        written["pareto"] = plot_pareto(records, out / f"pareto_b{batch_size}.{fmt}", batch_size=batch_size)
    except ReportError:
        pass
    if samples:
        try:
            written["latency"] = plot_latency_distributions(samples, out / f"latency.{fmt}")
        except ReportError:
            pass
    return written
