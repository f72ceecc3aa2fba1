"""Bench results as local JSON (written before any tracking call) and their upload to MLflow.

Schema ``signflow-zoo/bench/1`` -- one file per invocation::

    {"schema", "invocation_id", "created", "environment": {...}, "config": {...},
     "records": [ {"result_id", "preset", "backend", "status", "reason", "plugin", "params": {...},
                   "latency": {"<batch>": {p50_ms, p90_ms, p99_ms, mean_ms, stdev_ms, cv, throughput_seq_s,
                                            noisy, iterations, ...}},
                   "accuracy": {top1, top5, macro_f1, agreement_top1}, "parity": {...}, "memory_mb",
                   "stream": {...}, "describe": {...}, "training": {...}, "run_id"} ],
     "tracking": {"uri", "experiment", "parent_run_id", "uploaded"}}

``status`` is one of ``ok``, ``unavailable`` (with the reason), ``failed`` (with the error) and
``parity-failed`` (measured, but outside the precision's tolerance). ``sync`` uploads files whose
``tracking.uploaded`` is false; runs are found again by their ``signflow_zoo.result_id`` tag, so a
repeated sync never duplicates them.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .tracking import Tracker

SCHEMA = "signflow-zoo/bench/1"
EXPERIMENT = "signflow-zoo"
STRING_KEYS = ("preset", "backend", "plugin", "provider", "precision", "status", "reason", "host", "cpu", "gpu",
               "threads", "batch_sizes", "exporter", "opset", "artifact_sha256", "invocation_id", "result_id", "created")


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json_atomic(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp, path)
    return path


def flatten(record: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """The flat record (the keys of MLflow params/metrics) that tables and plots read."""
    env = doc.get("environment", {})
    p = record.get("params", {})
    flat: dict[str, Any] = {
        "preset": record["preset"], "backend": record["backend"], "status": record["status"],
        "reason": record.get("reason", ""), "plugin": record.get("plugin", ""),
        "provider": p.get("provider", ""), "precision": p.get("precision", ""), "threads": str(p.get("threads", "")),
        "batch_sizes": ",".join(str(b) for b in doc.get("config", {}).get("batch_sizes", [])),
        "exporter": p.get("exporter", ""), "opset": str(p.get("opset", "")),
        "artifact_sha256": p.get("artifact_sha256", ""), "host": env.get("host", ""), "cpu": env.get("cpu", ""),
        "gpu": env.get("gpu", ""), "invocation_id": doc.get("invocation_id", ""), "result_id": record["result_id"],
        "created": doc.get("created", ""),
    }
    for k in ("num_params", "gflops", "d_model", "heads", "layers", "dim_ff"):
        if p.get(k) is not None:
            flat[k] = p[k]
    tr = record.get("training") or {}
    if tr.get("train_seconds") is not None:
        flat["train_seconds"] = tr["train_seconds"]
    if tr.get("val_accuracy") is not None:
        flat["train_val_accuracy"] = tr["val_accuracy"]
    acc = record.get("accuracy") or {}
    for k in ("top1", "top5", "macro_f1"):
        if k in acc:
            flat[f"accuracy_{k}"] = acc[k]
    if "agreement_top1" in acc:
        flat["agreement_top1"] = acc["agreement_top1"]
    par = record.get("parity") or {}
    if par:
        flat["parity_max_abs"] = par.get("max_abs")
        flat["parity_max_rel"] = par.get("max_rel")
        flat["parity_top1_agreement"] = par.get("top1_agreement")
        flat["parity_ok"] = 1.0 if par.get("ok") else 0.0
    if record.get("memory_mb") is not None:
        flat["memory_mb"] = record["memory_mb"]
    st = (record.get("stream") or {}).get("latency_ms") or {}
    for k in ("p50_ms", "p99_ms"):
        if st.get(k) is not None:
            flat[f"stream_latency_{k}"] = st[k]
    for b, lat in (record.get("latency") or {}).items():
        for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms"):
            flat[f"latency_{k}_b{b}"] = lat[k]
        flat[f"latency_cv_b{b}"] = lat["cv"]
        flat[f"throughput_seq_s_b{b}"] = lat["throughput_seq_s"]
        flat[f"noisy_b{b}"] = 1.0 if lat["noisy"] else 0.0
        flat[f"iterations_b{b}"] = lat["iterations"]
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
    parent = tr.get("parent_run_id") or _find_run(tracker, "signflow_zoo.invocation_id", doc["invocation_id"], "bench-invocation")
    if not parent:
        tags = {"signflow_zoo.kind": "bench-invocation", "signflow_zoo.invocation_id": doc["invocation_id"],
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
        existing = _find_run(tracker, "signflow_zoo.result_id", rec["result_id"], "bench-record")
        if existing:
            rec["run_id"] = existing
            continue
        flat = flatten(rec, doc)
        params, metrics = split_flat(flat)
        tags = {"signflow_zoo.kind": "bench-record", "signflow_zoo.result_id": rec["result_id"],
                "signflow_zoo.invocation_id": doc["invocation_id"], "preset": rec["preset"],
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
            [tracker.experiment_id], filter_string=f"tags.`{tag}` = '{value}' and tags.`signflow_zoo.kind` = '{kind}'",
            max_results=1)
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
        if doc.get("schema") == SCHEMA and not doc.get("tracking", {}).get("uploaded"):
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
        doc = json.loads(p.read_text())
        if upload(doc, p, tracker):
            done += 1
    return done, len(files) - done, "" if tracker.active else tracker.reason
