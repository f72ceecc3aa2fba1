"""Bench results as local JSON (written before any tracking call) and their upload to MLflow.

One file per invocation under ``$SIGNFLOW_ZOO_HOME/results/``, schema in :mod:`signflow_zoo.results.records`;
:func:`write_result` is the one place that writes it (atomically: a temp file, then a rename).
``sync`` uploads files whose ``tracking.uploaded`` is false, each to the experiment it records; runs
are found again by their ``signflow_zoo.result_id`` tag and count only once their
``signflow_zoo.complete`` tag is set (the last call), so a repeated sync never duplicates them and an
interrupted upload is replaced, not kept half-done. A file whose bench is still running (it holds
``<file>.lock``) is left alone; a malformed file is named and skipped. Files of the previous schema
are read, upgraded and uploaded the same way.

:func:`flatten` turns one record into the flat key/value form that MLflow params and metrics hold and
that ``report`` reads back (see :mod:`signflow_zoo.report` for the conventions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from signflow_zoo.common.cachefiles import atomic_write_text, exclusive, is_locked, lock_path
from signflow_zoo.common.errors import TrackingError
from signflow_zoo.results.store import (COMPLETE_TAG, EXPERIMENT, INVOCATION_ID_TAG, KIND_INVOCATION, KIND_RECORD, KIND_TAG,
                           RESULT_ID_TAG, kind_filter)
from signflow_zoo.results.records import BenchDocument
from signflow_zoo.results.tracking import Tracker, short_error

STRING_KEYS = ("preset", "backend", "plugin", "provider", "precision", "status", "reason", "host", "host_class", "cpu", "gpu",
               "threads", "batch_sizes", "exporter", "opset", "artifact_sha256", "invocation_id", "result_id", "created",
               "schedule", "data_split", "data", "stability_status")


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json_atomic(path: Path, doc: dict[str, Any]) -> Path:
    """Write ``doc`` as JSON through a uniquely named temp file and a rename: readers never see half a file."""
    return atomic_write_text(path, json.dumps(doc, indent=1, default=str))


def write_result(doc: BenchDocument | dict[str, Any], path: Path | str | None = None) -> Path:
    """Write a bench result file (to ``path`` or the document's own ``result_file``)."""
    data = doc.to_dict() if isinstance(doc, BenchDocument) else doc
    return write_json_atomic(Path(path or data["result_file"]), data)


def read_result(path: Path | str) -> dict[str, Any]:
    """A result file of any readable schema, as a schema-2 dict; ``ValueError`` naming the problem otherwise."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a readable JSON file: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError("not a bench result (the JSON is not an object)")
    try:
        return BenchDocument.from_dict(raw).to_dict()
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed bench result: {type(exc).__name__}: {exc}") from None


def _batch_items(d: dict[str, Any] | None):
    return sorted(((int(b), v) for b, v in (d or {}).items()), key=lambda kv: kv[0])


def flatten(record: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """The flat record (the keys of MLflow params/metrics) that tables and plots read; schema-2 dicts."""
    env = doc.get("environment", {})
    p = record.get("params", {})
    cfg = doc.get("config", {})
    flat: dict[str, Any] = {
        "preset": record["preset"], "backend": record["backend"], "status": record["status"],
        "reason": record.get("reason", ""), "plugin": record.get("plugin", ""),
        "provider": p.get("provider", ""), "precision": p.get("precision", ""), "threads": str(p.get("threads", "")),
        "batch_sizes": ",".join(str(b) for b in cfg.get("batch_sizes", [])),
        "exporter": p.get("exporter", ""), "opset": str(p.get("opset", "")),
        "artifact_sha256": p.get("artifact_sha256", ""), "host": env.get("host", ""),
        "host_class": env.get("host_class", ""), "cpu": env.get("cpu", ""),
        "gpu": env.get("gpu", ""), "invocation_id": doc.get("invocation_id", ""), "result_id": record["result_id"],
        "created": doc.get("created", ""), "schedule": str((cfg.get("timing") or {}).get("schedule", "")),
        "data": str(p.get("data", "")), "data_split": str(p.get("data_split", "")),
    }
    for k in ("num_params", "gflops", "d_model", "heads", "layers", "dim_ff", "test_size"):
        if p.get(k) is not None:
            flat[k] = p[k]
    tr = record.get("training") or {}
    if tr.get("train_seconds") is not None:
        flat["train_seconds"] = tr["train_seconds"]
    if tr.get("val_accuracy") is not None:
        flat["train_val_accuracy"] = tr["val_accuracy"]
    cal = record.get("calibration") or {}
    for k in ("temperature", "ece_before", "ece_after"):
        if cal.get(k) is not None:
            flat[f"calibration_{k}"] = cal[k]
    acc = record.get("accuracy") or {}
    for k in ("top1", "top5", "macro_f1"):
        if acc.get(k) is not None:
            flat[f"accuracy_{k}"] = acc[k]
    if acc.get("top1_ci"):
        flat["accuracy_top1_ci_lo"], flat["accuracy_top1_ci_hi"] = acc["top1_ci"]
    if acc.get("agreement_top1") is not None:
        flat["agreement_top1"] = acc["agreement_top1"]
    par = record.get("parity") or {}
    if par:
        flat["parity_max_abs"] = par.get("max_abs")
        flat["parity_max_rel"] = par.get("max_rel")
        flat["parity_top1_agreement"] = par.get("top1_agreement")
        flat["parity_ok"] = 1.0 if par.get("ok") else 0.0
    mem = record.get("memory") or {}
    if mem.get("added_mb") is not None:
        flat["memory_mb"] = mem["added_mb"]
    for k in ("peak_mb", "baseline_mb", "device_added_mb"):
        if mem.get(k) is not None:
            flat[f"memory_{k}"] = mem[k]
    st = (record.get("stream") or {}).get("latency_ms") or {}
    for k in ("p50_ms", "p99_ms"):
        if st.get(k) is not None:
            flat[f"stream_latency_{k}"] = st[k]
    for b, lat in _batch_items(record.get("latency")):
        for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms"):
            flat[f"latency_{k}_b{b}"] = lat[k]
        lo, hi = lat.get("p50_ci_ms") or (None, None)
        flat[f"latency_p50_ci_lo_ms_b{b}"], flat[f"latency_p50_ci_hi_ms_b{b}"] = lo, hi
        flat[f"latency_cv_b{b}"] = lat["cv"]
        flat[f"throughput_seq_s_b{b}"] = lat["throughput_seq_s"]
        flat[f"noisy_b{b}"] = 1.0 if lat["noisy"] else 0.0
        flat[f"valid_b{b}"] = 1.0 if lat.get("valid", True) else 0.0
        flat[f"iterations_b{b}"] = lat["iterations"]
        if lat.get("p99_upper_ms") is not None:
            flat[f"latency_p99_upper_ms_b{b}"] = lat["p99_upper_ms"]
    for b, sp in _batch_items(record.get("speedup")):
        flat[f"speedup_b{b}"] = sp["ratio"]
        flat[f"speedup_ci_lo_b{b}"], flat[f"speedup_ci_hi_b{b}"] = sp["ci"]
        flat[f"speedup_distinguishable_b{b}"] = 1.0 if sp["distinguishable"] else 0.0
    for b, tc in _batch_items(record.get("timing_check")):
        for k, v in tc.items():
            flat[f"timing_check_{k}_b{b}"] = v
    for b, v in _batch_items(record.get("normalized_p50")):
        flat[f"latency_p50_normalized_b{b}"] = v
    for b, rf in _batch_items(record.get("roofline")):
        for k, v in rf.items():
            flat[f"roofline_{k}_b{b}"] = v
    drift = doc.get("drift") or {}
    if drift.get("ratio") is not None:
        flat["drift_ratio"] = drift["ratio"]
        flat["drift_spread"] = drift["spread"]
    stability = doc.get("stability") or {}  # the whole run's verdict (signflow_zoo.bench.stability), on each of its records
    flat["stability_status"] = str(stability.get("status") or "unknown")
    if stability.get("reference_spread") is not None:
        flat["stability_spread"] = stability["reference_spread"]
    return flat


def flat_records(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [flatten(r, doc) for r in doc.get("records", [])]


def split_flat(flat: dict[str, Any]) -> tuple[dict[str, str], dict[str, float]]:
    params = {k: str(v) for k, v in flat.items() if k in STRING_KEYS}
    metrics = {k: float(v) for k, v in flat.items() if k not in STRING_KEYS and v is not None}
    return params, metrics


def upload(doc: dict[str, Any], path: Path | None, tracker: Tracker, artifacts: Sequence[Path] = ()) -> bool:
    """Log one invocation: a parent run and one child run per record. Idempotent by result_id.

    A run counts as uploaded only once its ``signflow_zoo.complete`` tag is set, which is the last
    call made for it (after its params, metrics and status). A run left behind by an earlier failure
    (created, but cut off before that tag) is deleted and logged again; the parent is reused.
    """
    if not tracker.active:
        return False
    tr = doc.setdefault("tracking", {})
    try:
        parent = _parent_run(doc, tracker)
        tr["parent_run_id"] = parent
        for rec in doc.get("records", []):
            _record_run(doc, rec, parent, tracker)
        if path is not None:
            tracker.call(tracker.client.log_artifact, parent, str(path))
        for a in artifacts:
            if Path(a).is_file():
                tracker.call(tracker.client.log_artifact, parent, str(a))
        tracker.call(tracker.client.set_terminated, parent, "FINISHED")
        tracker.call(tracker.client.set_tag, parent, COMPLETE_TAG, "1")
    except Exception as exc:  # noqa: BLE001 - the store failed: the file stays pending for `sync`
        tracker.disable(f"upload failed: {short_error(exc)}")
    ok = tracker.active
    tr.update({"uri": tracker.uri, "experiment": tracker.experiment, "uploaded": ok})
    if path is not None:
        write_json_atomic(path, doc)
    return ok


def _require(tracker: Tracker) -> None:
    if not tracker.active:
        raise TrackingError(tracker.reason)


def _runs(tracker: Tracker, tag: str, value: str, kind: str) -> list:
    return tracker.call(tracker.client.search_runs, [tracker.experiment_id],
                        filter_string=kind_filter(kind, {tag: value}),
                        max_results=50)


def _parent_run(doc: dict[str, Any], tracker: Tracker) -> str:
    runs = _runs(tracker, INVOCATION_ID_TAG, doc["invocation_id"], KIND_INVOCATION)
    runs.sort(key=lambda r: r.data.tags.get(COMPLETE_TAG) != "1")  # a complete one first
    if runs and runs[0].data.params:
        return runs[0].info.run_id
    if runs:  # created, but cut off before its params: log them now
        parent = runs[0].info.run_id
    else:
        tags = {KIND_TAG: KIND_INVOCATION, INVOCATION_ID_TAG: doc["invocation_id"],
                **doc.get("environment", {})}
        parent = tracker.create_run(f"bench-{doc['created']}", tags)
        _require(tracker)
    tracker.log_batch(parent, params={f"config.{k}": v for k, v in doc.get("config", {}).items()})
    _require(tracker)
    return parent


def _record_run(doc: dict[str, Any], rec: dict[str, Any], parent: str, tracker: Tracker) -> None:
    """One child run, complete: found again by its result_id, or logged (replacing a cut-off one)."""
    runs = _runs(tracker, RESULT_ID_TAG, rec["result_id"], KIND_RECORD)
    done = [r for r in runs if r.data.tags.get(COMPLETE_TAG) == "1"]
    keep = done[0].info.run_id if done else None
    for r in runs:
        if r.info.run_id != keep:  # leftovers of an interrupted upload (and any duplicate): not results
            tracker.call(tracker.client.delete_run, r.info.run_id)
    if done:
        rec["run_id"] = done[0].info.run_id
        return
    env = doc.get("environment", {})
    params, metrics = split_flat(flatten(rec, doc))
    tags = {KIND_TAG: KIND_RECORD, RESULT_ID_TAG: rec["result_id"],
            INVOCATION_ID_TAG: doc["invocation_id"], "preset": rec["preset"],
            "backend": rec["backend"], "host": env.get("host", ""), "status": rec["status"]}
    run_id = tracker.create_run(f"{rec['preset']}/{rec['backend']}", tags, parent_id=parent)
    _require(tracker)
    tracker.log_batch(run_id, params=params, metrics=metrics,
                      tags={f"describe.{k}": v for k, v in (rec.get("describe") or {}).items()})
    _require(tracker)
    tracker.call(tracker.client.set_terminated, run_id, "FINISHED" if rec["status"] in ("ok", "unavailable") else "FAILED")
    tracker.call(tracker.client.set_tag, run_id, COMPLETE_TAG, "1")  # last: only now does it count
    rec["run_id"] = run_id


@dataclass
class SyncReport:
    """What ``sync`` did, file by file."""

    uploaded: list[Path] = field(default_factory=list)
    pending: list[tuple[Path, str]] = field(default_factory=list)  # could not upload now: why
    running: list[Path] = field(default_factory=list)  # a bench is still writing it: left alone
    malformed: list[tuple[Path, str]] = field(default_factory=list)  # unreadable or not a result: why
    interrupted: list[Path] = field(default_factory=list)  # its bench died; what it saved was uploaded

    @property
    def ok(self) -> bool:
        return not self.pending and not self.malformed


def scan_results(results_dir: Path) -> SyncReport:
    """Sort result files into pending (to upload), running (a bench holds its lock) and malformed;
    files already uploaded are left out."""
    rep = SyncReport()
    for p in sorted(Path(results_dir).glob("bench-*.json")):
        if is_locked(p):
            rep.running.append(p)
            continue
        try:
            raw = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            rep.malformed.append((p, f"not a readable JSON file: {exc}"))
            continue
        if isinstance(raw, dict) and (raw.get("tracking") or {}).get("uploaded") is True:
            continue
        try:
            read_result(p)
        except ValueError as exc:
            rep.malformed.append((p, str(exc)))
            continue
        rep.pending.append((p, ""))
    return rep


def pending_files(results_dir: Path) -> list[Path]:
    """Result files to upload: readable, not uploaded yet, and not being written by a running bench."""
    return [p for p, _ in scan_results(results_dir).pending]


def sync(results_dir: Path, experiment: str | None = None) -> SyncReport:
    """Upload every pending result file to the experiment it records (``experiment`` for files that
    record none). A malformed file is reported by name and the others go on."""
    rep = scan_results(results_dir)
    todo, rep.pending = rep.pending, []
    trackers: dict[str, Tracker] = {}
    for p, _ in todo:
        try:
            doc = read_result(p)
        except ValueError as exc:  # changed since the scan
            rep.malformed.append((p, str(exc)))
            continue
        tr = doc.setdefault("tracking", {})
        name = tr.get("experiment") or doc.get("config", {}).get("experiment") or experiment or EXPERIMENT
        tracker = trackers.get(name)
        if tracker is None:  # one attempt per store and experiment: a store that is down costs one probe
            tracker = trackers[name] = Tracker(name, quiet=True)
        if not tracker.active:
            rep.pending.append((p, tracker.reason))
            continue
        died = tr.pop("in_progress", None)
        if died:
            tr["interrupted"] = died
        with exclusive(p, blocking=False) as held:  # a bench that started on this file after the scan
            if not held:
                rep.running.append(p)
                continue
            if upload(doc, p, tracker):
                rep.uploaded.append(p)
                if died:
                    rep.interrupted.append(p)
            else:
                rep.pending.append((p, tracker.reason))
            lock_path(p).unlink(missing_ok=True)  # ours, and its bench is gone: no stray lock files
    return rep
