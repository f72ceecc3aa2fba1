"""The by-host table: one row per (preset, backend), one column per host (or per host class).

``signflow-zoo report --by-host`` (and the end of ``bench --cluster``) puts the machines side by side. Raw
milliseconds of two machines say more about the machines than about the backends, so a cell leads with the
backend's speedup over :data:`~signflow_zoo.report.records.REFERENCE_BACKEND` on that same host and batch (the
bench's bootstrap 95% interval when both ran in one invocation, else the ratio of the two medians), and only then
the host's own median in ms; the lines under the table say which host class each column is and that those ms are
not comparable across host classes. A cell without a result is empty, one whose run did not finish says its status
(``unavailable``, ``failed``, ... or ``lost``: a cell of ``bench --cluster`` whose node went away), its reason in a
numbered note under the table.

With ``by="class"`` the columns are host classes: several hosts of one class fill one column, each cell with the
newest result of any of them, and the line under the table says which host each cell came from.

terminal/markdown show that grid; csv/json are the long form, one row per cell with the raw numbers.
"""

from __future__ import annotations

from typing import Any, Iterable

from signflow_zoo.report import escape
from signflow_zoo.report.records import (REFERENCE_BACKEND, ReportError, batch_sizes_of, number, preset_order,
                                         reference_of, references, started_ms)
from signflow_zoo.report.tables import _check_fmt, _reason, _render, _speedup, _speedup_interval, _wrap, fmt_ms

BY = ("host", "class")
LONG_COLUMNS = ("preset", "backend", "host", "host_class", "status", "reason", "batch_size", "speedup",
                "speedup_ci_lo", "speedup_ci_hi", "p50_ms", "lost")
NOTE = ("Nx [lo, hi] = {ref}'s median latency over this backend's at batch {b} on the same host (a within-host "
        "ratio), with its 95% bootstrap interval when both ran in one bench run; ms = each host's own median latency "
        "at batch {b}, raw: not comparable across host classes")
NO_REFERENCE_NOTE = "a cell with ms only: {ref} has no result at batch {b} on that host, so there is no speedup"

Cell = tuple[str, str, str]  # (preset, backend, column: a host name or a host class)


def by_host_table(records: Iterable[dict[str, Any]], fmt: str = "terminal", by: str = "host", batch_size: int = 1,
                  lost: Iterable[dict[str, Any]] = ()) -> str:
    """The by-host table of flat bench records at batch ``batch_size``.

    ``by``: ``"host"`` (a column per host name) or ``"class"`` (a column per host class, each cell from the newest
    record of any host of that class). ``lost``: cells that did not run, dicts with ``host`` (a host name; with
    ``by="class"`` the column is that host's class, known from its records, else the name as given), ``preset``, ``backend``, ``reason`` and optionally ``status`` (default
    ``lost``; ``bench --cluster`` also passes cells ``failed`` on their node and backends ``unavailable`` because not
    installed there); a cell that has a record shows the record. terminal/markdown: the grid, with a line per column
    and the notes under it. csv/json: one row per cell that has a record or is lost, with :data:`LONG_COLUMNS`.
    """
    _check_fmt(fmt)
    if by not in BY:
        raise ReportError(f"by must be one of {', '.join(BY)}, got {by!r}")
    records = list(records)
    chosen = _newest_per_cell(records, by)
    missing = _lost_cells(lost, chosen, _classes_of_hosts(records) if by == "class" else {})
    if not chosen and not missing:
        raise ReportError("no bench records to put side by side by host: run `signflow-zoo bench` on each host "
                          "(or `bench --cluster`) first, or widen --preset/--backend/--host/--since")
    _check_batch(records, batch_size)
    cells = set(chosen) | set(missing)
    order = preset_order()
    rows = sorted({c[:2] for c in cells}, key=lambda pb: (order.get(pb[0], len(order)), pb[0],
                                                          pb[1] != REFERENCE_BACKEND, pb[1]))
    columns = sorted({c[2] for c in cells})
    refs = references(records)
    if fmt in ("csv", "json"):
        host_classes = _classes_of_hosts(records)
        long_rows = [_long_row(cell, by, chosen.get(cell), missing.get(cell), refs, batch_size, host_classes)
                     for preset, backend in rows for col in columns if (cell := (preset, backend, col)) in cells]
        return _render([(k, k) for k in LONG_COLUMNS], long_rows, fmt, set())
    return _grid(rows, columns, by, chosen, missing, refs, batch_size, fmt)


# -- choosing the cells -----------------------------------------------------------------------------------


def _column(rec: dict[str, Any], by: str) -> str:
    return str(rec.get("host" if by == "host" else "host_class") or "?")


def _cell_of(rec: dict[str, Any], column: str) -> Cell:
    return str(rec.get("preset") or "?"), str(rec.get("backend") or "?"), column


def _newest_per_cell(records: list[dict[str, Any]], by: str) -> dict[Cell, dict[str, Any]]:
    """The newest record (by start time) of each (preset, backend, column)."""
    chosen: dict[Cell, dict[str, Any]] = {}
    for r in sorted(records, key=started_ms):
        chosen[_cell_of(r, _column(r, by))] = r
    return chosen


def _lost_cells(lost: Iterable[dict[str, Any]], chosen: dict[Cell, dict[str, Any]],
                classes: dict[str, str]) -> dict[Cell, dict[str, Any]]:
    """The lost cells by (preset, backend, column), but those with a record: a result is shown, not its loss.
    ``classes`` (``by="class"``): host name -> its class, the column of that host's lost cells."""
    cells = {}
    for c in lost:
        host = str(c.get("host") or "?")
        cells[_cell_of(c, classes.get(host) or host)] = c
    return {cell: c for cell, c in cells.items() if cell not in chosen}


def _check_batch(records: list[dict[str, Any]], batch_size: int) -> None:
    """A ReportError when the records measured latencies, but none at ``batch_size``. Records with no latency at
    all (every backend unavailable, every cell lost) still make a table of their statuses."""
    measured = batch_sizes_of(records)
    if measured and batch_size not in measured:
        raise ReportError(f"batch size {batch_size} was not measured in these results; measured: "
                          f"{', '.join(map(str, measured))} (choose one with --batch-size)")


def _classes_of_hosts(records: list[dict[str, Any]]) -> dict[str, str]:
    """Host name -> its host class in its newest record (a lost cell of a host has no record of its own)."""
    return {str(r.get("host") or "?"): str(r.get("host_class") or "") for r in sorted(records, key=started_ms)}


# -- the grid (terminal, markdown) ------------------------------------------------------------------------


def _grid(rows: list[tuple[str, str]], columns: list[str], by: str, chosen: dict[Cell, dict[str, Any]],
          missing: dict[Cell, dict[str, Any]], refs: dict[tuple, list[dict[str, Any]]], b: int, fmt: str) -> str:
    footnotes: dict[str, int] = {}  # reason -> its number under the table
    table = []
    for preset, backend in rows:
        row = {"preset": preset, "backend": backend}
        for i, col in enumerate(columns):  # keyed c0, c1, ..., not by host name: a host may be called "preset"
            row[f"c{i}"] = _cell_text(chosen.get((preset, backend, col)), missing.get((preset, backend, col)), refs,
                                      b, footnotes)
        table.append(row)
    keys = [(f"c{i}", col) for i, col in enumerate(columns)]
    text = _render([("preset", "preset"), ("backend", "backend")] + keys, table, fmt, {k for k, _ in keys})

    lines = [_column_line(col, by, [chosen[(p, k, col)] for p, k in rows if (p, k, col) in chosen])
             for col in columns]  # each column's records in row order
    lines.append(NOTE.format(ref=REFERENCE_BACKEND, b=b))
    if any(_without_reference(r, refs, b) for r in chosen.values()):
        lines.append(NO_REFERENCE_NOTE.format(ref=REFERENCE_BACKEND, b=b))
    lines += [f"[{n}] {reason}" for reason, n in footnotes.items()]
    lines = [escape.line(line, fmt) for line in lines]
    if fmt == "markdown":
        return text + "\n\n" + "\n\n".join(lines)
    return text + "\n\n" + "\n".join(w for line in lines for w in _wrap(line))


def _cell_text(rec: dict[str, Any] | None, lost: dict[str, Any] | None, refs: dict[tuple, list[dict[str, Any]]],
               b: int, footnotes: dict[str, int]) -> str:
    """``1.93x [1.85, 2.01] · 2.07 ms`` (``1x · ...`` for the reference), a status with its note number, or
    empty."""
    if rec is None:
        return "" if lost is None else _with_note(str(lost.get("status") or "lost"),
                                                  " ".join(str(lost.get("reason") or "").split()), footnotes)
    if rec.get("status") != "ok":
        return _with_note(str(rec.get("status") or "?"), _reason(rec), footnotes)
    p50 = number(rec, f"latency_p50_ms_b{b}")
    if p50 is None:
        return f"not at b{b}"
    ms = f"{fmt_ms(p50)} ms"
    if rec.get("backend") == REFERENCE_BACKEND:
        return f"1x · {ms}"
    ref = reference_of(rec, refs)
    speedup, _ = _speedup(rec, ref, b)
    if speedup is None:  # no reference on this host at this batch (NO_REFERENCE_NOTE)
        return ms
    ci = _speedup_interval(rec, ref, b)
    return f"{speedup:.2f}x" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "") + f" · {ms}"


def _without_reference(rec: dict[str, Any], refs: dict[tuple, list[dict[str, Any]]], b: int) -> bool:
    """Whether an ok cell shows its ms without a speedup: no reference result on its host at batch ``b``."""
    return (rec.get("status") == "ok" and number(rec, f"latency_p50_ms_b{b}") is not None
            and _speedup(rec, reference_of(rec, refs), b)[0] is None)


def _with_note(status: str, reason: str, footnotes: dict[str, int]) -> str:
    if not reason:
        return status
    return f"{status} [{footnotes.setdefault(reason, len(footnotes) + 1)}]"


def _column_line(col: str, by: str, recs: list[dict[str, Any]]) -> str:
    """What a column is: a host's class (``by="host"``), or the host(s) a class column's cells came from."""
    if not recs:
        return f"{col}: no result (lost cells only)"
    if by == "host":
        classes = sorted({str(r.get("host_class") or "") for r in recs} - {""})
        return f"{col}: host class {', '.join(classes) or 'not recorded'}"
    hosts = sorted({str(r.get("host") or "?") for r in recs})
    if len(hosts) == 1:
        return f"{col}: host {hosts[0]}"
    sources = "; ".join(f"{h}: " + ", ".join(f"{r.get('preset')}/{r.get('backend')}" for r in recs
                                               if str(r.get("host") or "?") == h) for h in hosts)
    return f"{col}: the newest result per cell of {len(hosts)} hosts; from {sources}"


# -- the long form (csv, json) ------------------------------------------------------------------------


def _long_row(cell: Cell, by: str, rec: dict[str, Any] | None, lost: dict[str, Any] | None,
              refs: dict[tuple, list[dict[str, Any]]], b: int, host_classes: dict[str, str]) -> dict[str, Any]:
    preset, backend, col = cell
    row: dict[str, Any] = {"preset": preset, "backend": backend, "batch_size": b}
    if rec is None:  # a lost cell: its column is all that is known of where it was
        if by == "host":
            row.update(host=col, host_class=host_classes.get(col) or None)
        else:
            row.update(host=None, host_class=col)
        row.update(status=str((lost or {}).get("status") or "lost"),
                   reason=" ".join(str((lost or {}).get("reason") or "").split()), lost=True)
        return row
    ref = reference_of(rec, refs)
    speedup, _ = _speedup(rec, ref, b)
    ci = _speedup_interval(rec, ref, b)
    row.update(host=str(rec.get("host") or "") or None, host_class=str(rec.get("host_class") or "") or None,
               status=str(rec.get("status") or ""), reason=_reason(rec),
               speedup=None if speedup is None else round(speedup, 4),
               speedup_ci_lo=ci[0] if ci else None, speedup_ci_hi=ci[1] if ci else None,
               p50_ms=number(rec, f"latency_p50_ms_b{b}"), lost=False)
    return row
