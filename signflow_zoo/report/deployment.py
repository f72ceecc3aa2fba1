"""The deployment table and the streams-per-machine plot, from flat records of ``bench --scenarios ...``.

One row per preset and backend that ran a deployment scenario (:mod:`signflow_zoo.bench.capacity`,
:mod:`signflow_zoo.bench.server`, :mod:`signflow_zoo.bench.coldstart`): live streams within the deadline (alone and
with dynamic batching, and what batching buys), the server's rate within its bound, the best offline throughput,
the cold start, and the precision the backend really ran. Empty when no record has one.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Any, Sequence

from signflow_zoo.report.escape import plot_text
from signflow_zoo.report.records import ReportError, preset_order
from signflow_zoo.report.records import number as _number
from signflow_zoo.report.tables import FORMATS, TERMINAL_WIDTH, _render, fmt_ms

DEPLOYMENT_KEYS = ("capacity_streams", "server_qps", "offline_seq_per_s", "cold_start_total_ms")
DEFAULT_MS = 100.0  # the default deadline and bound: a cell names another one (e.g. 41@50)
NOTES = (
    "streams = concurrent 30 fps signers one serving process on this machine keeps within the deadline (100 ms unless "
    "@ms): sign end -> prediction p99 <= deadline and <= 1% missed; p99 ms at that many streams; batched = the same "
    "with the sign ends of all streams batched within a window (x = batched / alone); server/s = highest Poisson rate "
    "of single-clip requests with p99 <= 100 ms (unless @ms); offline/s = best sequences/s over batch sizes (at that "
    "batch); cold ms = fresh process -> first prediction, median of 3 (in parentheses: prepare, the session build or compile). "
    "docs/deployment.md"
)


def number(v: Any) -> float | None:
    """A finite number, or None."""
    return _number({"v": v}, "v")


def has_deployment(records: Sequence[dict[str, Any]]) -> bool:
    return any(number(r.get(k)) is not None or r.get("deployment_errors") for r in records for k in DEPLOYMENT_KEYS)


def _int(v: Any) -> str:
    n = number(v)
    return "" if n is None else f"{int(round(n))}"


def _precision(rec: dict[str, Any]) -> str:
    declared = str(rec.get("precision") or "")
    eff = str(rec.get("effective_precision") or "")
    if eff and eff != declared:
        return f"{declared}→{eff}!"
    return declared


def deployment_table(records: Sequence[dict[str, Any]], fmt: str = "terminal") -> str:
    """The deployment table of ``records`` (flat records); ``""`` when none ran a deployment scenario."""
    if fmt not in FORMATS:
        raise ReportError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")
    recs = [r for r in records if has_deployment([r])]
    if not recs:
        return ""
    order = preset_order()
    recs.sort(key=lambda r: (order.get(str(r.get("preset")), 99), str(r.get("preset")), str(r.get("backend"))))
    raw = fmt in ("csv", "json")
    rows = []
    for r in recs:
        alone, batched = number(r.get("capacity_streams")), number(r.get("capacity_batched_streams"))
        gain = batched / alone if alone and batched is not None else None
        if raw:
            row = {k: r.get(k) for k in (
                "preset", "backend", "precision", "effective_precision", "capacity_streams", "capacity_p99_ms",
                "capacity_deadline_ms", "capacity_miss_rate", "capacity_batched_streams", "capacity_batched_p99_ms",
                "capacity_batched_max_batch_wait_ms", "capacity_batched_mean_batch", "server_qps", "server_p99_ms",
                "server_bound_ms", "offline_seq_per_s", "offline_batch", "cold_start_load_ms", "cold_start_prepare_ms",
                "cold_start_first_call_ms", "cold_start_total_ms", "host_class", "created", "deployment_errors")}
            row["batching_gain"] = gain
        else:
            deadline = number(r.get("capacity_deadline_ms"))
            bound = number(r.get("server_bound_ms"))
            row = {
                "preset": r.get("preset", ""), "backend": r.get("backend", ""), "precision": _precision(r),
                "streams": _int(alone) + ("" if deadline is None or deadline == DEFAULT_MS else f"@{fmt_ms(deadline)}"),
                "p99": fmt_ms(number(r.get("capacity_p99_ms"))),
                "batched": "" if batched is None else f"{_int(batched)}" + ("" if gain is None else f" ({gain:.2f}x)"),
                "qps": "" if number(r.get("server_qps")) is None else
                f"{number(r.get('server_qps')):.0f}" + ("" if bound is None or bound == DEFAULT_MS else f"@{fmt_ms(bound)}"),
                "offline": "" if number(r.get("offline_seq_per_s")) is None else
                f"{number(r.get('offline_seq_per_s')):.0f} (b{_int(r.get('offline_batch'))})",
                "cold": "" if number(r.get("cold_start_total_ms")) is None else
                f"{fmt_ms(number(r.get('cold_start_total_ms')))} ({fmt_ms(number(r.get('cold_start_prepare_ms')))})",
            }
        rows.append(row)
    if raw:
        columns = [(k, k) for k in rows[0]]
        return _render(columns, rows, fmt, set())
    columns = [("preset", "preset"), ("backend", "backend"), ("precision", "precision"),
               ("streams", "streams"), ("p99", "p99 ms"), ("batched", "batched"), ("qps", "server/s"),
               ("offline", "offline/s"), ("cold", "cold ms")]
    text = _render(columns, rows, fmt, {"streams", "p99", "batched", "qps", "offline", "cold"})
    hosts = sorted({str(r.get("host_class") or r.get("cpu") or "") for r in recs} - {""})
    tail = [NOTES] + ([f"host: {', '.join(hosts)}"] if hosts else [])
    tail += [f"error: {r.get('preset')}/{r.get('backend')}: {r['deployment_errors']}" for r in recs
             if r.get("deployment_errors")]
    if any(str(r.get("effective_precision") or "") not in ("", str(r.get("precision") or "")) for r in recs):
        tail.append("! = the backend declared one precision and ran another (read back from its session)")
    if fmt == "terminal":
        tail = [w for line in tail for w in textwrap.wrap(line, TERMINAL_WIDTH, subsequent_indent="  ")]
    sep = "\n\n" if fmt == "markdown" else "\n"
    return text + sep + sep.join(tail)


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def plot_capacity(records: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Streams per machine by preset (groups) and backend (bars): alone, and batched as a lighter bar."""
    from signflow_zoo.common.figures import new_figure, save_figure

    recs = [r for r in records if number(r.get("capacity_streams")) is not None]
    if not recs:
        raise ReportError("nothing to plot: no record has a capacity (bench --scenarios capacity)")
    order = preset_order()
    presets = sorted({str(r["preset"]) for r in recs}, key=lambda p: (order.get(p, 99), p))
    backends = sorted({str(r["backend"]) for r in recs})
    by = {(str(r["preset"]), str(r["backend"])): r for r in recs}
    width = 0.8 / max(1, len(backends))
    fig = new_figure(max(6.0, 1.2 * len(presets) * max(1, len(backends)) ** 0.5 + 3), 4.6)
    ax = fig.subplots()
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
              "tab:olive", "tab:cyan"]
    top = 0.0
    for j, be in enumerate(backends):
        xs, alone, batched = [], [], []
        for i, p in enumerate(presets):
            r = by.get((p, be))
            if r is None:
                continue
            xs.append(i + (j - (len(backends) - 1) / 2) * width)
            alone.append(number(r.get("capacity_streams")) or 0.0)
            batched.append(number(r.get("capacity_batched_streams")) or math.nan)
        color = colors[j % len(colors)]
        ax.bar(xs, alone, width * 0.9, color=color, label=plot_text(be))
        extra = [max(0.0, b - a) if math.isfinite(b) else 0.0 for a, b in zip(alone, batched)]
        if any(extra):
            ax.bar(xs, extra, width * 0.9, bottom=alone, color=color, alpha=0.35, hatch="//")
        for x, a, b in zip(xs, alone, batched):
            v = max(a, b if math.isfinite(b) else 0.0)
            top = max(top, v)
            ax.annotate(f"{int(a)}" + (f"/{int(b)}" if math.isfinite(b) else ""), (x, v), ha="center", va="bottom",
                        fontsize=7)
    ax.set_xticks(range(len(presets)), [plot_text(p) for p in presets])
    ax.set_ylim(0, top * 1.15 + 1)
    deadline = next((number(r.get("capacity_deadline_ms")) for r in recs), None)
    ax.set_ylabel("concurrent 30 fps signers")
    ax.set_title(plot_text(f"Streams per machine within a {fmt_ms(deadline)} ms p99 sign-end deadline "
                           "(hatched: gained by batching)"), fontsize=10)
    ax.legend(fontsize=8, ncol=min(4, len(backends)))
    ax.grid(True, axis="y", alpha=0.25)
    return save_figure(fig, path)


__all__ = ["deployment_table", "plot_capacity", "has_deployment", "DEPLOYMENT_KEYS"]
