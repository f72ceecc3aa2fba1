"""The zoo's trained weights in the MLflow Model Registry: trained once, pulled by every other host.

Cross-host comparisons only mean something when every host measures the same weights. After a bench
(or ``train``) trains a checkpoint, its file and its ONNX export are logged as artifacts of a run in
experiment ``signflow-training`` and registered as a version of ``signflow-zoo-<preset>`` (alias
``latest-trained``), tagged with the zoo cache key (preset config, classes, data fingerprint, training
config, feature and model version), its parts, and the sha256 of every file. A bench elsewhere that misses the
checkpoint in its own cache asks the registry for a version with the same cache key and pulls it into
its cache, at the path :func:`signflow_zoo.backends.artifacts.checkpoint_path` expects (and the ONNX export
next to it when it came from the same exporter), instead of training again. Every pulled file is
checked against its registered sha256; a mismatch is an error naming the file. The ``checkpoint_file`` tag
of a version must be a plain file name of its run's files (no folder, not absolute, no ``..``), and a pulled
file must not be a symbolic link: anything else is an error naming the tag (or file) and the version, raised
before anything is moved, so a tag can never move a file from elsewhere into the cache.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

from signflow_zoo.backends.artifacts import artifact_folder
from signflow_zoo.common.cachefiles import atomic_write_text, exclusive
from signflow_zoo.common.documents import DocumentError, loads_json
from signflow_zoo.common.errors import ModelFileError
from signflow_zoo.model.export import OPSET, file_sha256
from signflow_zoo.results.tracking import Tracker

REGISTRY_EXPERIMENT = "signflow-training"
ALIAS = "latest-trained"
KEY_TAG = "signflow_zoo.cache_key"
WEIGHTS = "weights"  # artifact folder of the registering run


def model_name(preset: str) -> str:
    return f"signflow-zoo-{preset}"


def cache_key_of(checkpoint: Path, preset: str) -> str:
    """The key part of a cache file name ``<preset>-<key>.pt``."""
    stem = Path(checkpoint).stem
    return stem[len(preset) + 1:] if stem.startswith(preset + "-") else stem


def registry_tracker() -> Tracker:
    return Tracker(REGISTRY_EXPERIMENT, quiet=True)


def find_version(tracker: Tracker, preset: str, key: str):
    """The newest registered version of ``preset`` whose cache key is ``key``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        versions = tracker.call(tracker.client.search_model_versions, f"name = '{model_name(preset)}'")
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code):
            return None
        raise
    matching = [v for v in versions if (v.tags or {}).get(KEY_TAG) == key]
    return max(matching, key=lambda v: int(v.version), default=None)


def register(tracker: Tracker, checkpoint: Path, arts, meta: dict[str, Any], log: Callable[[str], None]) -> str:
    """Log the checkpoint and its ONNX export as artifacts of a run and register them as a new version.

    ``arts`` are the checkpoint's built artifacts (:func:`signflow_zoo.backends.artifacts.build_artifacts`).
    Returns ``"<model name> version <n>"``; raises when the store fails (the caller warns and goes on).
    """
    from signflow_zoo.common.environment import host_name

    preset = meta.get("preset") or arts.preset
    name, key = model_name(preset), cache_key_of(checkpoint, preset)
    export = arts.info.get("export", {})
    tags = {
        KEY_TAG: key, "preset": preset, "data_fingerprint": meta.get("data_fingerprint", ""),
        "training_config": json.dumps(meta.get("training", {}), sort_keys=True),
        "feature_version": str(meta.get("feature_version", "")), "model_version": str(meta.get("model_version", "")),
        "checkpoint_format": meta.get("format", ""),
        "checkpoint_file": Path(checkpoint).name, "checkpoint_sha256": arts.hashes["torch"],
        "onnx_sha256": arts.hashes["onnx"], "exporter": export.get("exporter", ""),
        "opset": str(export.get("opset", OPSET)), "trained_on": host_name(),
    }
    run_id = tracker.create_run(f"weights-{preset}", {"signflow_zoo.kind": "registered-weights", **tags})
    if run_id is None:
        raise RuntimeError(tracker.reason)
    client = tracker.client
    tracker.call(client.log_artifact, run_id, str(checkpoint), WEIGHTS)
    tracker.call(client.log_artifact, run_id, str(arts.onnx), f"{WEIGHTS}/onnx")
    tracker.call(client.log_artifact, run_id, str(arts.workdir / "info.json"), f"{WEIGHTS}/onnx")
    tracker.call(client.set_terminated, run_id, "FINISHED")
    try:
        tracker.call(client.create_registered_model, name,
                     description=f"signflow-zoo preset {preset}: weights-only checkpoint and its ONNX export")
    except Exception as exc:  # noqa: BLE001 - it exists already (or another host created it just now)
        if "RESOURCE_ALREADY_EXISTS" not in str(getattr(exc, "error_code", "")) and "already exists" not in str(exc):
            raise
    mv = tracker.call(client.create_model_version, name, f"runs:/{run_id}/{WEIGHTS}", run_id=run_id, tags=tags)
    tracker.call(client.set_registered_model_alias, name, ALIAS, mv.version)
    log(f"{preset}: registered the weights as {name} version {mv.version} (alias {ALIAS}) in the MLflow Model Registry")
    return f"{name} version {mv.version}"


def register_checkpoint(checkpoint: Path, exporter: str, home: Path, log: Callable[[str], None],
                        tracker: Tracker | None = None) -> str | None:
    """Export (cached) and register freshly trained weights; never fatal: returns None with a warning
    in the log when the store is unavailable or fails, and the caller goes on with its local copy."""
    from signflow_zoo.backends.artifacts import build_artifacts
    from signflow_zoo.model.checkpoint import read_checkpoint
    from signflow_zoo.results.tracking import redact

    tracker = tracker or registry_tracker()
    if not tracker.active:
        log(f"note: weights not registered: tracking store unavailable ({tracker.reason})")
        return None
    arts = build_artifacts(checkpoint, exporter=exporter, home=home, log=log)
    try:
        return register(tracker, checkpoint, arts, read_checkpoint(checkpoint)[1], log)
    except Exception as exc:  # noqa: BLE001
        log(f"warning: registering the weights failed ({redact(str(exc))}); other hosts will train their own")
        return None


def pull(tracker: Tracker, preset: str, checkpoint: Path, exporter: str, home: Path,
         log: Callable[[str], None]) -> str | None:
    """Fetch the registered weights whose cache key matches ``checkpoint`` into the local cache.

    Returns ``"<model name> version <n>"``, or None when no registered version matches. The checkpoint
    lands at ``checkpoint``; the ONNX export (when made by ``exporter``) in the artifact folder that
    :func:`signflow_zoo.backends.artifacts.build_artifacts` reuses. Raises :class:`ModelFileError` naming the file
    when a download does not match its registered sha256.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    version = find_version(tracker, preset, cache_key_of(checkpoint, preset))
    if version is None:
        return None
    label = f"{model_name(preset)} version {version.version}"
    tags = version.tags or {}
    name = plain_file_name(tags.get("checkpoint_file", checkpoint.name), "checkpoint_file", label)  # before any download
    staging = home / f".registry-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir(parents=True)
        got = Path(tracker.call(tracker.client.download_artifacts, version.run_id, WEIGHTS, str(staging)))
        ckpt = _checked(_inside(got, name, label), tags.get("checkpoint_sha256"), label)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        os.replace(ckpt, checkpoint)
        if tags.get("exporter") == exporter and tags.get("opset") == str(OPSET):
            _place_onnx(got / "onnx", tags, file_sha256(checkpoint), exporter, home, label)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"{preset}: pulled {label} from the MLflow Model Registry (sha256 {tags.get('checkpoint_sha256', '')[:12]}, "
        f"trained on {tags.get('trained_on', '?')}) -> {checkpoint}")
    return label


def plain_file_name(name: object, tag: str, label: str) -> str:
    """``name`` when it is a plain file name (no folder, not absolute, not ``.``/``..``): a registry tag names a
    file of the registered run's artifact folder, never a path elsewhere. :class:`ModelFileError` naming the tag
    and the version otherwise (raised before anything is downloaded or moved)."""
    text = name if isinstance(name, str) else ""
    if (not text.strip() or text in (".", "..") or "/" in text or "\\" in text or "\0" in text
            or os.path.isabs(text) or os.path.basename(text) != text):
        raise ModelFileError(f"{label}: tag {tag}={name!r} is not a plain file name (it must name a file of the "
                             "registered run, without folders); nothing was pulled: register the weights again or "
                             f"fix the tag")
    return text


def _inside(folder: Path, name: str, label: str) -> Path:
    """``folder / name``, refused when it is a symbolic link (which could lead out of the downloaded files)."""
    path = folder / name
    real_folder, real = os.path.realpath(folder), os.path.realpath(path)
    if path.is_symlink() or os.path.commonpath([real_folder, real]) != real_folder:
        raise ModelFileError(f"{label}: the registered file {name} is a symbolic link or lies outside the run's "
                             "files; nothing was pulled: register the weights again")
    return path


def _checked(path: Path, want: str | None, label: str) -> Path:
    if not path.is_file():
        raise ModelFileError(f"{label}: the registered run has no file {path.name}; register the weights again")
    got = file_sha256(path)
    if not want or got != want:
        raise ModelFileError(
            f"{path.name} from {label}: sha256 {got} does not match the registered {want or '(none)'}; "
            "the registered file is corrupt or was replaced: register the weights again (bench --retrain)"
        )
    return path


def _place_onnx(folder: Path, tags: dict[str, str], ckpt_sha: str, exporter: str, home: Path, label: str) -> None:
    """Put the registered export where build_artifacts finds and reuses it (same hash, its own record)."""
    onnx = _checked(_inside(folder, "model.onnx", label), tags.get("onnx_sha256"), label)
    try:
        info = loads_json(_inside(folder, "info.json", label).read_bytes(), f"info.json from {label}")
    except DocumentError as exc:
        raise ModelFileError(str(exc)) from None
    if not isinstance(info, dict) or not isinstance(info.get("export"), dict):
        raise ModelFileError(f"info.json from {label}: not an export record; register the weights again "
                             "(bench --retrain)")
    target = artifact_folder(ckpt_sha, exporter, home)
    with exclusive(target):
        if (target / "model.onnx").is_file():
            return  # this host made (or pulled) it already
        target.mkdir(parents=True, exist_ok=True)
        os.replace(onnx, target / "model.onnx")
        info["export"]["path"] = str(target / "model.onnx")
        info["pulled_from"] = label
        info.pop("optimize", None)  # derived here, by this host's ONNX Runtime
        atomic_write_text(target / "info.json", json.dumps(info, indent=1))
