"""Bench results as local JSON (written before any tracking call) and their upload to MLflow.

One file per invocation under ``$SIGNFLOW_ZOO_HOME/results/``, schema in :mod:`signflow_zoo.results.records`;
:func:`write_result` is the one place that writes it (atomically: a temp file flushed to disk, then a rename).
``sync`` uploads files not uploaded yet to the current store (``tracking.uploads`` records each store a file
went to, by :func:`~signflow_zoo.results.tracking.store_key`; a file of an older version says
``tracking.uploaded`` and ``tracking.uri``), each to the experiment it records; runs
are found again by their ``signflow_zoo.result_id`` tag and count only once their
``signflow_zoo.complete`` tag is set (the last call), so a repeated sync never duplicates them and an
interrupted upload is replaced, not kept half-done. A file whose bench is still running (it holds
``<file>.lock``) is left alone; a malformed file (unreadable, nested too deep, of the wrong shape) is named
with its reason and skipped, and so is a file whose upload the store refuses while it answers: every file
is handled on its own. Files of the previous schema are read, upgraded and uploaded the same way.

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
from signflow_zoo.common.documents import DocumentError, loads_json
from signflow_zoo.common.errors import TrackingError
from signflow_zoo.results.store import (CLUSTER_RUN_TAG, COMPLETE_TAG, EXPERIMENT, INVOCATION_ID_TAG, KIND_INVOCATION,
                                       KIND_RECORD, KIND_TAG, PARENT_TAG, RESULT_ID_TAG, kind_filter)
from signflow_zoo.results.records import BenchDocument
from signflow_zoo.results.tracking import Tracker, short_error, store_key, tracking_uri

STRING_KEYS = ("preset", "backend", "plugin", "provider", "precision", "status", "reason", "host", "host_class", "cpu", "gpu",
               "threads", "batch_sizes", "exporter", "opset", "artifact_sha256", "invocation_id", "result_id", "created",
               "schedule", "data_split", "data", "stability_status", "model_file", "model_sha256", "model_kind",
               "model_preset", "reference", "labels_file", "effective_precision", "effective_device",
               "worst_signer", "deployment_errors")


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
    """A result file of any readable schema, as a schema-2 dict; ``ValueError`` naming the problem otherwise
    (also for a file nested deeper than :data:`signflow_zoo.common.documents.MAX_DEPTH` or of the wrong shape)."""
    return _upgrade(_load(Path(path)))


def _load(path: Path) -> Any:
    """The parsed JSON of ``path``; ``ValueError`` (never a ``RecursionError``) naming the problem otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"not a readable JSON file: {exc}") from None
    try:
        return loads_json(data, path.name)
    except DocumentError as exc:
        raise ValueError(f"not a readable JSON file: {str(exc).removeprefix(path.name + ': ')}") from None


_OBJECT_KEYS = ("environment", "config", "tracking", "drift", "stability", "ceilings")
_RECORD_OBJECT_KEYS = ("params", "latency", "latency_errors", "timing_check", "speedup", "normalized_p50", "roofline",
                       "samples", "accuracy", "parity", "memory", "stream", "describe", "training", "calibration",
                       "capacity", "server", "offline", "cold_start", "effective_precision")


def _not_object(where: str, value: Any) -> ValueError:
    shown = repr(value)
    return ValueError(f"{where} is {type(value).__name__} {shown[:40]}{'...' if len(shown) > 40 else ''}, "
                      "not an object")


def _check_shape(raw: Any) -> None:
    """``ValueError`` naming the first part of a result that is not the kind of JSON value the schema says."""
    if not isinstance(raw, dict):
        raise ValueError("not a bench result (the JSON is not an object)")
    for key in _OBJECT_KEYS:
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise _not_object(repr(key), raw[key])
    records = raw.get("records")
    if records is not None and not isinstance(records, list):
        raise ValueError(f"'records' is {type(records).__name__}, not a list")
    for i, rec in enumerate(records or []):
        if not isinstance(rec, dict):
            raise _not_object(f"records[{i}]", rec)
        for key in _RECORD_OBJECT_KEYS:
            if rec.get(key) and not isinstance(rec[key], dict):
                raise _not_object(f"records[{i}].{key}", rec[key])


def _upgrade(raw: Any) -> dict[str, Any]:
    """A parsed result file as a schema-2 dict whose records flatten; ``ValueError`` naming the problem otherwise."""
    _check_shape(raw)
    try:
        doc = BenchDocument.from_dict(raw).to_dict()
        for rec in doc["records"]:
            split_flat(flatten(rec, doc))  # what upload and report will do: fail now, naming the file
    except ValueError:
        raise
    except (KeyError, TypeError, AttributeError, IndexError, ZeroDivisionError, OverflowError, RecursionError) as exc:
        raise ValueError(f"malformed bench result: {type(exc).__name__}: {exc}") from None
    return doc


def _batch_items(d: dict[str, Any] | None):
    return sorted(((int(b), v) for b, v in (d or {}).items()), key=lambda kv: kv[0])


_DEPLOYMENT_KEYS = {
    "capacity": ("streams", "p50_ms", "p99_ms", "miss_rate", "deadline_ms", "fps", "busy", "max_batch_wait_ms",
                 "mean_batch"),
    "server": ("qps", "p50_ms", "p99_ms", "bound_ms", "service_ms", "max_qps", "valid"),
    "offline": ("seq_per_s", "batch"),
    "cold_start": ("load_ms", "prepare_ms", "first_call_ms", "total_ms"),
}


def _deployment(record: dict[str, Any]) -> dict[str, Any]:
    """The deployment scenarios' numbers (``capacity_streams``, ``capacity_batched_streams``, ``server_qps``, ...)
    and, under ``deployment_errors``, the error of each scenario that did not run."""
    flat: dict[str, Any] = {}
    errors = []
    sections = [(name, record.get(name)) for name in _DEPLOYMENT_KEYS]
    batched = (record.get("capacity") or {}).get("batched") if isinstance(record.get("capacity"), dict) else None
    sections.append(("capacity_batched", batched))
    for name, sec in sections:
        if not isinstance(sec, dict) or not sec:
            continue
        if sec.get("error"):
            errors.append(f"{name.replace('_', '-')}: {sec['error']}")
        for k in _DEPLOYMENT_KEYS[name.replace("_batched", "")]:
            v = sec.get(k)
            if isinstance(v, bool):
                v = 1.0 if v else 0.0
            if isinstance(v, (int, float)):
                flat[f"{name}_{k}"] = v
    if errors:
        flat["deployment_errors"] = "; ".join(errors)
    return flat


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
    for k in ("model_file", "model_sha256", "model_kind", "model_preset", "reference", "labels_file"):  # bench --model
        if p.get(k) not in (None, ""):
            flat[k] = str(p[k])
    tr = record.get("training") or {}
    if tr.get("train_seconds") is not None:
        flat["train_seconds"] = tr["train_seconds"]
    if tr.get("val_accuracy") is not None:
        flat["train_val_accuracy"] = tr["val_accuracy"]
    cal = record.get("calibration") or {}
    # ece_*/nll_* are measured on the held-out part of the validation set when eval_size is recorded (a checkpoint
    # calibrated before that measured ECE on the clips the temperature was fitted on, and has no eval_size)
    for k in ("temperature", "ece_before", "ece_after", "nll_before", "nll_after", "fitted_temperature", "fit_size",
              "eval_size"):
        if cal.get(k) is not None:
            flat[f"calibration_{k}"] = cal[k]
    if cal.get("temperature_kept") is not None:
        flat["calibration_temperature_kept"] = 1.0 if cal["temperature_kept"] else 0.0
    acc = record.get("accuracy") or {}
    for k in ("top1", "top5", "macro_f1"):
        if acc.get(k) is not None:
            flat[f"accuracy_{k}"] = acc[k]
    if acc.get("top1_ci"):
        flat["accuracy_top1_ci_lo"], flat["accuracy_top1_ci_hi"] = acc["top1_ci"]
    # per held-out signer: the worst signer and a top-1 interval bootstrapped over signers (none with one signer)
    if acc.get("per_signer"):
        flat["accuracy_signers"] = len(acc["per_signer"])
    if acc.get("worst_signer_top1") is not None:
        flat["accuracy_worst_signer_top1"] = acc["worst_signer_top1"]
        flat["worst_signer"] = str(acc.get("worst_signer") or "")
    if acc.get("top1_signer_ci"):
        flat["accuracy_top1_signer_ci_lo"], flat["accuracy_top1_signer_ci_hi"] = acc["top1_signer_ci"]
    if acc.get("agreement_top1") is not None:
        flat["agreement_top1"] = acc["agreement_top1"]
    par = record.get("parity") or {}
    if par:
        flat["parity_max_abs"] = par.get("max_abs")
        flat["parity_max_rel"] = par.get("max_rel")
        flat["parity_top1_agreement"] = par.get("top1_agreement")
        flat["parity_ok"] = 1.0 if par.get("ok") else 0.0
    eff = record.get("effective_precision") or {}
    if eff:  # what really ran (Runner.effective_precision), beside the declared ``precision``
        flat["effective_precision"] = str(eff.get("precision") or "")
        flat["effective_device"] = str(eff.get("device") or "")
        flat["precision_mismatch"] = 1.0 if eff.get("mismatch") else 0.0
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
    flat.update(_deployment(record))
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
    """``(params, metrics)`` of a flat record; a value that should be a number and is not is left out."""
    params = {k: str(v) for k, v in flat.items() if k in STRING_KEYS}
    metrics = {}
    for k, v in flat.items():
        if k in STRING_KEYS or v is None or isinstance(v, (dict, list)):
            continue
        try:
            metrics[k] = float(v)
        except (TypeError, ValueError, OverflowError):
            continue
    return params, metrics


def upload(doc: dict[str, Any], path: Path | None, tracker: Tracker, artifacts: Sequence[Path] = ()) -> bool:
    """Log one invocation: a parent run and one child run per record. Idempotent by result_id.

    A run counts as uploaded only once its ``signflow_zoo.complete`` tag is set, which is the last
    call made for it (after its params, metrics and status). A run left behind by an earlier failure
    (created, but cut off before that tag) is deleted and logged again; the parent is reused.
    """
    if not tracker.active:
        return False
    tr = doc.get("tracking")
    if not isinstance(tr, dict):
        tr = doc["tracking"] = {}
    uploads = tr.get("uploads")
    if not isinstance(uploads, dict):
        uploads = {}
    if tr.get("uploaded") is True and isinstance(tr.get("uri"), str) and tr["uri"]:  # a file of an older version:
        uploads.setdefault(store_key(tr["uri"]), {"uri": tr["uri"], "experiment": tr.get("experiment"),  # keep its store
                                                  "parent_run_id": tr.get("parent_run_id")})
    parent = None
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
    if ok:  # each store it went to: a sync to another store uploads it there too
        uploads[tracker.store] = {"uri": tracker.uri, "experiment": tracker.experiment, "parent_run_id": parent,
                                  "at": now_iso()}
    if uploads:
        tr["uploads"] = uploads
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
                **doc.get("environment", {}), **_cluster_tags(doc)}
        cluster = _cluster_tags(doc).get(CLUSTER_RUN_TAG)
        if cluster:  # nested under the cluster run in the MLflow UI
            tags[PARENT_TAG] = cluster
        parent = tracker.create_run(f"bench-{doc['created']}", tags)
        _require(tracker)
    tracker.log_batch(parent, params={f"config.{k}": v for k, v in doc.get("config", {}).items()})
    _require(tracker)
    return parent


def _cluster_tags(doc: dict[str, Any]) -> dict[str, str]:
    """The tag linking a node's runs to their cluster run (``bench --cluster``; ``tracking.cluster.run_id``)."""
    cluster = (doc.get("tracking") or {}).get("cluster")
    run_id = cluster.get("run_id") if isinstance(cluster, dict) else None
    return {CLUSTER_RUN_TAG: run_id} if isinstance(run_id, str) and run_id else {}


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
            "backend": rec["backend"], "host": env.get("host", ""), "status": rec["status"], **_cluster_tags(doc)}
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


def current_store() -> str:
    """The store ``sync`` would upload to now (:func:`~signflow_zoo.results.tracking.store_key` of it)."""
    uri = tracking_uri()
    return store_key(uri) if uri else ""


def uploaded_to(tracking: Any, store: str) -> bool:
    """Whether a file's ``tracking`` says it was uploaded to ``store``. A file of an older version records one
    ``uri`` with ``uploaded``: it counts for that store (for any store when it records none, or when the store
    is unknown)."""
    if not isinstance(tracking, dict):
        return False
    uploads = tracking.get("uploads")
    if isinstance(uploads, dict) and store in uploads:
        return True
    if tracking.get("uploaded") is not True:
        return False
    uri = tracking.get("uri")
    if not store or not isinstance(uri, str) or not uri:
        return True
    return store_key(uri) == store


def scan_results(results_dir: Path, store: str | None = None) -> SyncReport:
    """Sort result files into pending (to upload), running (a bench holds its lock) and malformed;
    files already uploaded to ``store`` (default: :func:`current_store`) are left out."""
    store = current_store() if store is None else store
    rep = SyncReport()
    for p in sorted(Path(results_dir).glob("bench-*.json")):
        if is_locked(p):
            rep.running.append(p)
            continue
        try:
            raw = _load(p)
            if isinstance(raw, dict) and uploaded_to(raw.get("tracking"), store):
                continue
            _upgrade(raw)
        except Exception as exc:  # noqa: BLE001 - ValueError naming the problem; anything else is named too
            rep.malformed.append((p, str(exc) if isinstance(exc, ValueError) else _why(exc)))
            continue
        rep.pending.append((p, ""))
    return rep


def pending_files(results_dir: Path) -> list[Path]:
    """Result files to upload: readable, not uploaded yet, and not being written by a running bench."""
    return [p for p, _ in scan_results(results_dir).pending]


def _why(exc: BaseException) -> str:
    return f"could not be handled ({short_error(exc)})"


def sync(results_dir: Path, experiment: str | None = None) -> SyncReport:
    """Upload every pending result file to the experiment it records (``experiment`` for files that
    record none), on the current store.

    Every file is handled on its own, and nothing one file holds stops the others:

    * a file that cannot be read, is nested too deeply, or has the wrong shape is in ``malformed`` with
      its reason, and so is any other exception raised while handling it;
    * a file whose upload the store refuses while it still answers (probed once after the failure) is in
      ``malformed`` with the store's reason, and the files after it are uploaded; keys and values are made
      acceptable to MLflow before they are sent (see :func:`signflow_zoo.results.tracking.mlflow_entries`),
      so this is rare;
    * a store that is down, or whose lock another process holds (for longer than the store's lock timeout,
      or while stopped), costs one probe: every file left is in ``pending`` with the reason.
    """
    store = current_store()
    rep = scan_results(results_dir, store)
    todo, rep.pending = rep.pending, []
    state = _SyncState(experiment)
    for p, _ in todo:
        try:
            state.sync_file(p, rep)
        except Exception as exc:  # noqa: BLE001 - one file's problem, whatever it is, is that file's reason
            rep.malformed.append((p, _why(exc)))
    return rep


class _SyncState:
    """The trackers of one sync (one per experiment) and what is known of the store."""

    def __init__(self, experiment: str | None):
        self.experiment = experiment
        self.trackers: dict[str, Tracker] = {}
        self.down = ""  # why the store cannot be used, once that is known: no more probes

    def tracker(self, name: str) -> Tracker:
        tracker = self.trackers.get(name)
        if tracker is None:
            tracker = self.trackers[name] = Tracker(name, quiet=True)
            if not tracker.active and tracker.store_down:
                self.down = tracker.reason
        return tracker

    def sync_file(self, p: Path, rep: SyncReport) -> None:
        try:
            doc = read_result(p)
        except ValueError as exc:  # changed since the scan
            rep.malformed.append((p, str(exc)))
            return
        tr = doc["tracking"]
        name = str(tr.get("experiment") or doc["config"].get("experiment") or self.experiment or EXPERIMENT)
        if self.down:
            rep.pending.append((p, self.down))
            return
        tracker = self.tracker(name)
        if not tracker.active:
            if tracker.store_down:
                rep.pending.append((p, tracker.reason))
            else:  # the store answers, but not for this experiment (a bad name, a deleted experiment)
                rep.malformed.append((p, f"the tracking store refused experiment {name[:80]!r}: {tracker.reason}"))
            return
        died = tr.pop("in_progress", None)
        if died:
            tr["interrupted"] = died
        with exclusive(p, blocking=False) as held:  # a bench that started on this file after the scan
            if not held:
                rep.running.append(p)
                return
            try:
                if upload(doc, p, tracker):
                    rep.uploaded.append(p)
                    if died:
                        rep.interrupted.append(p)
                    return
                why = tracker.reason
                if tracker.resume():  # the store answers: it refused this file's data, the next files go on
                    rep.malformed.append((p, f"the tracking store refused it ({why})"))
                else:
                    self.down = why
                    rep.pending.append((p, why))
            finally:
                lock_path(p).unlink(missing_ok=True)  # ours, and its bench is gone: no stray lock files
