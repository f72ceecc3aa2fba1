"""Flat bench records: read back from MLflow, and the accessors every table and plot reads them with.

A *flat record* is one dict per (preset, backend) measurement whose keys are the MLflow params, metrics
and tags of a bench child run (see :func:`signflow_zoo.results.files.flatten`). The bench hands in records it
holds in memory; ``signflow-zoo report`` reads them back with :func:`collect_records`, so today's run
can be compared with last month's or another machine's.

Conventions a record follows: ``accuracy_top1`` and ``agreement_top1`` are fractions in [0, 1];
latencies are milliseconds; per-batch metrics end in ``_b{B}``; ``noisy_b{B}`` is 1.0 when the spread
was too wide to trust. Any metric may be missing (an unavailable backend has no latency): tables show
an empty cell, plots skip the point.
"""

from __future__ import annotations

import json
import math
import re
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterable

from signflow_zoo.results import store as mlflow_store
from signflow_zoo.common.errors import ReportError, SignFlowError, TrackingError
from signflow_zoo.common.limits import REPORT_SINCE_DAYS
from signflow_zoo.results.store import EXPERIMENT, KIND_RECORD, PARENT_TAG, short_error
from signflow_zoo.results.latency import min_calls_for_tail

REFERENCE_BACKEND = "torch-eager"  # speedups are relative to this backend of the same preset and host
PAGE_SIZE = 1000  # runs per search_runs call
_BATCH_METRIC = re.compile(r"^latency_p50_ms_b(\d+)$")
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_UNIT_DAYS = {"s": 1 / 86_400, "m": 1 / 1440, "h": 1 / 24, "d": 1, "w": 7}


# -- collecting records from MLflow --------------------------------------------------------------------


def collect_records(
    experiment: str = EXPERIMENT,
    preset: str | Iterable[str] | None = None,
    backend: str | Iterable[str] | None = None,
    host: str | Iterable[str] | None = None,
    since: datetime | date | str | None = None,
    latest: bool = True,
    client: Any = None,
    required: bool = False,
    cluster_run: str | None = None,
) -> list[dict[str, Any]]:
    """Flat records of the bench child runs in ``experiment``, newest first.

    ``preset``/``backend``/``host`` take one name or a comma-separated list (``host`` matches a host name or
    a host class); ``since`` a datetime, an
    ISO date/time (UTC unless it says otherwise) or a relative age such as ``7d``, ``24h``, ``30m``, ``2w``.
    With ``latest`` only the newest run per (preset, backend, host) is kept. With ``required`` an empty
    answer is a :class:`ReportError` saying which presets, backends and hosts do have results. ``cluster_run``
    keeps the records of one ``bench --cluster`` run (its MLflow run id).
    """
    presets, backends, hosts = _names(preset), _names(backend), _names(host)
    since_ms = parse_since(since)
    if client is None:
        raw = mlflow_store.tracking_uri()
        _check_store(raw, experiment)  # before the client exists: building one creates a SQLite store
        client = mlflow_store.make_client(raw)
    else:
        raw = str(getattr(client, "tracking_uri", "") or "")
        _check_store(raw, experiment)
    uri = mlflow_store.redact_uri(raw)  # what messages show: never a password

    try:
        exp = client.get_experiment_by_name(experiment)
    except SignFlowError:
        raise
    except Exception as exc:  # noqa: BLE001 - any store failure is the user's store to fix
        raise TrackingError(f"cannot read experiment {experiment!r} from the MLflow store {uri}: "
                            f"{short_error(exc)}") from None
    if exp is None:
        raise TrackingError(
            f"no bench results exist yet: the MLflow store {uri} has no experiment {experiment!r}. "
            "Run `signflow-zoo bench` first, or point MLFLOW_TRACKING_URI / --experiment at the store that holds them"
        )

    tags = {}
    for key, values in (("preset", presets), ("backend", backends), ("host", hosts)):
        if values and len(values) == 1 and "'" not in values[0]:  # tags do not support IN; lists are filtered here
            tags[key] = values[0]
    if cluster_run:
        if not re.fullmatch(r"[0-9a-zA-Z_-]{1,64}", cluster_run):
            raise ReportError(f"--cluster-run: {cluster_run!r} is not an MLflow run id")
        tags[mlflow_store.CLUSTER_RUN_TAG] = cluster_run
    filter_string = mlflow_store.kind_filter(KIND_RECORD, tags)
    if since_ms is not None:
        filter_string += f" and attributes.start_time >= {since_ms}"

    try:
        runs = mlflow_store.search_all_runs(client, exp.experiment_id, filter_string, PAGE_SIZE)
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(f"searching bench runs in {uri} failed: {short_error(exc)}") from None

    records = [flatten_run(r) for r in runs]
    records = [
        r for r in records
        if (not presets or r.get("preset") in presets)
        and (not backends or r.get("backend") in backends)
        and (not hosts or r.get("host") in hosts or r.get("host_class") in hosts)
        and (since_ms is None or started_ms(r) >= since_ms)
    ]
    records.sort(key=started_ms, reverse=True)
    if latest:
        seen: set[tuple] = set()
        newest = []
        for r in records:
            group = (r.get("preset"), r.get("backend"), r.get("host"))
            if group not in seen:
                seen.add(group)
                newest.append(r)
        records = newest
    if required and not records:
        filters = {"preset": presets, "backend": backends, "host": hosts, "since": [str(since)] if since else []}
        raise ReportError(_nothing_matches(experiment, filters, client))
    return records


def lost_cells(tags: dict[str, str]) -> list[dict[str, str]]:
    """The lost cells a cluster run's tags list (``bench --cluster``; none when the tag is missing or unreadable)."""
    try:
        cells = json.loads(tags.get(mlflow_store.CLUSTER_LOST_TAG) or "[]")
    except ValueError:
        return []
    return [c for c in cells if isinstance(c, dict) and {"host", "preset", "backend"} <= set(c)] \
        if isinstance(cells, list) else []


def cluster_run_lost(run_id: str, client: Any = None, preset: str | Iterable[str] | None = None,
                     backend: str | Iterable[str] | None = None, host: str | Iterable[str] | None = None,
                     records: Iterable[dict[str, Any]] = ()) -> list[dict[str, str]]:
    """The cells of cluster run ``run_id`` without a record (for ``report --by-host --cluster-run ID``), filtered as
    :func:`collect_records` filters (``host`` also matches a host class, known from that host's ``records``)."""
    presets, backends, hosts = _names(preset), _names(backend), _names(host)
    classes = {r.get("host"): r.get("host_class") for r in records}
    return [c for c in _cluster_run_cells(run_id, client)
            if (not presets or c["preset"] in presets) and (not backends or c["backend"] in backends)
            and (not hosts or c["host"] in hosts or classes.get(c["host"]) in hosts)]


def _cluster_run_cells(run_id: str, client: Any) -> list[dict[str, str]]:
    if client is None:
        client = mlflow_store.make_client(mlflow_store.tracking_uri())
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - a wrong id or a failing store: say which
        raise ReportError(f"--cluster-run {run_id}: no such run in the store ({short_error(exc)})") from None
    if run.data.tags.get(mlflow_store.KIND_TAG) != mlflow_store.KIND_CLUSTER:
        raise ReportError(f"--cluster-run {run_id}: that run is not a `bench --cluster` run")
    return lost_cells(run.data.tags)


def _nothing_matches(experiment: str, filters: dict[str, list[str]], client: Any) -> str:
    given = [f"{k}={','.join(v)}" for k, v in filters.items() if v]
    msg = f"no bench results in experiment {experiment!r}"
    if not given:
        return msg + "; run `signflow-zoo bench` first"
    msg += f" match {', '.join(given)}"
    try:
        everything = collect_records(experiment=experiment, client=client)
    except SignFlowError:
        everything = []
    for key in ("preset", "backend", "host") if everything else ():
        have = sorted({str(r.get(key, "")) for r in everything})
        msg += f"; {key}s with results: {', '.join(have)}"
    return msg + "; widen the filters or run `signflow-zoo bench` for what is missing"


def flatten_run(run: Any) -> dict[str, Any]:
    """One MLflow run as a flat record: params, metrics, the identity tags, ``start_time`` and ``run_id``."""
    tags = dict(run.data.tags)
    rec: dict[str, Any] = dict(run.data.params)
    rec.update(run.data.metrics)
    for k in mlflow_store.IDENTITY_TAGS:
        if k in tags:
            rec[k] = tags[k]
    rec["start_time"] = run.info.start_time
    rec["run_id"] = run.info.run_id
    if PARENT_TAG in tags:
        rec["parent_run_id"] = tags[PARENT_TAG]
    if mlflow_store.CLUSTER_RUN_TAG in tags:  # a node's record of `bench --cluster`
        rec["cluster_run_id"] = tags[mlflow_store.CLUSTER_RUN_TAG]
    return rec


def parse_since(since: datetime | date | str | None) -> int | None:
    """``since`` as milliseconds since the epoch (None stays None).

    A relative age reaches back at most :data:`REPORT_SINCE_DAYS` days; anything further is a ReportError.
    """
    if since is None or since == "":
        return None
    if isinstance(since, datetime):
        dt = since
    elif isinstance(since, date):
        dt = datetime(since.year, since.month, since.day)
    elif isinstance(since, str):
        m = _RELATIVE.match(since)
        if m:
            amount, unit = float(m.group(1)), m.group(2).lower()
            if amount * _UNIT_DAYS[unit] > REPORT_SINCE_DAYS:
                raise ReportError(f"--since {since.strip()!r} reaches back more than {REPORT_SINCE_DAYS} days (100 years); "
                                  "give a shorter age such as 7d or 52w, or an ISO date such as 2026-11-01")
            dt = datetime.now(timezone.utc) - timedelta(**{_UNITS[unit]: amount})
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
    try:
        return int(dt.timestamp() * 1000)
    except (OverflowError, OSError, ValueError):  # datetime.min with a negative offset and the like
        raise ReportError(f"--since {since!s} is outside the dates this platform can compare; give a date after "
                          "1970-01-01") from None


def _check_store(uri: str, experiment: str) -> None:
    mlflow_store.check_reachable(uri)
    mlflow_store.check_store_exists(uri, experiment)


def _names(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else list(value)
    return [p.strip() for p in parts if p and p.strip()]


# -- reading flat records -----------------------------------------------------------------------------


def number(rec: dict[str, Any] | None, key: str) -> float | None:
    """A finite number from a record (metrics are floats, params strings), or None."""
    v = (rec or {}).get(key)
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def started_ms(rec: dict[str, Any]) -> int:
    """Milliseconds since the epoch: ``start_time`` or the ISO ``created`` param; 0 when neither."""
    st = number(rec, "start_time")
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


def is_noisy(rec: dict[str, Any], b: int) -> bool:
    return bool(number(rec, f"noisy_b{b}") or 0.0)


def p99_valid(rec: dict[str, Any] | None, b: int) -> bool:
    """Whether a cell's p99 may be claimed: it has an upper bound at 99% confidence (LoadGen's early stopping),
    or, for results older than that bound, at least the calls the bound needs."""
    if rec is None:
        return False
    if number(rec, f"latency_p99_upper_ms_b{b}") is not None:
        return True
    n = number(rec, f"iterations_b{b}")
    return n is not None and n >= min_calls_for_tail()


def batch_sizes_of(records: Iterable[dict[str, Any]]) -> list[int]:
    """Every batch size with a latency in ``records``, ascending."""
    found: set[int] = set()
    for r in records:
        for k in r:
            m = _BATCH_METRIC.match(k)
            if m:
                found.add(int(m.group(1)))
    return sorted(found)


def preset_order() -> dict[str, int]:
    """Zoo order of the preset names (smallest first); empty when the zoo cannot be read."""
    try:
        from signflow_zoo.model.zoo import list_presets

        return {name: i for i, name in enumerate(list_presets())}
    except SignFlowError:  # a broken user zoo file must not stop a report
        return {}


def sort_key(order: dict[str, int]):
    """Records in zoo order of presets, grouped by host class, the reference backend first, then by backend,
    host, newest first."""
    def key(r: dict[str, Any]):
        p, b = str(r.get("preset", "")), str(r.get("backend", ""))
        return (order.get(p, len(order)), p, str(r.get("host_class") or ""), b != REFERENCE_BACKEND, b,
                str(r.get("host", "")), -started_ms(r))
    return key


def references(records: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """The reference backend's records by (preset, host)."""
    refs: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("backend") == REFERENCE_BACKEND:
            refs.setdefault((r.get("preset"), r.get("host", "")), []).append(r)
    return refs


def reference_of(rec: dict[str, Any], refs_by_key: dict[tuple, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """The torch-eager record of the same preset and host: same invocation if any, else the newest."""
    refs = refs_by_key.get((rec.get("preset"), rec.get("host", "")), [])
    if not refs:
        return None
    same = [r for r in refs if rec.get("invocation_id") and r.get("invocation_id") == rec.get("invocation_id")]
    return max(same or refs, key=started_ms)


def accuracy_interval(rec: dict[str, Any]) -> tuple[float, float] | None:
    """Top-1's 95% interval in percent, when the bench stored one."""
    lo, hi = number(rec, "accuracy_top1_ci_lo"), number(rec, "accuracy_top1_ci_hi")
    return None if lo is None or hi is None else (100 * lo, 100 * hi)
