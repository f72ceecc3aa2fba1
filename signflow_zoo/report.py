"""Comparison tables and plots built from bench results.

Everything here reads *flat records*: one dict per (preset, backend) measurement, whose keys are the
MLflow params, metrics and tags of a bench child run (see :mod:`signflow_zoo.results`). The bench
command hands in records it holds in memory; ``signflow-zoo report`` reads them back from MLflow with
:func:`collect_records`, so today's run can be compared with last month's or another machine's.

Conventions a record must follow: ``accuracy_top1`` and ``agreement_top1`` are fractions in [0, 1];
latencies are milliseconds; per-batch metrics end in ``_b{B}``; ``noisy_b{B}`` is 1.0 when the spread
was too wide to trust. Any metric may be missing (an unavailable backend has no latency): tables show
an empty cell, plots skip the point.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import SignFlowError, TrackingError
from .timing import NOISY_RULE

EXPERIMENT = "signflow-zoo"
KIND_TAG = "signflow_zoo.kind"
RECORD_KIND = "bench-record"
REFERENCE_BACKEND = "torch-eager"  # speedups are relative to this backend of the same preset and host
FORMATS = ("terminal", "markdown", "csv", "json")
NOISY_MARK = "~"
SAME_MARK = "≈"
NOISY_LEGEND = (f"{NOISY_MARK} = {NOISY_RULE}; rerun on a quieter machine or with more iterations (--min-time)")
SAME_LEGEND = (f"{SAME_MARK} = indistinguishable from {{ref}} in this run: the 95% bootstrap interval of the speedup "
               "contains 1.0x")
_BATCH_METRIC = re.compile(r"^latency_p50_ms_b(\d+)$")
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
PAGE_SIZE = 1000  # runs per search_runs call


class ReportError(SignFlowError, ValueError):
    """A report was asked for that the records cannot answer, or a report option is malformed."""


# -- collecting records from MLflow --------------------------------------------------------------------


def collect_records(
    experiment: str = EXPERIMENT,
    preset: str | Iterable[str] | None = None,
    backend: str | Iterable[str] | None = None,
    host: str | Iterable[str] | None = None,
    since: datetime | date | str | None = None,
    latest: bool = True,
    client: Any = None,
) -> list[dict[str, Any]]:
    """Flat records of the bench child runs in ``experiment``, newest first.

    ``preset``/``backend``/``host`` take one name or a comma-separated list; ``since`` a datetime, an
    ISO date/time (UTC unless it says otherwise) or a relative age such as ``7d``, ``24h``, ``30m``, ``2w``.
    With ``latest`` only the newest run per (preset, backend, host) is kept.
    """
    presets, backends, hosts = _names(preset), _names(backend), _names(host)
    since_ms = parse_since(since)
    if client is None:
        uri = _default_uri()
        _check_store(uri, experiment)  # before the client exists: building one creates a SQLite store
        client = _default_client()
    else:
        uri = str(getattr(client, "tracking_uri", "") or "")
        _check_store(uri, experiment)

    try:
        exp = client.get_experiment_by_name(experiment)
    except SignFlowError:
        raise
    except Exception as exc:  # noqa: BLE001 - any store failure is the user's store to fix
        raise TrackingError(f"cannot read experiment {experiment!r} from the MLflow store {uri}: {_short(exc)}") from None
    if exp is None:
        raise TrackingError(
            f"no bench results exist yet: the MLflow store {uri} has no experiment {experiment!r}. "
            "Run `signflow-zoo bench` first, or point MLFLOW_TRACKING_URI / --experiment at the store that holds them"
        )

    clauses = [f"tags.`{KIND_TAG}` = '{RECORD_KIND}'"]
    for key, values in (("preset", presets), ("backend", backends), ("host", hosts)):
        if values and len(values) == 1 and "'" not in values[0]:  # tags do not support IN; lists are filtered here
            clauses.append(f"tags.`{key}` = '{values[0]}'")
    if since_ms is not None:
        clauses.append(f"attributes.start_time >= {since_ms}")
    filter_string = " and ".join(clauses)

    runs: list[Any] = []
    token = None
    try:
        while True:
            page = client.search_runs([exp.experiment_id], filter_string=filter_string, max_results=PAGE_SIZE,
                                      order_by=["attributes.start_time DESC"], page_token=token)
            runs.extend(page)
            token = getattr(page, "token", None)
            if not token:
                break
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(f"searching bench runs in {uri} failed: {_short(exc)}") from None

    records = [flatten_run(r) for r in runs]
    records = [
        r for r in records
        if (not presets or r.get("preset") in presets)
        and (not backends or r.get("backend") in backends)
        and (not hosts or r.get("host") in hosts)
        and (since_ms is None or _when(r) >= since_ms)
    ]
    records.sort(key=_when, reverse=True)
    if latest:
        seen: set[tuple] = set()
        newest = []
        for r in records:
            key = (r.get("preset"), r.get("backend"), r.get("host"))
            if key not in seen:
                seen.add(key)
                newest.append(r)
        records = newest
    return records


def flatten_run(run: Any) -> dict[str, Any]:
    """One MLflow run as a flat record: params, metrics, the identity tags, ``start_time`` and ``run_id``."""
    tags = dict(run.data.tags)
    rec: dict[str, Any] = dict(run.data.params)
    rec.update(run.data.metrics)
    for k in ("preset", "backend", "host", "status"):
        if k in tags:
            rec[k] = tags[k]
    rec["start_time"] = run.info.start_time
    rec["run_id"] = run.info.run_id
    if "mlflow.parentRunId" in tags:
        rec["parent_run_id"] = tags["mlflow.parentRunId"]
    return rec


def parse_since(since: datetime | date | str | None) -> int | None:
    """``since`` as milliseconds since the epoch (None stays None)."""
    if since is None or since == "":
        return None
    if isinstance(since, datetime):
        dt = since
    elif isinstance(since, date):
        dt = datetime(since.year, since.month, since.day)
    elif isinstance(since, str):
        m = _RELATIVE.match(since)
        if m:
            dt = datetime.now(timezone.utc) - timedelta(**{_UNITS[m.group(2).lower()]: float(m.group(1))})
        else:
            try:
                dt = datetime.fromisoformat(since.strip())
            except ValueError:
                raise ReportError(
                    f"cannot read --since {since!r}: give an age such as 7d, 24h, 30m or 2w, or an ISO date or "
                    "time such as 2026-11-01 or 2026-11-01T09:30"
                ) from None
    else:
        raise ReportError(f"since must be a datetime, a date or a string such as '7d', got {type(since).__name__}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def _default_uri() -> str:
    try:
        import mlflow
    except ImportError as exc:
        raise TrackingError(f"mlflow is not importable ({exc}); install it with `pip install mlflow`") from None
    return str(mlflow.get_tracking_uri())


def _default_client() -> Any:
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def _check_store(uri: str, experiment: str) -> None:
    from .tracking import check_reachable

    check_reachable(uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):].split("?", 1)[0])
        if str(path) not in ("", ":memory:") and not path.exists():
            raise TrackingError(
                f"no bench results exist yet: there is no MLflow store at {path} (tracking URI {uri}). "
                f"Run `signflow-zoo bench` first, or set MLFLOW_TRACKING_URI to the store that holds "
                f"experiment {experiment!r}"
            )


def _names(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else list(value)
    return [p.strip() for p in parts if p and p.strip()]


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


# -- reading flat records -----------------------------------------------------------------------------


def _num(rec: dict[str, Any], key: str) -> float | None:
    """A finite number from a record (metrics are floats, params strings), or None."""
    v = rec.get(key)
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _when(rec: dict[str, Any]) -> int:
    """Milliseconds since the epoch: ``start_time`` or the ISO ``created`` param; 0 when neither."""
    st = _num(rec, "start_time")
    if st is not None:
        return int(st)
    created = rec.get("created")
    if created:
        try:
            dt = datetime.fromisoformat(str(created))
        except ValueError:
            return 0
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return int(dt.timestamp() * 1000)
    return 0


def _noisy(rec: dict[str, Any], b: int) -> bool:
    return bool(_num(rec, f"noisy_b{b}") or 0.0)


def batch_sizes_of(records: Iterable[dict[str, Any]]) -> list[int]:
    """Every batch size with a latency in ``records``, ascending."""
    found: set[int] = set()
    for r in records:
        for k in r:
            m = _BATCH_METRIC.match(k)
            if m:
                found.add(int(m.group(1)))
    return sorted(found)


def _preset_order() -> dict[str, int]:
    try:
        from .zoo import list_presets

        return {name: i for i, name in enumerate(list_presets())}
    except SignFlowError:  # a broken user zoo file must not stop a report
        return {}


def _sort_key(order: dict[str, int]):
    def key(r: dict[str, Any]):
        p, b = str(r.get("preset", "")), str(r.get("backend", ""))
        return (order.get(p, len(order)), p, b != REFERENCE_BACKEND, b, str(r.get("host", "")), -_when(r))
    return key


def _references(records: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    refs: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("backend") == REFERENCE_BACKEND:
            refs.setdefault((r.get("preset"), r.get("host", "")), []).append(r)
    return refs


def _reference(rec: dict[str, Any], refs_by_key: dict[tuple, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """The torch-eager record of the same preset and host: same invocation if any, else the newest."""
    refs = refs_by_key.get((rec.get("preset"), rec.get("host", "")), [])
    if not refs:
        return None
    same = [r for r in refs if rec.get("invocation_id") and r.get("invocation_id") == rec.get("invocation_id")]
    return max(same or refs, key=_when)


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
    """``columns`` = [(key, header)]; rows hold display strings for terminal/markdown, raw values otherwise."""
    if fmt == "json":
        return json.dumps([{k: row.get(k) for k, _ in columns} for row in rows], indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([k for k, _ in columns])
        for row in rows:
            w.writerow(["" if row.get(k) is None else row.get(k) for k, _ in columns])
        return buf.getvalue()
    from tabulate import tabulate

    table = [[row.get(k, "") for k, _ in columns] for row in rows]
    align = ["right" if k in right else "left" for k, _ in columns]
    return tabulate(table, headers=[h for _, h in columns], tablefmt="simple" if fmt == "terminal" else "github",
                    disable_numparse=True, colalign=align)


def _check_fmt(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ReportError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")


# -- the comparison table ------------------------------------------------------------------------------


def comparison_table(records: Sequence[dict[str, Any]], fmt: str = "terminal",
                     batch_sizes: Iterable[int] | str | None = None) -> str:
    """One row per (preset, backend[, host]): status, size, latency, throughput, speedup, accuracy, parity.

    terminal/markdown show formatted cells (``~`` marks a noisy latency, speedup is torch-eager's p50
    over this backend's p50 on the same preset and host); csv/json hold the raw numbers under stable keys.
    """
    _check_fmt(fmt)
    records = list(records)
    if isinstance(batch_sizes, str):
        batch_sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    sizes = sorted(set(int(b) for b in batch_sizes)) if batch_sizes else batch_sizes_of(records)
    records.sort(key=_sort_key(_preset_order()))
    several_hosts = len({r.get("host", "") for r in records}) > 1
    keys = [(r.get("preset"), r.get("backend"), r.get("host", "")) for r in records]
    repeated = len(set(keys)) < len(keys)
    raw = fmt in ("csv", "json")

    columns: list[tuple[str, str]] = [("preset", "preset"), ("backend", "backend")]
    if several_hosts or raw:
        columns.append(("host", "host"))
    if repeated or raw:
        columns.append(("created", "created"))
    columns.append(("status", "status"))
    if raw:
        columns.append(("reason", "reason"))
    columns.append(("num_params", "params"))
    for b in sizes:
        columns += [(f"p50_ms_b{b}", f"p50 ms b{b}"), (f"p99_ms_b{b}", f"p99 ms b{b}"),
                    (f"throughput_seq_s_b{b}", f"seq/s b{b}")]
        if raw:
            columns.append((f"noisy_b{b}", f"noisy b{b}"))
        columns.append((f"speedup_b{b}", f"vs eager b{b}"))
    columns += [("accuracy_top1", "top-1"), ("agreement_top1", "agree"), ("parity_max_abs", "parity abs"),
                ("memory_mb", "mem MB")]
    if raw:
        columns[-4:-3] = [("accuracy_top1", "top-1"), ("accuracy_top1_ci_lo", "top-1 CI lo"),
                          ("accuracy_top1_ci_hi", "top-1 CI hi")]
        for b in sizes:
            i = columns.index((f"p50_ms_b{b}", f"p50 ms b{b}"))
            columns[i + 1:i + 1] = [(f"p50_ci_lo_ms_b{b}", f"p50 CI lo b{b}"), (f"p50_ci_hi_ms_b{b}", f"p50 CI hi b{b}")]
            j = columns.index((f"speedup_b{b}", f"vs eager b{b}"))
            columns.insert(j + 1, (f"speedup_distinguishable_b{b}", f"distinguishable b{b}"))

    rows: list[dict[str, Any]] = []
    any_noisy = any_same = False
    refs = _references(records)
    for r in records:
        ref = _reference(r, refs)
        row: dict[str, Any] = {"preset": r.get("preset", ""), "backend": r.get("backend", ""),
                               "host": r.get("host", ""), "created": r.get("created") or _iso(_when(r))}
        if raw:
            row.update(status=r.get("status", ""), reason=r.get("reason", "") or "", num_params=_int(_num(r, "num_params")))
        else:
            row.update(status=_status_text(r), num_params=fmt_count(_num(r, "num_params")))
        for b in sizes:
            p50, p99 = _num(r, f"latency_p50_ms_b{b}"), _num(r, f"latency_p99_ms_b{b}")
            noisy = _noisy(r, b)
            speedup, same = _speedup(r, ref, b)
            thr = _num(r, f"throughput_seq_s_b{b}")
            if raw:
                row.update({f"p50_ms_b{b}": p50, f"p50_ci_lo_ms_b{b}": _num(r, f"latency_p50_ci_lo_ms_b{b}"),
                            f"p50_ci_hi_ms_b{b}": _num(r, f"latency_p50_ci_hi_ms_b{b}"), f"p99_ms_b{b}": p99,
                            f"throughput_seq_s_b{b}": thr, f"noisy_b{b}": noisy if p50 is not None else None,
                            f"speedup_b{b}": None if speedup is None else round(speedup, 4),
                            f"speedup_distinguishable_b{b}": None if speedup is None else not same})
            else:
                mark = NOISY_MARK if noisy else ""
                any_noisy = any_noisy or (noisy and p50 is not None)
                any_same = any_same or (speedup is not None and same)
                speed_mark = SAME_MARK if same else (NOISY_MARK if noisy or (ref is not None and _noisy(ref, b)) else "")
                row.update({f"p50_ms_b{b}": mark + fmt_ms(p50) if p50 is not None else "",
                            f"p99_ms_b{b}": mark + fmt_ms(p99) if p99 is not None else "",
                            f"throughput_seq_s_b{b}": _fmt_throughput(thr),
                            f"speedup_b{b}": "" if speedup is None else f"{speed_mark}{speedup:.2f}x"})
        acc, agree = _num(r, "accuracy_top1"), _num(r, "agreement_top1")
        lo, hi = _num(r, "accuracy_top1_ci_lo"), _num(r, "accuracy_top1_ci_hi")
        par, mem = _num(r, "parity_max_abs"), _num(r, "memory_mb")
        if raw:
            row.update(accuracy_top1=acc, accuracy_top1_ci_lo=lo, accuracy_top1_ci_hi=hi, agreement_top1=agree,
                       parity_max_abs=par, memory_mb=mem)
        else:
            row.update(accuracy_top1=_fmt_pct(acc) + (f" [{100 * lo:.0f}-{100 * hi:.0f}]" if lo is not None and hi is not None else ""),
                       agreement_top1=_fmt_pct(agree), parity_max_abs=_fmt_sci(par),
                       memory_mb="" if mem is None else f"{mem:.0f}")
        rows.append(row)

    if not raw:  # a column nobody measured is noise on screen; csv/json keep a stable schema
        fixed = {"preset", "backend", "host", "created", "status"}
        columns = [(k, h) for k, h in columns if k in fixed or any(row.get(k) for row in rows)]
    right = {k for k, _ in columns} - {"preset", "backend", "host", "created", "status"}
    text = _render(columns, rows, fmt, right)
    if not raw:
        notes = ([NOISY_LEGEND] if any_noisy else []) + ([SAME_LEGEND.format(ref=REFERENCE_BACKEND)] if any_same else [])
        notes += drift_lines(records)
        if any(row.get("memory_mb") for row in rows):
            notes.append("mem MB = peak resident memory of the backend's own worker process above its level just "
                         "before prepare")
        if rows and any(_num(r, "accuracy_top1_ci_lo") is not None for r in records):
            notes.append("top-1 [lo-hi] = 95% Wilson interval over the held-out clips: overlapping intervals are not "
                         "a measured difference")
        if notes:
            text += "\n\n" + "\n".join(notes)
    return text


def _speedup(rec: dict[str, Any], ref: dict[str, Any] | None, b: int) -> tuple[float | None, bool]:
    """(reference p50 / this p50, indistinguishable?). The bench's own bootstrap interval when it stored one
    (same invocation); else the ratio of p50s, indistinguishable when their intervals overlap."""
    if rec.get("backend") == REFERENCE_BACKEND:
        return (1.0, False) if _num(rec, f"latency_p50_ms_b{b}") else (None, False)
    stored = _num(rec, f"speedup_b{b}")
    if stored is not None and ref is not None and ref.get("invocation_id") == rec.get("invocation_id"):
        return stored, _num(rec, f"speedup_distinguishable_b{b}") == 0.0
    p50, ref_p50 = _num(rec, f"latency_p50_ms_b{b}"), _num(ref, f"latency_p50_ms_b{b}") if ref else None
    if not p50 or not ref_p50:
        return None, False
    lo, hi = _num(rec, f"latency_p50_ci_lo_ms_b{b}"), _num(rec, f"latency_p50_ci_hi_ms_b{b}")
    rlo, rhi = _num(ref, f"latency_p50_ci_lo_ms_b{b}"), _num(ref, f"latency_p50_ci_hi_ms_b{b}")
    same = None not in (lo, hi, rlo, rhi) and lo <= rhi and rlo <= hi
    return ref_p50 / p50, same


def drift_lines(records: Iterable[dict[str, Any]]) -> list[str]:
    """One line per invocation that measured machine drift (reference workload, end vs start)."""
    seen: dict[str, tuple[str, float, float | None]] = {}
    for r in records:
        ratio = _num(r, "drift_ratio")
        if ratio is not None and r.get("invocation_id") not in seen:
            seen[r.get("invocation_id")] = (str(r.get("host", "")), ratio, _num(r, "drift_spread"))
    lines = []
    for inv, (host, ratio, spread) in seen.items():
        spread_text = f", slowest/fastest reading {spread:.2f}x" if spread else ""
        lines.append(f"machine drift, run {inv} on {host or 'this host'}: {100 * (ratio - 1):+.1f}% from start to end "
                     f"(reference workload{spread_text})")
    return lines


def timing_check_table(records: Sequence[dict[str, Any]], fmt: str = "terminal") -> str:
    """``bench --check-timing``: each backend alone vs in the schedule, per batch size."""
    _check_fmt(fmt)
    rows = []
    for r in sorted(records, key=_sort_key(_preset_order())):
        for b in batch_sizes_of([r]):
            solo = _num(r, f"timing_check_solo_p50_ms_b{b}")
            if solo is None:
                continue
            rows.append({"preset": r.get("preset", ""), "backend": r.get("backend", ""), "batch": b,
                         "solo_p50_ms": solo, "scheduled_p50_ms": _num(r, f"timing_check_scheduled_p50_ms_b{b}"),
                         "p50_ratio": _num(r, f"timing_check_p50_ratio_b{b}"),
                         "solo_p99_ms": _num(r, f"timing_check_solo_p99_ms_b{b}"),
                         "scheduled_p99_ms": _num(r, f"timing_check_scheduled_p99_ms_b{b}"),
                         "p99_ratio": _num(r, f"timing_check_p99_ratio_b{b}")})
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
        text = ("Timing self-check: each backend alone (two continuous halves, before and after the schedule) vs in "
                "the schedule\n" + text)
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
        recs = sorted(by[name], key=lambda r: (r.get("backend") != REFERENCE_BACKEND, -_when(r)))
        return next((v for v in (_num(r, key) for r in recs) if v is not None), None)

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
                    and _num(r, "latency_p50_ms_b1") is not None]
            r = max(recs, key=_when) if recs else None
            vals.append(_num(r, "latency_p50_ms_b1") if r else None)
            marks.append(NOISY_MARK if r is not None and _noisy(r, 1) else "")
        any_noisy = any_noisy or any(marks)
        label = f"p50 latency b1, {backend}" + (f" @ {host}" if several_hosts else "")
        add(label, "ms", vals[0], vals[1], lambda v: f"{fmt_ms(v)} ms", marks=(marks[0], marks[1]))

    columns = [("metric", "metric")] + ([("unit", "unit")] if raw else []) + [(a, a), (b, b), ("gain/cost", "gain/cost")]
    text = _render(columns, rows, fmt, {a, b, "gain/cost"})
    if any_noisy and not raw:
        text += "\n\n" + NOISY_LEGEND
    return text


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


def _figure(width: float, height: float, layout: str = "constrained"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=150, layout=layout)
    FigureCanvasAgg(fig)  # no pyplot: no global state, no GUI backend, safe in threads
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _plain_log_ticks(axis, lo: float, hi: float) -> None:
    """Log-axis ticks a reader reads as numbers (2, 5, 10, 20 ms), also over a narrow range."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    if hi / lo >= 6:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    else:  # within less than a decade a log locator leaves one tick or none
        axis.set_major_locator(MaxNLocator(nbins=5))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot_pareto(records: Sequence[dict[str, Any]], path: str | os.PathLike, batch_size: int = 1) -> Path:
    """Accuracy vs latency, one point per (preset, backend), the Pareto front stepped and ringed.

    One panel per host when the records come from several machines: latencies of different
    machines are not comparable, so each host gets its own front.
    """
    b = int(batch_size)
    newest: dict[tuple, dict[str, Any]] = {}
    for r in sorted(records, key=_when):
        x, y = _num(r, f"latency_p50_ms_b{b}"), _num(r, "accuracy_top1")
        if x is not None and y is not None and x > 0:
            newest[(r.get("host", ""), r.get("preset", ""), r.get("backend", ""))] = r
    if not newest:
        have = batch_sizes_of(records)
        hint = f" (latencies exist at batch sizes {', '.join(map(str, have))}: pass one of those)" if have and b not in have else ""
        raise ReportError(
            f"nothing to plot: no record has both a p50 latency at batch {b} (latency_p50_ms_b{b}) and a top-1 "
            f"accuracy (accuracy_top1){hint}; run `signflow-zoo bench` with accuracy evaluation on"
        )
    order = _preset_order()
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
        pts = [(_num(newest[k], f"latency_p50_ms_b{b}"), 100 * _num(newest[k], "accuracy_top1")) for k in keys]
        cis = [_accuracy_interval(newest[k]) for k in keys]
        ok = [i for i, k in enumerate(keys) if newest[k].get("status", "ok") == "ok"]
        for k, (x, y), ci in zip(keys, pts, cis):
            if ci is not None:
                any_ci = True
                ax.errorbar([x], [y], yerr=[[y - ci[0]], [ci[1] - y]], fmt="none", ecolor=color[k[2]], alpha=0.5,
                            capsize=3, linewidth=1.0, zorder=2)
            noisy, status = _noisy(newest[k], b), newest[k].get("status", "ok")
            any_noisy, any_failed = any_noisy or noisy, any_failed or status != "ok"
            hollow = status != "ok"  # a failed backend is shown, but cannot be a recommendation
            ax.scatter([x], [y], s=60, marker=marker[k[1]], zorder=3, alpha=0.6 if noisy else 1.0,
                       facecolors="none" if hollow else color[k[2]], edgecolors=color[k[2]],
                       linewidths=1.5 if hollow else 0.0)
            label = k[1] + (" ~" if noisy else "") + (f" ({status})" if hollow else "")
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=7, color="0.25")
        use_ci = all(cis[i] is not None for i in ok)
        front = [pts[ok[i]] for i in pareto_front([pts[i] for i in ok], [cis[i] for i in ok] if use_ci else None)]
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
            ax.set_title(f"host {host}", fontsize=10)
    axes[0].set_ylabel("top-1 accuracy (%)")
    fig.suptitle(f"Top-1 vs p50 latency at batch {b}, Pareto front ringed", fontsize=11)

    handles = [Line2D([], [], linestyle="none", marker="o", color=color[bk], label=bk) for bk in backends]
    handles += [Line2D([], [], linestyle="none", marker=marker[p], color="0.3", label=p) for p in presets]
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
    ax.set_xticks(range(1, len(labels) + 1), labels)
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
    ax.set_title(title, fontsize=11)
    return _save(fig, path)


def plot_confusion(cm: Any, labels: Sequence[str] | None, path: str | os.PathLike,
                   title: str = "Confusion matrix", normalize: bool = True) -> Path:
    """Heatmap of a confusion matrix (rows true, columns predicted), row-normalised by default.

    Tick labels shrink with the class count and are hidden beyond 40 classes.
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
    fig = _figure(size + 1.2, size, layout="compressed")  # "constrained" pushes fixed-aspect axes off the edge
    ax = fig.subplots()
    im = ax.imshow(m, cmap="Blues", interpolation="nearest", vmin=0.0)  # auto vmax: a weak model stays visible
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("fraction of the true class" if normalize else "count")
    names = [str(x) for x in labels] if labels is not None else [str(i) for i in range(n)]
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
    ax.set_title(f"{title} (top-1 {100 * acc:.1f}%)", fontsize=11)
    return _save(fig, path)


# -- everything at once ------------------------------------------------------------------------------


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
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for key, table_fmt, name in (("table_markdown", "markdown", "comparison.md"), ("table_csv", "csv", "comparison.csv")):
        p = out / name
        p.write_text(comparison_table(records, fmt=table_fmt) + "\n", encoding="utf-8")
        written[key] = p
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


def _accuracy_interval(rec: dict[str, Any]) -> tuple[float, float] | None:
    """Top-1's 95% interval in percent, when the bench stored one."""
    lo, hi = _num(rec, "accuracy_top1_ci_lo"), _num(rec, "accuracy_top1_ci_hi")
    return None if lo is None or hi is None else (100 * lo, 100 * hi)
