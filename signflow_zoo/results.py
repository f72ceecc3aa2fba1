"""Bench results as local JSON (written before any tracking call) and their upload to MLflow.

One file per invocation under ``$SIGNFLOW_ZOO_HOME/results/``, schema in :mod:`signflow_zoo.records`;
:func:`write_result` is the one place that writes it (atomically: a temp file, then a rename).
``sync`` uploads files whose ``tracking.uploaded`` is false; runs are found again by their
``signflow_zoo.result_id`` tag, so a repeated sync never duplicates them. Files of the previous schema
are read, upgraded and uploaded the same way.

:func:`flatten` turns one record into the flat key/value form that MLflow params and metrics hold and
that ``report`` reads back (see :mod:`signflow_zoo.report` for the conventions).
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .mlflow_store import (EXPERIMENT, INVOCATION_ID_TAG, KIND_INVOCATION, KIND_RECORD, KIND_TAG, RESULT_ID_TAG,
                           kind_filter)
from .records import SCHEMA, SCHEMA_V1, BenchDocument
from .tracking import Tracker

STRING_KEYS = ("preset", "backend", "plugin", "provider", "precision", "status", "reason", "host", "cpu", "gpu",
               "threads", "batch_sizes", "exporter", "opset", "artifact_sha256", "invocation_id", "result_id", "created",
               "schedule", "data_split", "data")


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json_atomic(path: Path, doc: dict[str, Any]) -> Path:
    """Write ``doc`` as JSON through a uniquely named temp file and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=1, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


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
        "artifact_sha256": p.get("artifact_sha256", ""), "host": env.get("host", ""), "cpu": env.get("cpu", ""),
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
    return flat


def flat_records(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [flatten(r, doc) for r in doc.get("records", [])]


def split_flat(flat: dict[str, Any]) -> tuple[dict[str, str], dict[str, float]]:
    params = {k: str(v) for k, v in flat.items() if k in STRING_KEYS}
    metrics = {k: float(v) for k, v in flat.items() if k not in STRING_KEYS and v is not None}
    return params, metrics


def upload(doc: dict[str, Any], path: Path | None, tracker: Tracker, artifacts: list[Path] = ()) -> bool:
    """Log one invocation: a parent run and one child run per record. Idempotent by result_id."""
    if not tracker.active:
        return False
    client = tracker.client
    env = doc.get("environment", {})
    tr = doc.setdefault("tracking", {})
    parent = tr.get("parent_run_id") or _find_run(tracker, INVOCATION_ID_TAG, doc["invocation_id"], KIND_INVOCATION)
    if not parent:
        tags = {KIND_TAG: KIND_INVOCATION, INVOCATION_ID_TAG: doc["invocation_id"],
                **{k: v for k, v in env.items()}}
        parent = tracker.create_run(f"bench-{doc['created']}", tags)
        cfg = doc.get("config", {})
        tracker.log_batch(parent, params={f"config.{k}": v for k, v in cfg.items()})
    if not parent:
        return False
    tr["parent_run_id"] = parent
    for rec in doc.get("records", []):
        if rec.get("run_id"):
            continue
        existing = _find_run(tracker, RESULT_ID_TAG, rec["result_id"], KIND_RECORD)
        if existing:
            rec["run_id"] = existing
            continue
        flat = flatten(rec, doc)
        params, metrics = split_flat(flat)
        tags = {KIND_TAG: KIND_RECORD, RESULT_ID_TAG: rec["result_id"],
                INVOCATION_ID_TAG: doc["invocation_id"], "preset": rec["preset"],
                "backend": rec["backend"], "host": env.get("host", ""), "status": rec["status"]}
        run_id = tracker.create_run(f"{rec['preset']}/{rec['backend']}", tags, parent_id=parent)
        if not run_id:
            return False
        tracker.log_batch(run_id, params=params, metrics=metrics,
                          tags={f"describe.{k}": v for k, v in (rec.get("describe") or {}).items()})
        tracker.end_run(run_id, "FINISHED" if rec["status"] in ("ok", "unavailable") else "FAILED")
        if not tracker.active:
            return False
        rec["run_id"] = run_id
    if path is not None:
        tracker.log_artifact(parent, str(path))
    for a in artifacts:
        if Path(a).is_file():
            tracker.log_artifact(parent, str(a))
    tracker.end_run(parent, "FINISHED")
    ok = tracker.active
    tr.update({"uri": getattr(tracker, "uri", ""), "experiment": tracker.experiment, "uploaded": ok})
    if path is not None:
        write_json_atomic(path, doc)
    return ok


def _find_run(tracker: Tracker, tag: str, value: str, kind: str) -> str | None:
    try:
        runs = tracker.client.search_runs(
            [tracker.experiment_id], filter_string=kind_filter(kind, {tag: value}), max_results=1)
    except Exception:  # noqa: BLE001
        return None
    return runs[0].info.run_id if runs else None


def pending_files(results_dir: Path) -> list[Path]:
    out = []
    for p in sorted(results_dir.glob("bench-*.json")):
        try:
            doc = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if doc.get("schema") in (SCHEMA, SCHEMA_V1) and not doc.get("tracking", {}).get("uploaded"):
            out.append(p)
    return out


def sync(results_dir: Path, experiment: str = EXPERIMENT) -> tuple[int, int, str]:
    """Upload every pending result file. Returns (uploaded, still pending, reason if tracking failed)."""
    files = pending_files(results_dir)
    if not files:
        return 0, 0, ""
    tracker = Tracker(experiment, quiet=True)
    if not tracker.active:
        return 0, len(files), tracker.reason
    done = 0
    for p in files:
        doc = read_result(p)
        if upload(doc, p, tracker):
            done += 1
    return done, len(files) - done, "" if tracker.active else tracker.reason
