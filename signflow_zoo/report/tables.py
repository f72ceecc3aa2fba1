"""Comparison tables from flat bench records (see :mod:`signflow_zoo.report.records`).

terminal/markdown show formatted cells (``~`` marks a noisy latency, ``?`` an invalid one (cut short), ``≈`` a
speedup indistinguishable from 1.0x, ``!`` the status of a row whose run was unstable, ``fp32→bf16`` a backend that
declares fp32 but ran bf16: after the status, and in the wide table's precision column); csv/json hold the raw
numbers under stable keys, so scripts can read them. The default terminal table is the narrow view that fits
:data:`TERMINAL_WIDTH` columns; ``wide=True`` (``report --wide``), markdown, csv and json are complete.
"""

from __future__ import annotations

import csv
import io
import json
import textwrap
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

from signflow_zoo.report import escape
from signflow_zoo.report.records import (REFERENCE_BACKEND, ReportError, batch_sizes_of, is_noisy, number, p99_valid,
                             preset_order, reference_of, references, sort_key, started_ms)
from signflow_zoo.results.latency import NOISY_RULE, TAIL_CONFIDENCE, min_calls_for_tail

FORMATS = ("terminal", "markdown", "csv", "json")
NOISY_MARK = "~"
SAME_MARK = "≈"
TAIL_MARK = "<"  # a p99 from too few calls to claim: shown as "<n calls", not as a number
UNSTABLE_MARK = "!"  # before the status of a row whose run was unstable (signflow_zoo.bench.stability)
# between the declared and the effective precision of a row whose backend ran another one (fp32→bf16): after its
# status (narrow table), in its precision column (wide table, markdown)
PRECISION_MARK = "→"
PRECISION_LEGEND = (f"A{PRECISION_MARK}B = the backend declares precision A but ran B (read back from its session or "
                    "compiled model after prepare: effective_precision); its timing, parity and accuracy are B's")
NOISY_LEGEND = (f"{NOISY_MARK} = {NOISY_RULE}; rerun on a quieter machine or with more iterations (--min-time)")
TAIL_LEGEND = (f"{TAIL_MARK}N calls = too few calls to claim a p99 (an upper bound at {TAIL_CONFIDENCE:.0%} confidence "
               f"needs {min_calls_for_tail()}: MLPerf LoadGen's early-stopping rule); raise --tail-iters or --min-iters")
SAME_LEGEND = (f"{SAME_MARK} = indistinguishable from {{ref}} in this run: the 95% bootstrap interval of the speedup "
               "contains 1.0x")
INVALID_MARK = "?"  # before a p50 whose timing was cut short (MLPerf LoadGen's INVALID: results/latency.py)
INVALID_LEGEND = (f"{INVALID_MARK} = invalid: the timing hit its time limit before --min-iters calls (MLPerf LoadGen's "
                  "INVALID); the number is shown, not to be trusted: rerun with fewer backends or a larger --min-time")
WORST_HEADER = "worst signer"  # the narrow table's column of the worst held-out signer's top-1
TERMINAL_WIDTH = 120  # the default terminal table (report, the end of bench) fits in this many columns
# the narrow table's columns in the order they give way when it would not fit TERMINAL_WIDTH (--wide keeps them)
NARROW_DROP_ORDER = ("ece", "worst_signer_top1", "created")
ECE_NOTE = ("ECE = expected calibration error (15 bins) of the trained model's probabilities at its served temperature, "
            "measured on the held-out part of the validation set (not the part the temperature was fitted on){before}; "
            "one value per preset, the same on each backend's row; blank for a model calibrated before ECE was held out")
REASONS_TITLE = "reasons (unavailable and failed rows):"
WIDE_HINT = ("more columns (p99, seq/s, params, roofline share, Δ top-1, agreement, parity, memory, ECE, the worst "
             "signer and a top-1 interval over signers) and one row per preset for every backend: "
             "`signflow-zoo report --wide`, or --format markdown|csv|json")
WORST_NOTE = ("worst signer = top-1 of the held-out signer with the lowest top-1 (which signer, and a 95% top-1 "
              "interval bootstrapped over signers: `signflow-zoo report --wide`)")
SIGNER_CI_NOTE = ("worst signer = top-1 of the held-out signer with the lowest top-1 (its id in parentheses); top-1 "
                  "signer CI = 95% interval of top-1 bootstrapped over the held-out signers (whole signers resampled): "
                  "wider than the Wilson interval when signers differ, none with a single signer")
INTERVALS_NOTE = ("[lo-hi] = 95% intervals: p50 from a bootstrap over the timed blocks; vs eager = "
                  f"{REFERENCE_BACKEND}'s p50 over this row's on the same preset, host and batch, its bootstrap "
                  "interval when both ran in one bench run; top-1 a Wilson interval over the held-out clips")


# -- formatting ------------------------------------------------------------------------------------


def fmt_ms(v: float | None) -> str:
    if v is None:
        return ""
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_count(v: float | None) -> str:
    """Parameter counts as a reader says them: 870k, 2.55M, 12.1M."""
    if v is None:
        return ""
    if v >= 1e9:
        return f"{v / 1e9:.2f}B"
    if v >= 1e7:
        return f"{v / 1e6:.1f}M"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.0f}k"
    return f"{v:.0f}"


def _fmt_pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.1f}%"


def _fmt_throughput(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def _fmt_seconds(v: float | None) -> str:
    if v is None:
        return ""
    if v >= 3600:
        return f"{v / 3600:.1f} h"
    if v >= 120:
        return f"{v / 60:.1f} min"
    return f"{v:.1f} s"


def _fmt_sci(v: float | None) -> str:
    return "" if v is None else f"{v:.1e}"


def _fmt_plain(v: float | None) -> str:
    return "" if v is None else f"{v:g}"


def _status_text(rec: dict[str, Any], width: int = 36) -> str:
    status = str(rec.get("status", "") or "?")
    reason = " ".join(str(rec.get("reason", "") or "").split())
    if status == "ok" or not reason:
        return status
    if len(reason) > width:
        reason = reason[: width - 3].rstrip() + "..."
    return f"{status}: {reason}"


def _render(columns: list[tuple[str, str]], rows: list[dict[str, Any]], fmt: str, right: set[str]) -> str:
    """``columns`` = [(key, header)]; rows hold display strings for terminal/markdown, raw values otherwise.
    Every string cell and header is escaped for ``fmt`` (:func:`signflow_zoo.report.escape.cell`): host names and
    reasons come from result files."""
    if fmt == "json":
        return json.dumps([{k: row.get(k) for k, _ in columns} for row in rows], indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([escape.cell(k, fmt) for k, _ in columns])
        for row in rows:
            w.writerow(["" if row.get(k) is None else escape.cell(row.get(k), fmt) for k, _ in columns])
        return buf.getvalue()
    from tabulate import tabulate

    table = [[escape.cell(row.get(k, ""), fmt) for k, _ in columns] for row in rows]
    align = ["right" if k in right else "left" for k, _ in columns]
    return tabulate(table, headers=[escape.cell(h, fmt) for _, h in columns],
                    tablefmt="simple" if fmt == "terminal" else "github", disable_numparse=True, colalign=align)


def _check_fmt(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ReportError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")


# -- the comparison table ------------------------------------------------------------------------------


def comparison_table(records: Sequence[dict[str, Any]], fmt: str = "terminal",
                     batch_sizes: Iterable[int] | str | None = None, wide: bool | None = None) -> str:
    """The comparison table of flat bench records.

    The default terminal table is the *narrow* view (:func:`_narrow_table`): one row per (preset, batch size,
    backend[, host]) with the p50, the speedup over torch-eager and top-1, each with its 95% interval, and
    the status; an unavailable backend is one folded line whatever the number of presets, its full reason below
    the table; every line fits :data:`TERMINAL_WIDTH` columns. ``wide=True`` (``report --wide``) is the full
    table: one row per (preset, backend[, host]) with status, size, latency, throughput, speedup, roofline
    share, accuracy (with the worst held-out signer and a top-1 interval bootstrapped over signers), parity, memory
    and the held-out ECE of the preset's calibration (before -> after). markdown (a file the bench writes next to its result), csv and json are
    complete unless ``wide=False`` is asked for (csv/json always are: the raw numbers under stable keys).
    """
    _check_fmt(fmt)
    records = list(records)
    if isinstance(batch_sizes, str):
        batch_sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    sizes = sorted(set(int(b) for b in batch_sizes)) if batch_sizes else batch_sizes_of(records)
    records.sort(key=sort_key(preset_order()))
    if wide is None:
        wide = fmt != "terminal"
    if wide or fmt in ("csv", "json"):
        return _wide_table(records, fmt, sizes)
    return _narrow_table(records, fmt, sizes)


def _wide_table(records: list[dict[str, Any]], fmt: str, sizes: list[int]) -> str:
    """One row per (preset, backend[, host]): status, size, latency, throughput, speedup, accuracy, parity.

    terminal/markdown show formatted cells (``~`` marks a noisy latency, speedup is torch-eager's p50
    over this backend's p50 on the same preset and host); csv/json hold the raw numbers under stable keys.
    """
    several_hosts = len({r.get("host", "") for r in records}) > 1
    classes = sorted({str(r.get("host_class") or "") for r in records} - {""})
    keys = [(r.get("preset"), r.get("backend"), r.get("host", "")) for r in records]
    repeated = len(set(keys)) < len(keys)
    raw = fmt in ("csv", "json")

    columns: list[tuple[str, str]] = [("preset", "preset"), ("backend", "backend")]
    if several_hosts or raw:
        columns.append(("host", "host"))
    if len(classes) > 1 or raw:
        columns.append(("host_class", "host class"))
    if repeated or raw:
        columns.append(("created", "created"))
    columns.append(("status", "status"))
    if raw:
        columns.append(("reason", "reason"))
    # what really ran (Runner.effective_precision); on screen the precision is declared→effective where they differ
    columns += ([("precision", "precision"), ("effective_precision", "effective precision"),
                 ("effective_device", "effective device"), ("precision_mismatch", "precision mismatch")] if raw
                else [("effective_precision", "precision"), ("effective_device", "device")])
    columns.append(("num_params", "params"))
    for b in sizes:
        columns += [(f"p50_ms_b{b}", f"p50 ms b{b}"), (f"p99_ms_b{b}", f"p99 ms b{b}"),
                    (f"throughput_seq_s_b{b}", f"seq/s b{b}")]
        if raw:
            columns += [(f"noisy_b{b}", f"noisy b{b}"), (f"valid_b{b}", f"valid b{b}")]
        columns += [(f"speedup_b{b}", f"vs eager b{b}"), (f"roofline_share_b{b}", f"roof b{b}")]
    columns += [("accuracy_top1", "top-1"), ("accuracy_change", "Δ top-1"), ("agreement_top1", "agree"),
                ("parity_max_abs", "parity abs"), ("memory_mb", "mem MB")]
    if raw:
        columns[-5:-4] = [("accuracy_top1", "top-1"), ("accuracy_top1_ci_lo", "top-1 CI lo"),
                          ("accuracy_top1_ci_hi", "top-1 CI hi")]
    # the worst held-out signer and the top-1 interval bootstrapped over signers (docs/results.md)
    i = columns.index(("accuracy_change", "Δ top-1"))
    columns[i:i] = ([("accuracy_worst_signer_top1", "worst signer top-1"), ("worst_signer", "worst signer"),
                     ("accuracy_top1_signer_ci_lo", "top-1 signer CI lo"),
                     ("accuracy_top1_signer_ci_hi", "top-1 signer CI hi"), ("accuracy_signers", "signers")]
                    if raw else [("accuracy_worst_signer_top1", "worst signer"),
                                 ("accuracy_top1_signer_ci", "top-1 signer CI")])
    # the held-out ECE of the preset's calibration (before -> after its temperature on screen)
    columns += ([("calibration_ece_before", "ECE before"), ("calibration_ece_after", "ECE"),
                 ("calibration_eval_size", "ECE clips")] if raw else [("calibration_ece_after", "ECE")])
    if raw:
        for b in sizes:
            i = columns.index((f"p50_ms_b{b}", f"p50 ms b{b}"))
            columns[i + 1:i + 1] = [(f"p50_ci_lo_ms_b{b}", f"p50 CI lo b{b}"), (f"p50_ci_hi_ms_b{b}", f"p50 CI hi b{b}")]
            k = columns.index((f"p99_ms_b{b}", f"p99 ms b{b}"))
            columns[k + 1:k + 1] = [(f"p99_upper_ms_b{b}", f"p99 upper b{b}"), (f"n_b{b}", f"n b{b}")]
            j = columns.index((f"speedup_b{b}", f"vs eager b{b}"))
            columns[j + 1:j + 1] = [(f"speedup_ci_lo_b{b}", f"vs eager CI lo b{b}"),
                                    (f"speedup_ci_hi_b{b}", f"vs eager CI hi b{b}"),
                                    (f"speedup_distinguishable_b{b}", f"distinguishable b{b}")]

    rows: list[dict[str, Any]] = []
    any_noisy = any_same = any_short_tail = any_invalid = any_other_precision = False
    refs = references(records)
    for r in records:
        ref = reference_of(r, refs)
        row: dict[str, Any] = {"preset": r.get("preset", ""), "backend": r.get("backend", ""),
                               "host": r.get("host", ""), "host_class": r.get("host_class", "") or "", "created": r.get("created") or _iso(started_ms(r))}
        mismatch = number(r, "precision_mismatch")
        if raw:
            row.update(status=r.get("status", ""), reason=r.get("reason", "") or "", num_params=_int(number(r, "num_params")),
                       precision=r.get("precision") or None, effective_precision=r.get("effective_precision") or None,
                       effective_device=r.get("effective_device") or None,
                       precision_mismatch=None if mismatch is None else mismatch == 1.0)
        else:
            row.update(status=(UNSTABLE_MARK if r.get("stability_status") == "unstable" else "") + _status_text(r),
                       num_params=fmt_count(number(r, "num_params")),
                       effective_precision=_ran_other_precision(r) or str(r.get("effective_precision") or ""),
                       effective_device=str(r.get("effective_device") or ""))
            any_other_precision = any_other_precision or mismatch == 1.0
        for b in sizes:
            p50, p99 = number(r, f"latency_p50_ms_b{b}"), number(r, f"latency_p99_ms_b{b}")
            noisy = is_noisy(r, b)
            speedup, same = _speedup(r, ref, b)
            thr = number(r, f"throughput_seq_s_b{b}")
            share = number(r, f"roofline_share_b{b}")
            row[f"roofline_share_b{b}"] = share if raw else ("" if share is None else f"{100 * share:.0f}%")
            if raw:
                row.update({f"p50_ms_b{b}": p50, f"p50_ci_lo_ms_b{b}": number(r, f"latency_p50_ci_lo_ms_b{b}"),
                            f"p50_ci_hi_ms_b{b}": number(r, f"latency_p50_ci_hi_ms_b{b}"), f"p99_ms_b{b}": p99,
                            f"p99_upper_ms_b{b}": number(r, f"latency_p99_upper_ms_b{b}"),
                            f"n_b{b}": _int(number(r, f"iterations_b{b}")),
                            f"throughput_seq_s_b{b}": thr, f"noisy_b{b}": noisy if p50 is not None else None,
                            f"speedup_b{b}": None if speedup is None else round(speedup, 4),
                            f"speedup_distinguishable_b{b}": None if speedup is None else not same,
                            f"valid_b{b}": None if p50 is None else _valid(r, b)})
                ci = _speedup_interval(r, ref, b)
                row[f"speedup_ci_lo_b{b}"], row[f"speedup_ci_hi_b{b}"] = ci if ci else (None, None)
            else:
                invalid = p50 is not None and _valid(r, b) is False
                mark = (INVALID_MARK if invalid else "") + (NOISY_MARK if noisy else "")
                any_noisy = any_noisy or (noisy and p50 is not None)
                any_invalid = any_invalid or invalid
                any_same = any_same or (speedup is not None and same)
                speed_mark = SAME_MARK if same else (NOISY_MARK if noisy or (ref is not None and is_noisy(ref, b)) else "")
                tail_ok = p99_valid(r, b)
                any_short_tail = any_short_tail or (p99 is not None and not tail_ok)
                row.update({f"p50_ms_b{b}": mark + fmt_ms(p50) if p50 is not None else "",
                            f"p99_ms_b{b}": ("" if p99 is None else mark + fmt_ms(p99) if tail_ok
                                             else f"{TAIL_MARK}{_int(number(r, f'iterations_b{b}')) or 0} calls"),
                            f"throughput_seq_s_b{b}": _fmt_throughput(thr),
                            f"speedup_b{b}": "" if speedup is None else f"{speed_mark}{speedup:.2f}x"})
        acc, agree = number(r, "accuracy_top1"), number(r, "agreement_top1")
        lo, hi = number(r, "accuracy_top1_ci_lo"), number(r, "accuracy_top1_ci_hi")
        par, mem = number(r, "parity_max_abs"), number(r, "memory_mb")
        ref_acc = number(ref, "accuracy_top1") if ref is not None else None
        change = None if acc is None or ref_acc is None else acc - ref_acc
        row["accuracy_change"] = change if raw else ("" if change is None or ref is r else f"{100 * change:+.1f}")
        ece_before, ece_after, ece_n = _held_out_ece(r)
        worst, slo, shi = (number(r, k) for k in ("accuracy_worst_signer_top1", "accuracy_top1_signer_ci_lo",
                                                  "accuracy_top1_signer_ci_hi"))
        signers = _int(number(r, "accuracy_signers"))
        if raw:
            row.update(accuracy_worst_signer_top1=worst, accuracy_top1_signer_ci_lo=slo, accuracy_top1_signer_ci_hi=shi,
                       worst_signer=None if worst is None else str(r.get("worst_signer") or ""), accuracy_signers=signers)
            row.update(accuracy_top1=acc, accuracy_top1_ci_lo=lo, accuracy_top1_ci_hi=hi, agreement_top1=agree,
                       parity_max_abs=par, memory_mb=mem, calibration_ece_before=ece_before,
                       calibration_ece_after=ece_after, calibration_eval_size=_int(ece_n))
        else:
            row.update(accuracy_top1=_fmt_pct(acc) + (f" [{100 * lo:.0f}-{100 * hi:.0f}]" if lo is not None and hi is not None else ""),
                       agreement_top1=_fmt_pct(agree), parity_max_abs=_fmt_sci(par),
                       memory_mb="" if mem is None else f"{mem:.0f}",
                       calibration_ece_after=_fmt_ece(ece_before, ece_after),
                       accuracy_worst_signer_top1="" if worst is None else f"{_fmt_pct(worst)} ({_signer_name(r)})",
                       accuracy_top1_signer_ci=_fmt_signer_ci(slo, shi, signers))
        rows.append(row)

    if not raw:  # a column nobody measured is noise on screen; csv/json keep a stable schema
        fixed = {"preset", "backend", "host", "host_class", "created", "status"}
        columns = [(k, h) for k, h in columns if k in fixed or any(row.get(k) for row in rows)]
    right = {k for k, _ in columns} - {"preset", "backend", "host", "host_class", "created", "status",
                                       "effective_precision", "effective_device"}
    text = _render(columns, rows, fmt, right)
    if not raw:
        notes = ([NOISY_LEGEND] if any_noisy else []) + ([SAME_LEGEND.format(ref=REFERENCE_BACKEND)] if any_same else [])
        notes += ([INVALID_LEGEND] if any_invalid else []) + ([TAIL_LEGEND] if any_short_tail else [])
        if len(classes) > 1:
            notes.append(f"{len(classes)} host classes ({', '.join(classes)}): milliseconds compare only within one "
                         "class; across classes compare speedups (within one host) or `report --compare` on "
                         "normalized values")
        notes += data_lines(records) + drift_lines(records)
        notes += stability_lines(records)
        notes += [PRECISION_LEGEND] if any_other_precision else []
        if any(row.get("memory_mb") for row in rows):
            notes.append("mem MB = peak resident memory of the backend's own worker process above its level just "
                         "before prepare")
        if any(row.get(f"roofline_share_b{b}") for row in rows for b in sizes):
            notes.append("roof = achieved GFLOP/s over this machine's measured matmul ceiling for the backend's precision "
                         "(measured once per machine by bench and cached)")
        if any(row.get("accuracy_change") for row in rows):
            notes.append(f"Δ top-1 = points of top-1 against {REFERENCE_BACKEND} (fp32) on the same clips")
        if rows and any(number(r, "accuracy_top1_ci_lo") is not None for r in records):
            notes.append("top-1 [lo-hi] = 95% Wilson interval over the held-out clips: overlapping intervals are not "
                         "a measured difference")
        if any(row.get("accuracy_worst_signer_top1") for row in rows):
            notes.append(SIGNER_CI_NOTE)
        if any(row.get("calibration_ece_after") for row in rows):
            notes.append(ECE_NOTE.format(before=", before -> after the temperature"))
        if notes:
            text += "\n\n" + "\n".join(escape.line(n, fmt) for n in notes)
    return text


def _speedup(rec: dict[str, Any], ref: dict[str, Any] | None, b: int) -> tuple[float | None, bool]:
    """(reference p50 / this p50, indistinguishable?). The bench's own bootstrap interval when it stored one
    (same invocation); else the ratio of p50s, indistinguishable when their intervals overlap."""
    if rec.get("backend") == REFERENCE_BACKEND:
        return (1.0, False) if number(rec, f"latency_p50_ms_b{b}") else (None, False)
    stored = number(rec, f"speedup_b{b}")
    if stored is not None and ref is not None and ref.get("invocation_id") == rec.get("invocation_id"):
        return stored, number(rec, f"speedup_distinguishable_b{b}") == 0.0
    p50, ref_p50 = number(rec, f"latency_p50_ms_b{b}"), number(ref, f"latency_p50_ms_b{b}") if ref else None
    if not p50 or not ref_p50:
        return None, False
    lo, hi = number(rec, f"latency_p50_ci_lo_ms_b{b}"), number(rec, f"latency_p50_ci_hi_ms_b{b}")
    rlo, rhi = number(ref, f"latency_p50_ci_lo_ms_b{b}"), number(ref, f"latency_p50_ci_hi_ms_b{b}")
    same = lo is not None and hi is not None and rlo is not None and rhi is not None and lo <= rhi and rlo <= hi
    return ref_p50 / p50, same


def _valid(rec: dict[str, Any], b: int) -> bool | None:
    """Whether a batch size's timing reached its minimum calls (None: a result from before this was recorded)."""
    v = number(rec, f"valid_b{b}")
    return None if v is None else v != 0.0


def _speedup_interval(rec: dict[str, Any], ref: dict[str, Any] | None, b: int) -> tuple[float, float] | None:
    """The speedup's bootstrap interval the bench stored, when its reference is the same invocation's."""
    if rec.get("backend") == REFERENCE_BACKEND or ref is None or ref.get("invocation_id") != rec.get("invocation_id"):
        return None
    lo, hi = number(rec, f"speedup_ci_lo_b{b}"), number(rec, f"speedup_ci_hi_b{b}")
    return None if lo is None or hi is None else (lo, hi)


def _held_out_ece(rec: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    """(ECE before, ECE after the temperature, held-out clips) of a record's calibration; Nones unless it was
    measured on a held-out part of the validation set (``calibration_eval_size`` recorded and > 0)."""
    n = number(rec, "calibration_eval_size")
    if not n:
        return None, None, None
    return number(rec, "calibration_ece_before"), number(rec, "calibration_ece_after"), n


def _fmt_ece(before: float | None, after: float | None) -> str:
    if after is None:
        return ""
    return f"{after:.3f}" if before is None else f"{before:.3f} -> {after:.3f}"


SIGNER_SHOWN = 24  # characters of a signer id shown in a table cell (csv/json hold it whole)


def _signer_name(rec: dict[str, Any]) -> str:
    """The worst signer's id for a table cell: cut short when long, ``no id`` for clips without one."""
    name = " ".join(str(rec.get("worst_signer") or "").split())
    if not name:
        return "no id"
    return name if len(name) <= SIGNER_SHOWN else name[:SIGNER_SHOWN - 3] + "..."


def _fmt_signer_ci(lo: float | None, hi: float | None, signers: int | None) -> str:
    if lo is not None and hi is not None:
        return f"[{100 * lo:.0f}-{100 * hi:.0f}]"
    return "none (1 signer)" if signers == 1 else ""


def _fmt_ratio(v: float) -> str:
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _ran_other_precision(rec: dict[str, Any]) -> str:
    """``fp32→bf16`` (declared, :data:`PRECISION_MARK`, effective) for a record whose backend ran another precision
    than it declares (``precision_mismatch``); empty otherwise."""
    if number(rec, "precision_mismatch") != 1.0:
        return ""
    return f"{rec.get('precision') or '?'}{PRECISION_MARK}{rec.get('effective_precision') or '?'}"


def _precision_in_note(row: dict[str, Any], reasons: dict[str, int]) -> dict[str, Any]:
    """A narrow row whose status ``parity-failed [1] fp32→bf16`` does not fit as ``parity-failed [1,2]``, with note
    [2] saying what ran (numbered in ``reasons``); any other row as it is."""
    backend, declared, ran = row.get("_ran") or ("", "", "")
    mark = f"] {declared}{PRECISION_MARK}{ran}"
    if not backend or not str(row.get("status", "")).endswith(mark):
        return row
    n = reasons.setdefault(f"{backend} declares {declared} but ran {ran} (its effective precision)", len(reasons) + 1)
    return {**row, "status": row["status"][:-len(mark)] + f",{n}]"}


def _reason(rec: dict[str, Any]) -> str:
    return " ".join(str(rec.get("reason", "") or "").split())


def _short_time(rec: dict[str, Any]) -> str:
    ms = started_ms(rec)
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M") if ms else ""


def _wrap(line: str, indent: int = 4) -> list[str]:
    """A note as lines of at most TERMINAL_WIDTH characters; words (paths, provider names) are never split."""
    return textwrap.wrap(line, TERMINAL_WIDTH, subsequent_indent=" " * indent, break_long_words=False,
                         break_on_hyphens=False) or [""]


def _narrow_table(records: list[dict[str, Any]], fmt: str, sizes: list[int]) -> str:
    """The default terminal table: what a user decides on, in at most TERMINAL_WIDTH columns.

    One row per (preset, batch size, backend), grouped by preset and batch size so that a column compares
    backends: p50 ms, the speedup over torch-eager and top-1, each with its 95% interval, the top-1 of the worst
    held-out signer, the held-out ECE of the preset's calibration when its records carry one, and the status (``!`` = unstable run). Marks: ``?`` invalid timing, ``~`` noisy, ``≈`` a speedup indistinguishable from 1.0x;
    ``fp32→bf16`` after the status: the backend declares fp32 but ran bf16 (``precision_mismatch``).
    A backend that is unavailable (no numbers) is one folded line per (backend, reason) whatever the number of
    presets, at the end; its full reason, like that of any failed row, is a numbered note under the table.
    Results of several hosts are one section per host (titled with its host class), not a host column. Columns
    that would not fit give way in :data:`NARROW_DROP_ORDER` (``--wide`` has them all).
    """
    refs = references(records)
    hosts = sorted({(str(r.get("host_class") or ""), str(r.get("host", ""))) for r in records})
    classes = sorted({cls for cls, _ in hosts} - {""})
    reasons: dict[str, int] = {}  # full reason -> its number under the table, shared by every section
    flags: set[str] = set()
    sections, dropped = [], []
    for cls, host in hosts:
        recs = [r for r in records if (str(r.get("host_class") or ""), str(r.get("host", ""))) == (cls, host)]
        columns, rows = _narrow_rows(recs, sizes, refs, reasons, flags)
        right = {"batch", "p50", "speedup", "accuracy_top1", "worst_signer_top1", "ece"}
        text = _render(columns, rows, fmt, right)
        for key in NARROW_DROP_ORDER if fmt == "terminal" else ():
            if max(map(len, text.splitlines()), default=0) <= TERMINAL_WIDTH:
                break
            if any(k == key for k, _ in columns):
                dropped += [h for k, h in columns if k == key and h not in dropped]
                columns = [(k, h) for k, h in columns if k != key]
                text = _render(columns, rows, fmt, right)
        if fmt == "terminal" and max(map(len, text.splitlines()), default=0) > TERMINAL_WIDTH:
            text = _render(columns, [_precision_in_note(row, reasons) for row in rows], fmt, right)
        if len(hosts) > 1:
            title = escape.line(f"host {host or '?'}" + (f" ({cls})" if cls else ""), fmt)
            text = title + ("\n\n" if fmt == "markdown" else "\n") + text
        sections.append(text)

    notes = [f"[{n}] {reason}" for reason, n in reasons.items()]
    legend = ([INVALID_LEGEND] if "invalid" in flags else []) + ([NOISY_LEGEND] if "noisy" in flags else [])
    legend += [SAME_LEGEND.format(ref=REFERENCE_BACKEND)] if "same" in flags else []
    legend += stability_lines(records)
    legend += [PRECISION_LEGEND] if "precision" in flags else []
    if len(classes) > 1:
        legend.append(f"{len(classes)} host classes ({', '.join(classes)}): milliseconds compare only within one "
                      "class; across classes compare speedups (within one host) or `report --compare` on "
                      "normalized values")
    legend += data_lines(records) + drift_lines(records)
    legend += [INTERVALS_NOTE] if "interval" in flags else []
    legend += [WORST_NOTE] if "worst" in flags and WORST_HEADER not in dropped else []
    legend += [ECE_NOTE.format(before="")] if "ece" in flags and "ECE" not in dropped else []
    if dropped:
        legend.append(f"not shown, to fit {TERMINAL_WIDTH} columns: {', '.join(dropped)}"
                      + (" (rows of one backend: newest first)" if "created" in dropped else ""))
    legend.append(WIDE_HINT)
    notes, legend = [escape.line(n, fmt) for n in notes], [escape.line(n, fmt) for n in legend]
    if fmt == "terminal":
        notes = [w for line in notes for w in _wrap(line, indent=line.index(" ") + 1)]
        legend = [w for line in legend for w in _wrap(line)]
    text = "\n\n".join(sections)
    if notes:
        text += "\n\n" + REASONS_TITLE + "\n" + "\n".join(notes)
    return text + "\n\n" + "\n".join(legend)


def _narrow_rows(records: list[dict[str, Any]], sizes: list[int], refs: dict[tuple, list[dict[str, Any]]],
                 reasons: dict[str, int], flags: set[str]) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """The narrow table's (columns, rows) for the records of one host; numbers the reasons it shows into
    ``reasons`` and adds the marks it used to ``flags``."""
    keys = [(r.get("preset"), r.get("backend")) for r in records]
    repeated = len(set(keys)) < len(keys)
    presets = list(dict.fromkeys(str(r.get("preset", "")) for r in records))
    base_key = sort_key(preset_order())

    folded: dict[tuple[str, str], list[dict[str, Any]]] = {}
    measured: list[tuple[tuple, dict[str, Any], int | None]] = []
    for r in records:
        have: list[int | None] = [b for b in sizes if number(r, f"latency_p50_ms_b{b}") is not None]
        if not have and r.get("status") == "unavailable":
            folded.setdefault((str(r.get("backend", "")), _reason(r)), []).append(r)
            continue
        k = base_key(r)  # (preset order, preset, host class, not reference, backend, host, newest first)
        for b in have or [None]:  # a row without numbers (failed before timing) is one row, after its preset's
            measured.append((k[:3] + (b is None, b or 0) + k[3:], r, b))
    measured.sort(key=lambda t: t[0])

    def status_cell(r: dict[str, Any]) -> str:
        status = str(r.get("status", "") or "?")
        cell = (UNSTABLE_MARK if r.get("stability_status") == "unstable" else "") + status
        reason = _reason(r)
        if status != "ok" and reason:
            cell += f" [{reasons.setdefault(reason, len(reasons) + 1)}]"
        other = _ran_other_precision(r)
        if other:
            flags.add("precision")
            cell += f" {other}"
        return cell

    rows: list[dict[str, Any]] = []
    for _, r, b in measured:
        ref = reference_of(r, refs)
        row: dict[str, Any] = {"preset": r.get("preset", ""), "backend": r.get("backend", ""),
                               "created": _short_time(r), "batch": "" if b is None else str(b),
                               "status": status_cell(r)}
        if _ran_other_precision(r):  # for _narrow_table, should the mark not fit after a reason's number
            row["_ran"] = (str(r.get("backend", "")), str(r.get("precision") or "?"), str(r.get("effective_precision") or "?"))
        if b is not None:
            p50 = number(r, f"latency_p50_ms_b{b}")
            lo, hi = number(r, f"latency_p50_ci_lo_ms_b{b}"), number(r, f"latency_p50_ci_hi_ms_b{b}")
            noisy, invalid = is_noisy(r, b), _valid(r, b) is False
            flags.update(name for name, on in (("noisy", noisy), ("invalid", invalid), ("interval", lo is not None))
                         if on)
            row["p50"] = ((INVALID_MARK if invalid else "") + (NOISY_MARK if noisy else "") + fmt_ms(p50)
                          + (f" [{fmt_ms(lo)}-{fmt_ms(hi)}]" if lo is not None and hi is not None else ""))
            speedup, same = _speedup(r, ref, b)
            if speedup is not None:
                ci = _speedup_interval(r, ref, b)
                flags.update(name for name, on in (("same", same), ("interval", ci is not None)) if on)
                mark = SAME_MARK if same else (NOISY_MARK if noisy or (ref is not None and is_noisy(ref, b)) else "")
                row["speedup"] = (f"{mark}{_fmt_ratio(speedup)}x"
                                  + (f" [{_fmt_ratio(ci[0])}-{_fmt_ratio(ci[1])}]" if ci else ""))
        acc = number(r, "accuracy_top1")
        alo, ahi = number(r, "accuracy_top1_ci_lo"), number(r, "accuracy_top1_ci_hi")
        if acc is not None:
            row["accuracy_top1"] = _fmt_pct(acc)
            if alo is not None and ahi is not None:
                row["accuracy_top1"] += f" [{100 * alo:.0f}-{100 * ahi:.0f}]"
                flags.add("interval")
        worst = number(r, "accuracy_worst_signer_top1")
        if worst is not None:
            row["worst_signer_top1"] = _fmt_pct(worst)
            flags.add("worst")
        ece = _held_out_ece(r)[1]
        if ece is not None:
            row["ece"] = f"{ece:.3f}"
            flags.add("ece")
        rows.append(row)
    for (backend, _), group in folded.items():
        names = list(dict.fromkeys(str(r.get("preset", "")) for r in group))
        scope = names[0] if len(presets) == 1 else "all" if set(names) == set(presets) else ",".join(names)
        rows.append({"preset": scope, "backend": backend, "created": "", "batch": "", "status": status_cell(group[0])})

    columns: list[tuple[str, str]] = [("preset", "preset")] + ([("created", "created")] if repeated else [])
    # short headers: tabulate pads a header by 2, and "[lo-hi] = 95% intervals" is said under the table
    columns += [("batch", "batch"), ("backend", "backend"), ("p50", "p50 ms"), ("speedup", "vs eager"),
                ("accuracy_top1", "top-1"), ("worst_signer_top1", WORST_HEADER), ("ece", "ECE"), ("status", "status")]
    fixed = {"preset", "created", "backend", "status"}
    return [(k, h) for k, h in columns if k in fixed or any(row.get(k) for row in rows)], rows


def drift_lines(records: Iterable[dict[str, Any]]) -> list[str]:
    """One line per invocation that measured machine drift (reference workload, end vs start)."""
    seen: dict[str | None, tuple[str, float, float | None]] = {}
    for r in records:
        ratio = number(r, "drift_ratio")
        if ratio is not None and r.get("invocation_id") not in seen:
            seen[r.get("invocation_id")] = (str(r.get("host", "")), ratio, number(r, "drift_spread"))
    lines = []
    for inv, (host, ratio, spread) in seen.items():
        spread_text = f", slowest/fastest reading {spread:.2f}x" if spread else ""
        lines.append(f"machine drift, run {inv} on {host or 'this host'}: {100 * (ratio - 1):+.1f}% from start to end "
                     f"(reference workload{spread_text})")
    return lines


def stability_lines(records: Iterable[dict[str, Any]]) -> list[str]:
    """One legend line per unstable run (its rows carry ``!``): the run and how far its reference moved."""
    seen: dict[str | None, tuple[str, float | None]] = {}
    for r in records:
        if r.get("stability_status") == "unstable" and r.get("invocation_id") not in seen:
            seen[r.get("invocation_id")] = (str(r.get("host", "")), number(r, "stability_spread"))
    return [f"{UNSTABLE_MARK} = unstable run {inv} on {host or 'this host'}: its reference workload moved "
            + (f"{100 * (spread - 1):.0f}% (spread {spread:.2f}x) " if spread else "")
            + "during the run; its numbers may not compare with other runs: rerun on a quieter machine"
            for inv, (host, spread) in seen.items()]


def data_lines(records: Iterable[dict[str, Any]]) -> list[str]:
    """The data and split each result was measured on (an official split, or this project's signer split),
    one line per distinct pair: accuracies on different splits are not comparable."""
    seen: dict[tuple[str, str], int] = {}
    for r in records:
        data, split = str(r.get("data", "") or ""), str(r.get("data_split", "") or "")
        if data or split:
            seen[(data, split)] = seen.get((data, split), 0) + 1
    return [f"data: {data or '?'}; split: {split or 'not recorded'}" + (f" ({n} rows)" if len(seen) > 1 else "")
            for (data, split), n in seen.items()]


def timing_check_table(records: Sequence[dict[str, Any]], fmt: str = "terminal") -> str:
    """``bench --check-timing``: each backend alone vs in the schedule, per batch size."""
    _check_fmt(fmt)
    rows = []
    for r in sorted(records, key=sort_key(preset_order())):
        for b in batch_sizes_of([r]):
            solo = number(r, f"timing_check_solo_p50_ms_b{b}")
            if solo is None:
                continue
            rows.append({"preset": r.get("preset", ""), "backend": r.get("backend", ""), "batch": b,
                         "solo_p50_ms": solo, "scheduled_p50_ms": number(r, f"timing_check_scheduled_p50_ms_b{b}"),
                         "p50_ratio": number(r, f"timing_check_p50_ratio_b{b}"),
                         "solo_p99_ms": number(r, f"timing_check_solo_p99_ms_b{b}"),
                         "scheduled_p99_ms": number(r, f"timing_check_scheduled_p99_ms_b{b}"),
                         "p99_ratio": number(r, f"timing_check_p99_ratio_b{b}")})
    columns = [("preset", "preset"), ("backend", "backend"), ("batch", "batch"), ("solo_p50_ms", "solo p50 ms"),
               ("scheduled_p50_ms", "scheduled p50 ms"), ("p50_ratio", "p50 ratio"), ("solo_p99_ms", "solo p99 ms"),
               ("scheduled_p99_ms", "scheduled p99 ms"), ("p99_ratio", "p99 ratio")]
    if not rows:
        return "no timing check in these results (run `signflow-zoo bench --check-timing`)"
    if fmt not in ("csv", "json"):
        for row in rows:
            for k in ("solo_p50_ms", "scheduled_p50_ms", "solo_p99_ms", "scheduled_p99_ms"):
                row[k] = fmt_ms(row[k])
            for k in ("p50_ratio", "p99_ratio"):
                row[k] = "" if row[k] is None else f"{row[k]:.3f}"
            row["batch"] = str(row["batch"])
    text = _render(columns, rows, fmt, {k for k, _ in columns} - {"preset", "backend"})
    if fmt not in ("csv", "json"):
        text = ("Timing self-check: each backend alone (its own blocks and gaps, in stints scattered through the "
                "schedule) vs in the schedule\n" + text)
    return text


def _intlike(v: float | None) -> float | int | None:
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _int(v: float | None) -> int | None:
    return None if v is None else int(round(v))


def _iso(ms: int) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- preset vs preset -------------------------------------------------------------------------------


def compare_presets_table(records: Sequence[dict[str, Any]], a: str = "baseline", b: str = "large",
                          fmt: str = "terminal") -> str:
    """The seed's "Baseline vs Large" table from measured data: size, training, accuracy, latency per backend.

    ``gain/cost`` is the ratio b/a, except for accuracy, where it is the difference in percentage points.
    Model facts come from the torch-eager record (the reference) when there is one, else the newest.
    """
    _check_fmt(fmt)
    records = list(records)
    by = {name: [r for r in records if r.get("preset") == name] for name in (a, b)}
    missing = [name for name in (a, b) if not by[name]]
    if missing:
        have = sorted({str(r.get("preset")) for r in records})
        raise ReportError(
            f"no bench records for preset {' and '.join(repr(m) for m in missing)} "
            f"(records exist for: {', '.join(have) or 'nothing'}); run "
            f"`signflow-zoo bench --preset {','.join(missing)}` or widen --since/--host/--backend"
        )
    raw = fmt in ("csv", "json")
    rows: list[dict[str, Any]] = []

    def add(label: str, unit: str, va: float | None, vb: float | None, show, points: bool = False,
            marks: tuple[str, str] = ("", "")) -> None:
        if va is None and vb is None:
            return
        if points:
            gain = None if va is None or vb is None else 100 * (vb - va)
            gain_text = "" if gain is None else f"{gain:+.1f} pts"
        else:
            gain = vb / va if va and vb is not None else None
            gain_text = "" if gain is None else f"{gain:.2f}x"
        if raw:
            va, vb = (_intlike(v) for v in (va, vb))
            rows.append({"metric": label, "unit": unit, a: va, b: vb,
                         "gain/cost": None if gain is None else round(gain, 4)})
        else:
            rows.append({"metric": label, a: marks[0] + show(va) if va is not None else "",
                         b: marks[1] + show(vb) if vb is not None else "", "gain/cost": gain_text})

    def fact(name: str, key: str) -> float | None:
        recs = sorted(by[name], key=lambda r: (r.get("backend") != REFERENCE_BACKEND, -started_ms(r)))
        return next((v for v in (number(r, key) for r in recs) if v is not None), None)

    add("params", "count", fact(a, "num_params"), fact(b, "num_params"), fmt_count)
    add("GFLOP/seq", "GFLOP", fact(a, "gflops"), fact(b, "gflops"), lambda v: f"{v:.2f}")
    for key in ("d_model", "layers", "dim_ff"):
        add(key, "", fact(a, key), fact(b, key), _fmt_plain)
    add("training time", "s", fact(a, "train_seconds"), fact(b, "train_seconds"), _fmt_seconds)
    add("top-1 accuracy", "fraction (gain/cost in percentage points)", fact(a, "accuracy_top1"), fact(b, "accuracy_top1"), _fmt_pct, points=True)

    several_hosts = len({r.get("host", "") for r in records if r.get("preset") in (a, b)}) > 1
    pairs = sorted({(r.get("backend", ""), r.get("host", "")) for r in by[a] + by[b]},
                   key=lambda p: (p[0] != REFERENCE_BACKEND, p[0], p[1]))
    any_noisy = False
    for backend, host in pairs:
        vals, marks = [], []
        for name in (a, b):
            recs = [r for r in by[name] if r.get("backend") == backend and r.get("host", "") == host
                    and number(r, "latency_p50_ms_b1") is not None]
            r = max(recs, key=started_ms) if recs else None
            vals.append(number(r, "latency_p50_ms_b1") if r else None)
            marks.append(NOISY_MARK if r is not None and is_noisy(r, 1) else "")
        any_noisy = any_noisy or any(marks)
        label = f"p50 latency b1, {backend}" + (f" @ {host}" if several_hosts else "")
        add(label, "ms", vals[0], vals[1], lambda v: f"{fmt_ms(v)} ms", marks=(marks[0], marks[1]))

    columns = [("metric", "metric")] + ([("unit", "unit")] if raw else []) + [(a, a), (b, b), ("gain/cost", "gain/cost")]
    text = _render(columns, rows, fmt, {a, b, "gain/cost"})
    if any_noisy and not raw:
        text += "\n\n" + NOISY_LEGEND
    return text
