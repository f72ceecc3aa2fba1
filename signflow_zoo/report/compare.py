"""``signflow-zoo report --compare A B``: two sets of bench runs compared as latency distributions.

A *side* is chosen by a spec string (:func:`select_side`):

* a result file: ``PATH.json`` (any existing file is read as one);
* an MLflow run: ``run:ID`` or the bare 32-character run id, of a bench invocation (the parent run) or of
  one record (a child run: the side is then that record only). The invocation's result JSON, uploaded as an
  artifact of the parent run, is downloaded with the MLflow client;
* filters joined by commas, all of which must hold: ``commit:SHA`` (``environment.git_commit`` starts with
  SHA, or SHA with it), ``host:NAME`` (host name or host class), ``since:AGE|DATE`` and ``until:AGE|DATE``
  (the result's ``created`` time; an age such as ``7d``, ``24h``, ``2w`` or an ISO date/time). Filters search
  the local results folder (``$SIGNFLOW_ZOO_HOME/results/bench-*.json``) and the bench invocations of the
  MLflow experiment; an invocation found in both counts once (the local file is read).

When several result files make one side, their calls are pooled per (preset, backend, batch), each file's
blocks kept as blocks. For every (preset, backend, batch) measured on both sides the statistic is
``B/A``, the median of B's calls over the median of A's (> 1: B is slower), with a 95% interval from a
two-level bootstrap (:func:`runs_ratio_ci`): each side's runs resampled, then whole blocks within each
resampled run, 1000 times (a block is a run of back-to-back calls, the unit machine drift acts on; a run is
the unit a machine state acts on). The verdict (:func:`verdict`) is ``slower`` when the interval lies above 1
*and* B/A > 1 + threshold, ``faster`` when it lies below 1 *and* B/A < 1 - threshold, else
``indistinguishable``.

The threshold: with one run on a side, its interval holds that run's own noise only, while two back-to-back
runs of one host without any change differed by 5-16% here (docs/commands.md, "Two sets of runs compared"): the default is then
:data:`SINGLE_RUN_THRESHOLD` (10%, asv's default factor); with several runs on both sides the run-to-run
spread is in the interval and the default is :data:`DEFAULT_THRESHOLD` (2%). ``--threshold`` overrides both.

Different host classes on the two sides (``environment.host_class``) are compared on normalized values only:
each run's calls divided by its reference-workload milliseconds (``p50_ms / normalized_p50``), and the table
says so. Results older than stored samples give the ratio of stored p50s with no interval and no verdict.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from signflow_zoo.results import store as mlflow_store
from signflow_zoo.common.errors import SignFlowError
from signflow_zoo.results.store import (COMPLETE_TAG, EXPERIMENT, INVOCATION_ID_TAG, KIND_INVOCATION, KIND_RECORD, KIND_TAG,
                           PARENT_TAG, RESULT_ID_TAG, short_error)
from signflow_zoo.results.records import BenchDocument, BenchRecord
from signflow_zoo.report.records import REFERENCE_BACKEND, ReportError, _names, parse_since, preset_order, started_ms
from signflow_zoo.report import escape
from signflow_zoo.report.tables import _check_fmt, _render, fmt_ms
from signflow_zoo.results.files import read_result
from signflow_zoo.results.latency import BOOTSTRAP_SAMPLES

DEFAULT_THRESHOLD = 0.02  # practical difference, several runs a side: within 2% of 1 is never slower or faster
SINGLE_RUN_THRESHOLD = 0.10  # ... with one run on a side: its interval cannot hold the run-to-run spread
VERDICTS = ("slower", "faster", "indistinguishable", "no interval", "not comparable")
TEST_TEXT = f"bootstrap of the ratio of medians, runs then blocks resampled, {BOOTSTRAP_SAMPLES} resamples"
SIDE_FORMS = ("PATH.json (a result file), run:ID or a bare MLflow run id (a bench invocation or one record), "
              "or filters joined by commas: commit:SHA, host:NAME (host or host class), since:7d|DATE, until:7d|DATE")
FILTER_KEYS = ("commit", "host", "since", "until")
PROGRESS_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_PAGE = 1000


# -- sides ---------------------------------------------------------------------------------------------


@dataclass
class SourceDoc:
    """One bench result file on a side: where it came from, and (for a child run) the one record meant."""

    doc: BenchDocument
    source: str  # a path, or "MLflow run <id>"
    result_id: str | None = None  # only this record (a side given by a child record run)

    def records(self) -> list[BenchRecord]:
        return [r for r in self.doc.records if self.result_id is None or r.result_id == self.result_id]

    @property
    def host_class(self) -> str:
        return str(self.doc.environment.get("host_class") or "")


@dataclass
class Side:
    """The result files one spec selected."""

    spec: str
    docs: list[SourceDoc]
    searched: str = ""  # what was searched, for messages
    notes: list[str] = field(default_factory=list)

    @property
    def host_classes(self) -> list[str]:
        return sorted({d.host_class for d in self.docs} - {""})

    @property
    def invocations(self) -> set[str]:
        return {d.doc.invocation_id for d in self.docs}

    def describe(self, label: str) -> str:
        srcs = [Path(d.source).name if not d.source.startswith("MLflow") else d.source for d in self.docs]
        shown = ", ".join(srcs[:3]) + (f" and {len(srcs) - 3} more" if len(srcs) > 3 else "")
        commits = sorted({str(d.doc.environment.get("git_commit") or "") for d in self.docs} - {""})
        hosts = sorted({str(d.doc.environment.get("host") or "") for d in self.docs} - {""})
        created = sorted(d.doc.created for d in self.docs if d.doc.created)
        parts = [] if srcs == [Path(self.spec).name] else [
            f"{len(self.docs)} result file{'s' if len(self.docs) != 1 else ''} ({shown})"]
        parts.append(f"host class {', '.join(self.host_classes) or 'not recorded'}")
        if hosts:
            parts.append(f"host {', '.join(hosts)}")
        if commits:
            parts.append(f"commit {', '.join(commits)}")
        if created:
            parts.append(f"created {created[0]}" + (f" to {created[-1]}" if created[-1] != created[0] else ""))
        return f"{label} = {self.spec}: " + "; ".join(parts)


def select_side(spec: str, experiment: str = EXPERIMENT, client: Any = None, results_dir: Path | str | None = None,
                label: str = "A") -> Side:
    """The result files a spec selects (forms: :data:`SIDE_FORMS`); a :class:`ReportError` when none match."""
    spec = str(spec).strip()
    if not spec:
        raise ReportError(f"side {label} is empty; give one of: {SIDE_FORMS}")
    path = Path(spec)
    if spec.endswith(".json") or path.is_file():
        return Side(spec, [_read_file(path, label)], searched=f"file {path}")
    if spec.startswith("run:") or _RUN_ID.match(spec):
        return _run_side(spec, spec.split(":", 1)[1].strip() if spec.startswith("run:") else spec, client, label)
    filters = _parse_filters(spec, label)
    folder = Path(results_dir) if results_dir is not None else _results_folder()
    local, scanned, unreadable = _local_docs(folder, filters)
    side = Side(spec, list(local))
    where = [f"searched {scanned} result file{'s' if scanned != 1 else ''} in {folder}"]
    if unreadable:
        side.notes.append(f"{label}: {unreadable} unreadable result file(s) in {folder} skipped")
    found, searched_store = _mlflow_docs(filters, experiment, client, {d.doc.invocation_id for d in local})
    side.docs += found
    where.append(searched_store)
    side.searched = "; ".join(where)
    if not side.docs:
        raise ReportError(_nothing_matches(spec, label, side.searched, folder))
    side.docs.sort(key=lambda d: (d.doc.created, d.source))
    return side


def _results_folder() -> Path:
    from signflow_zoo.common.cachefiles import zoo_home

    return zoo_home() / "results"


def _read_file(path: Path, label: str) -> SourceDoc:
    if not path.is_file():
        raise ReportError(f"side {label}: no result file {path} (a spec ending in .json names a file); "
                          f"list result files with `ls $SIGNFLOW_ZOO_HOME/results`")
    try:
        return SourceDoc(BenchDocument.from_dict(read_result(path)), str(path))
    except ValueError as exc:
        raise ReportError(f"side {label}: cannot read result file {path}: {exc}") from None


def _parse_filters(spec: str, label: str) -> dict[str, Any]:
    filters: dict[str, Any] = {}
    for part in (p.strip() for p in spec.split(",")):
        key, sep, value = part.partition(":")
        key, value = key.strip().lower(), value.strip()
        if not sep or key not in FILTER_KEYS or not value:
            raise ReportError(f"side {label} {spec!r}: cannot read {part!r} (no such file either); a side is "
                              f"{SIDE_FORMS}")
        if key in filters:
            raise ReportError(f"side {label} {spec!r}: {key}: is given twice; give it once")
        if key in ("since", "until"):
            try:
                filters[key] = (value, parse_since(value))
            except ReportError as exc:
                raise ReportError(f"side {label}: {str(exc).replace('--since ', f'{key}:')}") from None
        else:
            filters[key] = value
    return filters


def _commit_matches(have: str, want: str) -> bool:
    have, want = have.strip().lower(), want.strip().lower()
    return bool(have) and (have.startswith(want) or want.startswith(have))


def _env_matches(env: dict[str, Any], filters: dict[str, Any]) -> bool:
    if "commit" in filters and not _commit_matches(str(env.get("git_commit") or ""), filters["commit"]):
        return False
    if "host" in filters and filters["host"] not in (env.get("host"), env.get("host_class")):
        return False
    return True


def _time_matches(created: str, filters: dict[str, Any]) -> bool:
    if "since" not in filters and "until" not in filters:
        return True
    ms = started_ms({"created": created})
    if "since" in filters and ms < filters["since"][1]:
        return False
    return not ("until" in filters and ms > filters["until"][1])


def _local_docs(folder: Path, filters: dict[str, Any]) -> tuple[list[SourceDoc], int, int]:
    found, scanned, unreadable = [], 0, 0
    for p in sorted(folder.glob("bench-*.json")) if folder.is_dir() else []:
        scanned += 1
        try:
            doc = BenchDocument.from_dict(read_result(p))
        except ValueError:
            unreadable += 1
            continue
        if _env_matches(doc.environment, filters) and _time_matches(doc.created, filters):
            found.append(SourceDoc(doc, str(p)))
    return found, scanned, unreadable


def _store(client: Any, experiment: str = EXPERIMENT) -> tuple[Any, str]:
    """(client, redacted URI); TrackingError when the store is unreachable or a local one does not exist
    (a reader never creates a SQLite store)."""
    raw = str(getattr(client, "tracking_uri", "") or "") if client is not None else mlflow_store.tracking_uri()
    mlflow_store.check_reachable(raw)
    mlflow_store.check_store_exists(raw, experiment)
    return (client if client is not None else mlflow_store.make_client(raw)), mlflow_store.redact_uri(raw)


def _mlflow_docs(filters: dict[str, Any], experiment: str, client: Any,
                 skip: set[str]) -> tuple[list[SourceDoc], str]:
    """Result files of the bench invocations in ``experiment`` that match, downloaded; and what was searched.
    A store that cannot be read is reported in that text, not raised: filters also search the local folder."""
    try:
        client, uri = _store(client, experiment)
        exp = client.get_experiment_by_name(experiment)
    except SignFlowError as exc:
        return [], f"the MLflow store was not searched ({exc})"
    except Exception as exc:  # noqa: BLE001 - any store failure: the local folder was still searched
        return [], f"the MLflow store was not searched ({short_error(exc)})"
    if exp is None:
        return [], f"the MLflow store {uri} has no experiment {experiment!r}"
    query = mlflow_store.kind_filter(KIND_INVOCATION)
    if "since" in filters:  # a parent run starts when it is uploaded: never before its result was created
        query += f" and attributes.start_time >= {filters['since'][1]}"
    try:
        runs = mlflow_store.search_all_runs(client, exp.experiment_id, query, _PAGE)
    except Exception as exc:  # noqa: BLE001
        return [], f"the MLflow store was not searched ({short_error(exc)})"
    found: list[SourceDoc] = []
    with tempfile.TemporaryDirectory(prefix="signflow-compare-") as tmp:
        for run in runs:
            tags = dict(run.data.tags)
            if tags.get(INVOCATION_ID_TAG) in skip or not _env_matches(tags, filters):
                continue
            doc = _download_doc(client, run.info.run_id, tags.get(INVOCATION_ID_TAG), Path(tmp))
            if doc is not None and doc.invocation_id not in skip and _time_matches(doc.created, filters):
                skip.add(doc.invocation_id)
                found.append(SourceDoc(doc, f"MLflow run {run.info.run_id}"))
    plural = "s" if len(runs) != 1 else ""
    return found, f"searched {len(runs)} bench invocation{plural} in experiment {experiment!r} of the MLflow store {uri}"


def _download_doc(client: Any, run_id: str, invocation: str | None, tmp: Path) -> BenchDocument | None:
    """The bench result file uploaded with a parent run (an artifact ``bench-*.json``), or None."""
    try:
        names = [f.path for f in client.list_artifacts(run_id)
                 if not f.is_dir and Path(f.path).name.startswith("bench-") and f.path.endswith(".json")]
    except Exception:  # noqa: BLE001 - an artifact store that cannot be listed holds nothing usable
        return None
    docs = []
    for name in names:
        dst = tmp / run_id
        dst.mkdir(parents=True, exist_ok=True)
        try:
            with _no_progress_bar():  # MLflow draws one per file: noise on a report's stderr
                local = client.download_artifacts(run_id, name, str(dst))
            docs.append(BenchDocument.from_dict(read_result(local)))
        except Exception:  # noqa: BLE001 - unreadable or not downloadable: not a result
            continue
    same = [d for d in docs if invocation and d.invocation_id == invocation]
    found = same or docs
    return found[0] if found else None


@contextmanager
def _no_progress_bar():
    old = os.environ.get(PROGRESS_ENV)
    os.environ[PROGRESS_ENV] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = old


def _run_side(spec: str, run_id: str, client: Any, label: str) -> Side:
    client, uri = _store(client)
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own exception for an unknown id
        raise ReportError(f"side {label}: no MLflow run {run_id!r} in the store {uri} ({short_error(exc)}); "
                          "bench run ids are in the MLflow UI (`signflow-zoo ui`) and in each result file's "
                          "tracking.parent_run_id; or give a result file, commit:SHA, host:NAME or since:7d") from None
    tags = dict(run.data.tags)
    parent: str | None
    kind, result_id, parent = tags.get(KIND_TAG), None, run_id
    if kind == KIND_RECORD:
        parent, result_id = tags.get(PARENT_TAG), tags.get(RESULT_ID_TAG)
    elif kind != KIND_INVOCATION:
        raise ReportError(f"side {label}: MLflow run {run_id} is not a bench run (its {KIND_TAG} tag is "
                          f"{kind!r}); give the run of a bench invocation or of one bench record")
    if not parent:
        raise ReportError(f"side {label}: bench record run {run_id} has no parent run ({PARENT_TAG}), so no result file")
    with tempfile.TemporaryDirectory(prefix="signflow-compare-") as tmp:
        inv = tags.get(INVOCATION_ID_TAG) if kind == KIND_INVOCATION else None
        doc = _download_doc(client, parent, inv, Path(tmp))
    if doc is None:
        raise ReportError(f"side {label}: bench run {parent} in {uri} has no result file artifact (bench-*.json)"
                          + ("" if tags.get(COMPLETE_TAG) == "1" else ": its upload is incomplete; run `signflow-zoo sync`")
                          + "; compare the local result file instead")
    src = SourceDoc(doc, f"MLflow run {parent}", result_id)
    if result_id is not None and not src.records():
        raise ReportError(f"side {label}: the result file of run {parent} has no record {result_id!r} (of run {run_id})")
    return Side(spec, [src], searched=f"MLflow run {run_id} in {uri}")


def _nothing_matches(spec: str, label: str, searched: str, folder: Path) -> str:
    return (f"side {label} {spec!r} matches no bench result: {searched}; list what exists with "
            f"`ls {folder}` or `signflow-zoo report --all-runs --format csv` (columns host, host_class, created), "
            "and give a result file (PATH.json), run:ID, commit:SHA, host:NAME or since:7d")


# -- the statistic ---------------------------------------------------------------------------------------


def verdict(ratio: float | None, lo: float | None, hi: float | None, threshold: float = DEFAULT_THRESHOLD) -> str:
    """``slower`` when the 95% interval of B/A lies above 1 and B/A > 1 + threshold; ``faster`` when it lies
    below 1 and B/A < 1 - threshold; else ``indistinguishable``. ``no interval`` without one."""
    if ratio is None or lo is None or hi is None or not all(math.isfinite(v) for v in (ratio, lo, hi)):
        return "no interval"
    if lo > 1.0 and ratio > 1.0 + threshold:
        return "slower"
    if hi < 1.0 and ratio < 1.0 - threshold:
        return "faster"
    return "indistinguishable"


def runs_ratio_ci(num_runs: list[list[list[float]]], den_runs: list[list[list[float]]], n_boot: int = BOOTSTRAP_SAMPLES,
                  seed: int = 1, level: float = 0.95) -> tuple[float, float, float]:
    """median(num) / median(den) of all calls, and its interval from a two-level bootstrap: each side's runs
    resampled with replacement, then each chosen run's blocks; with one run a side, blocks alone."""
    num = [[np.asarray(b, dtype=np.float64) for b in run if len(b)] for run in num_runs]
    den = [[np.asarray(b, dtype=np.float64) for b in run if len(b)] for run in den_runs]
    num, den = [r for r in num if r], [r for r in den if r]
    if not num or not den:
        return math.nan, math.nan, math.nan
    point = float(np.median(np.concatenate([b for r in num for b in r])) /
                  np.median(np.concatenate([b for r in den for b in r])))
    rng = np.random.default_rng(seed)

    def medians(runs):
        out = np.empty(n_boot)
        for i in range(n_boot):
            picked = [runs[j] for j in rng.integers(0, len(runs), len(runs))] if len(runs) > 1 else runs
            parts = []
            for run in picked:
                if len(run) == 1:
                    parts.append(run[0][rng.integers(0, len(run[0]), len(run[0]))])
                else:
                    parts.extend(run[j] for j in rng.integers(0, len(run), len(run)))
            out[i] = np.median(np.concatenate(parts))
        return out

    ratios = medians(num) / medians(den)
    lo, hi = np.quantile(ratios, [(1 - level) / 2, 1 - (1 - level) / 2])
    return point, float(min(lo, point)), float(max(hi, point))


@dataclass
class Pool:
    """One side's calls at one (preset, backend, batch), every run's blocks kept as blocks."""

    blocks: list[list[float]] = field(default_factory=list)
    run_blocks: list[list[list[float]]] = field(default_factory=list)  # the same blocks, grouped by run
    p50s: list[float] = field(default_factory=list)
    runs: int = 0
    runs_without_samples: list[str] = field(default_factory=list)
    missing_normalized: list[str] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return sum(len(b) for b in self.blocks)


@dataclass
class CellComparison:
    preset: str
    backend: str
    batch: int
    basis: str  # "ms" or "normalized"
    a: float | None  # median of A's calls (or of its stored p50s without samples), in the basis' unit
    b: float | None
    ratio: float | None  # B/A
    ci: tuple[float, float] | None
    verdict: str
    a_pool: Pool
    b_pool: Pool


@dataclass
class RunComparison:
    a: Side
    b: Side
    normalized: bool
    threshold: float
    rows: list[CellComparison]
    notes_above: list[str] = field(default_factory=list)
    notes_below: list[str] = field(default_factory=list)


def _cells(side: Side) -> dict[tuple[str, str, int], list[tuple[SourceDoc, BenchRecord]]]:
    out: dict[tuple[str, str, int], list[tuple[SourceDoc, BenchRecord]]] = {}
    for src in side.docs:
        for rec in src.records():
            for b in sorted(set(rec.latency) | set(rec.samples)):
                if rec.samples.get(b) or (b in rec.latency and math.isfinite(rec.latency[b].p50_ms)):
                    out.setdefault((rec.preset, rec.backend, int(b)), []).append((src, rec))
    return out


def _pool(entries: list[tuple[SourceDoc, BenchRecord]], batch: int, normalized: bool) -> Pool:
    pool = Pool()
    for src, rec in entries:
        lat = rec.latency.get(batch)
        p50 = lat.p50_ms if lat is not None and math.isfinite(lat.p50_ms) else None
        scale = 1.0
        if normalized:
            norm = rec.normalized_p50.get(batch)
            if p50 is None or not norm or not math.isfinite(norm) or p50 <= 0:
                pool.missing_normalized.append(src.source)
                continue
            scale = p50 / norm  # this run's reference-workload ms
        pool.runs += 1
        blocks = [[v / scale for v in block] for block in rec.samples.get(batch) or [] if block]
        if blocks:
            pool.blocks.extend(blocks)
            pool.run_blocks.append(blocks)
        else:
            pool.runs_without_samples.append(src.source)
        if p50 is not None:
            pool.p50s.append(p50 / scale)
    return pool


def compare_sides(a: Side, b: Side, threshold: float | None = None, normalize: bool | None = None,
                  preset: str | Iterable[str] | None = None, backend: str | Iterable[str] | None = None,
                  n_boot: int = BOOTSTRAP_SAMPLES) -> RunComparison:
    """B against A for every (preset, backend, batch) measured on both sides (``preset``/``backend`` narrow
    them). ``normalize``: None compares normalized values when the sides' host classes differ, milliseconds
    otherwise; True always normalized; False always milliseconds. ``threshold`` None: 10% when a side holds
    one run, 2% when both hold several (module docstring)."""
    if threshold is None:
        threshold = SINGLE_RUN_THRESHOLD if min(len(a.docs), len(b.docs)) < 2 else DEFAULT_THRESHOLD
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and 0 <= threshold <= 1):
        raise ReportError(f"threshold must be a number in 0..1 (a fraction: 0.02 is 2%), got {threshold!r}")
    presets, backends = _names(preset), _names(backend)
    ca, cb = _cells(a), _cells(b)
    keep = lambda k: (not presets or k[0] in presets) and (not backends or k[1] in backends)  # noqa: E731
    ca, cb = {k: v for k, v in ca.items() if keep(k)}, {k: v for k, v in cb.items() if keep(k)}
    common = set(ca) & set(cb)
    if not common:
        raise ReportError(
            f"no preset/backend/batch is measured on both sides: A ({a.spec}) has {_cell_list(ca)}; "
            f"B ({b.spec}) has {_cell_list(cb)}"
            + (f" (narrowed to preset {','.join(presets)})" if presets else "")
            + (f" (narrowed to backend {','.join(backends)})" if backends else "")
            + "; pick sides that timed the same presets, backends and batch sizes")

    classes_a, classes_b = a.host_classes, b.host_classes
    differ = len(set(classes_a) | set(classes_b)) > 1  # unknown classes (older files) do not count
    normalized = differ if normalize is None else bool(normalize)
    basis = "normalized" if normalized else "ms"
    out = RunComparison(a, b, normalized, float(threshold), [])
    out.notes_above += [a.describe("A"), b.describe("B")]
    if normalized and differ:
        out.notes_above.append(
            f"host classes differ (A: {', '.join(classes_a)}; B: {', '.join(classes_b)}): comparing NORMALIZED "
            "values only, not milliseconds: every call divided by its run's reference-workload ms "
            "(p50_ms / normalized_p50), so values are multiples of that workload")
    elif normalized:
        out.notes_above.append("comparing NORMALIZED values (every call divided by its run's reference-workload ms, "
                               "p50_ms / normalized_p50), not milliseconds")
    unknown = [lbl for lbl, side in (("A", a), ("B", b)) if any(not d.host_class for d in side.docs)]
    if unknown and not normalized:
        out.notes_above.append(f"side {' and '.join(unknown)} has result files that record no host class (older "
                               "files): taken to be the same class; pass --normalized to compare normalized values")
    shared = a.invocations & b.invocations
    if shared:
        out.notes_above.append(f"the same bench invocation is on both sides ({', '.join(sorted(shared))}): those "
                               "calls are compared with themselves")
    for lbl, side in (("A", a), ("B", b)):
        unstable = [d.source for d in side.docs
                    if getattr(getattr(d.doc, "stability", None), "status", "") == "unstable"]
        if unstable:
            out.notes_above.append(f"side {lbl}: unstable run ({', '.join(unstable[:4])}): its reference workload "
                                   "moved during the run, so its calls may not compare; rerun on a quieter machine")

    order = preset_order()
    for key in sorted(common, key=lambda k: (order.get(k[0], len(order)), k[0], k[1] != REFERENCE_BACKEND, k[1], k[2])):
        pa, pb = _pool(ca[key], key[2], normalized), _pool(cb[key], key[2], normalized)
        row = CellComparison(key[0], key[1], key[2], basis, None, None, None, None, "not comparable", pa, pb)
        if pa.missing_normalized or pb.missing_normalized:
            out.rows.append(row)
            continue
        if pa.blocks and pb.blocks:
            row.a = float(statistics.median(v for blk in pa.blocks for v in blk))
            row.b = float(statistics.median(v for blk in pb.blocks for v in blk))
            ratio, lo, hi = runs_ratio_ci(pb.run_blocks, pa.run_blocks, n_boot=n_boot)
            row.ratio, row.ci = ratio, (min(lo, ratio), max(hi, ratio))
        elif pa.p50s and pb.p50s:
            row.a, row.b = float(statistics.median(pa.p50s)), float(statistics.median(pb.p50s))
            row.ratio = row.b / row.a if row.a > 0 else None
        ci_lo, ci_hi = row.ci or (None, None)
        row.verdict = verdict(row.ratio, ci_lo, ci_hi, threshold=threshold)
        out.rows.append(row)

    out.notes_below += _notes_below(out, ca, cb, common)
    return out


def _cell_name(key: tuple[str, str, int]) -> str:
    return f"{key[0]}/{key[1]} b{key[2]}"


def _cell_list(cells: dict, most: int = 6) -> str:
    names = [_cell_name(k) for k in sorted(cells)]
    if not names:
        return "nothing"
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _notes_below(c: RunComparison, ca: dict, cb: dict, common: set) -> list[str]:
    pct = f"{100 * c.threshold:g}%"
    unit = "normalized value (calls over reference-workload ms)" if c.normalized else "latency in ms"
    notes = [
        f"B/A = median {unit} of B over that of A (> 1: B is slower); 95% interval: {TEST_TEXT} (each side "
        "independently)",
        f"verdict: slower when the interval lies above 1 and B/A > {1 + c.threshold:g}; faster when it lies below 1 "
        f"and B/A < {1 - c.threshold:g}; else indistinguishable (practical threshold {pct}, --threshold)",
    ]
    single = [lbl for lbl, side in (("A", c.a), ("B", c.b)) if len(side.docs) < 2]
    if single:
        notes.append(f"one run on side {' and '.join(single)}: the interval holds that run's own noise, not the "
                     "spread between runs (back-to-back runs of one host without a change differed by 5-16% here), "
                     f"hence the {100 * SINGLE_RUN_THRESHOLD:g}% default threshold; pool several runs a side "
                     "(commit:, since:/until:) for an interval that holds it")
    no_interval = [r for r in c.rows if r.verdict == "no interval" and r.ratio is not None]
    if no_interval:
        srcs = _unique(s for r in no_interval for s in r.a_pool.runs_without_samples + r.b_pool.runs_without_samples)
        notes.append(f"no interval: {', '.join(srcs[:4]) or 'these runs'} store no per-call samples (older result "
                     "files): the ratio of their stored p50s is shown, without an interval or a verdict")
    mixed = _unique(s for r in c.rows if r.a_pool.blocks and r.b_pool.blocks
                    for s in r.a_pool.runs_without_samples + r.b_pool.runs_without_samples)
    if mixed:
        notes.append(f"left out of the pooled calls (no per-call samples): {', '.join(mixed[:4])}")
    missing = [r for r in c.rows if r.verdict == "not comparable"]
    if missing:
        srcs = _unique(s for r in missing for s in r.a_pool.missing_normalized + r.b_pool.missing_normalized)
        notes.append(f"not comparable: {', '.join(_cell_name((r.preset, r.backend, r.batch)) for r in missing)} "
                     f"cannot be compared across host classes: no normalized p50 in {', '.join(srcs[:4])}")
    only_a, only_b = set(ca) - common, set(cb) - common
    if only_a or only_b:
        parts = ([f"A only: {_cell_list({k: 1 for k in only_a})}"] if only_a else []) + \
                ([f"B only: {_cell_list({k: 1 for k in only_b})}"] if only_b else [])
        notes.append("not compared (measured on one side only): " + "; ".join(parts))
    for side in (c.a, c.b):
        notes += side.notes
    return notes


# -- rendering -------------------------------------------------------------------------------------------


def render_comparison(c: RunComparison, fmt: str = "terminal") -> str:
    """The comparison as a table: terminal/markdown with the sides and the test stated around it; csv/json
    one row per cell with raw numbers (``basis`` says ms or normalized)."""
    _check_fmt(fmt)
    raw = fmt in ("csv", "json")
    unit = "norm." if c.normalized else "ms"
    if raw:
        columns = [("preset", "preset"), ("backend", "backend"), ("batch", "batch"), ("basis", "basis"),
                   ("a_p50", "a_p50"), ("b_p50", "b_p50"), ("ratio", "ratio"), ("ci_lo", "ci_lo"), ("ci_hi", "ci_hi"),
                   ("verdict", "verdict"), ("threshold", "threshold"), ("blocks_a", "blocks_a"),
                   ("blocks_b", "blocks_b"), ("calls_a", "calls_a"), ("calls_b", "calls_b"), ("runs_a", "runs_a"),
                   ("runs_b", "runs_b")]
    else:
        columns = [("preset", "preset"), ("backend", "backend"), ("batch", "batch"), ("a_p50", f"A p50 {unit}"),
                   ("b_p50", f"B p50 {unit}"), ("ratio", "B/A"), ("ci", "95% interval"), ("verdict", "verdict"),
                   ("blocks", "blocks A/B")]
    rows = []
    for r in c.rows:
        if raw:
            rows.append({"preset": r.preset, "backend": r.backend, "batch": r.batch, "basis": r.basis,
                         "a_p50": _round(r.a), "b_p50": _round(r.b), "ratio": _round(r.ratio),
                         "ci_lo": _round(r.ci[0]) if r.ci else None, "ci_hi": _round(r.ci[1]) if r.ci else None,
                         "verdict": r.verdict, "threshold": c.threshold, "blocks_a": len(r.a_pool.blocks),
                         "blocks_b": len(r.b_pool.blocks), "calls_a": r.a_pool.calls, "calls_b": r.b_pool.calls,
                         "runs_a": r.a_pool.runs, "runs_b": r.b_pool.runs})
        else:
            show = fmt_ms if not c.normalized else (lambda v: "" if v is None else f"{v:.4g}")
            rows.append({"preset": r.preset, "backend": r.backend, "batch": str(r.batch), "a_p50": show(r.a),
                         "b_p50": show(r.b), "ratio": "" if r.ratio is None else f"{r.ratio:.3f}",
                         "ci": "" if r.ci is None else f"[{r.ci[0]:.3f}, {r.ci[1]:.3f}]", "verdict": r.verdict,
                         "blocks": f"{len(r.a_pool.blocks)}/{len(r.b_pool.blocks)}"})
    text = _render(columns, rows, fmt, {"batch", "a_p50", "b_p50", "ratio", "ci", "blocks"})
    if raw:
        return text
    above, below = ([escape.line(n, fmt) for n in notes] for notes in (c.notes_above, c.notes_below))
    return "\n".join(above) + "\n\n" + text + "\n\n" + "\n".join(below)


def _round(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 6)


def compare_runs(a: str | Side, b: str | Side, fmt: str = "terminal", threshold: float | None = None,
                 normalize: bool | None = None, preset: str | Iterable[str] | None = None,
                 backend: str | Iterable[str] | None = None, experiment: str = EXPERIMENT, client: Any = None,
                 results_dir: Path | str | None = None) -> str:
    """``report --compare A B`` in one call: select both sides (:func:`select_side`), compare them
    (:func:`compare_sides`) and render the table (:func:`render_comparison`)."""
    _check_fmt(fmt)
    sides = [s if isinstance(s, Side) else select_side(s, experiment, client, results_dir, label)
             for s, label in ((a, "A"), (b, "B"))]
    return render_comparison(compare_sides(sides[0], sides[1], threshold, normalize, preset, backend), fmt)


__all__ = ["DEFAULT_THRESHOLD", "SINGLE_RUN_THRESHOLD", "runs_ratio_ci", "VERDICTS", "TEST_TEXT", "SIDE_FORMS", "Side", "SourceDoc", "CellComparison",
           "RunComparison", "select_side", "compare_sides", "render_comparison", "compare_runs", "verdict"]
