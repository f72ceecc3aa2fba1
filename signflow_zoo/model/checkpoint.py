"""Weights-only checkpoints: a state dict plus JSON metadata, loaded with ``weights_only=True``.

Loading never executes code from the file, and nothing in the file is trusted: the metadata must be a
JSON object describing a possible model (sizes within ``zoo.SIZE_BOUNDS``, heads dividing the width, this
version's feature width and architecture version), labels and calibration must fit it, and every weight
must be finite. Each failure is one line naming the file and the problem. A checkpoint of NaN weights is
never written in the first place.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any

import torch

from signflow_zoo.common.cachefiles import stable_hash, temp_path, zoo_home
from signflow_zoo.common.documents import DocumentError, loads_json
from signflow_zoo.common.errors import CheckpointError
from signflow_zoo.data.features import FEATURE_VERSION
from signflow_zoo.model import network
from signflow_zoo.model.network import MODEL_VERSION, SignTransformer, model_kwargs_problem

FORMAT = "signflow-zoo-checkpoint/1"
RETRAIN = "train it again (`signflow-zoo train --preset NAME`)"


def non_finite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``state`` that hold a NaN or an infinity."""
    return [k for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def save_checkpoint(path: str | Path, model: SignTransformer, metadata: dict[str, Any]) -> Path:
    """Write atomically (temp file + rename) so an interrupted save never leaves a half file.

    Refuses weights holding NaN or inf: such a file would load fine and predict garbage.
    """
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    bad = non_finite_tensors(state)
    if bad:
        raise CheckpointError(
            f"{path}: not saved: {len(bad)} weight tensor(s) hold NaN or inf (first: {bad[0]}); "
            "training diverged, lower the learning rate and train again"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(metadata)
    meta.setdefault("model_kwargs", model_kwargs_of(model))
    meta["model_version"] = MODEL_VERSION
    meta["format"] = FORMAT
    tmp = temp_path(path)  # unique per process: concurrent savers never share a temp file
    try:
        torch.save({"state_dict": state, "metadata": json.dumps(meta, default=str)}, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def model_kwargs_of(model: SignTransformer) -> dict[str, Any]:
    return dict(model.init_kwargs)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict and the validated metadata; :class:`CheckpointError` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (corrupt or truncated file); delete it and {RETRAIN}"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for bad files
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot load weights-only checkpoint: {first}") from None
    if not isinstance(blob, dict) or "state_dict" not in blob or "metadata" not in blob:
        raise CheckpointError(f"{path}: not a signflow-zoo checkpoint (expected keys state_dict, metadata)")
    if not isinstance(blob["metadata"], (str, bytes)):
        raise CheckpointError(f"{path}: checkpoint metadata is not valid JSON: it is a "
                              f"{type(blob['metadata']).__name__}, not text")
    try:
        meta = loads_json(blob["metadata"], f"{path}: checkpoint metadata")  # nesting bounded
    except DocumentError as exc:
        raise CheckpointError(str(exc)) from None
    state = blob["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: checkpoint state_dict is not a mapping of names to tensors")
    bad = non_finite_tensors(state)
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensor(s) hold NaN or inf (first: {bad[0]}): the training "
                              f"that wrote it diverged; delete it and {RETRAIN} with a lower learning rate")
    problem = metadata_problem(meta)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    return state, meta


def metadata_problem(meta: Any) -> str | None:
    """What makes ``meta`` unusable as a checkpoint's metadata, or None."""
    if not isinstance(meta, dict):
        return f"checkpoint metadata must be a JSON object, got {type(meta).__name__}"
    version = meta.get("model_version")
    if version != MODEL_VERSION:
        return (f"checkpoint holds SignTransformer architecture version {version if version is not None else 1}, "
                f"this signflow-zoo builds version {MODEL_VERSION}; {RETRAIN}")
    if "model_kwargs" not in meta:
        return "checkpoint metadata has no model_kwargs"
    problem = model_kwargs_problem(meta["model_kwargs"])
    if problem:
        return f"impossible model in checkpoint metadata: {problem}"
    n = meta["model_kwargs"]["num_classes"]
    labels = meta.get("labels")
    if labels is not None and (not isinstance(labels, list) or len(labels) != n
                               or not all(isinstance(x, str) for x in labels)):
        return f"checkpoint labels must be a list of {n} strings (num_classes), got {_short(labels)}"
    return calibration_problem(meta.get("calibration"), n)


def calibration_problem(cal: Any, num_classes: int) -> str | None:
    """What is wrong with a checkpoint's ``calibration`` entry (absent is fine), or None."""
    if cal is None:
        return None
    if not isinstance(cal, dict):
        return f"checkpoint calibration must be a JSON object, got {type(cal).__name__}"
    t = cal.get("temperature")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0):
        return f"checkpoint calibration temperature must be a finite number > 0, got {t!r}"
    th = cal.get("class_thresholds")
    if th is not None and (not isinstance(th, list) or len(th) != num_classes or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in th)):
        return f"checkpoint calibration class_thresholds must be null or {num_classes} numbers in [0, 1], got {_short(th)}"
    return None


def _short(value: Any, n: int = 80) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= n else text[: n - 3] + "..."


def load_checkpoint(
    path: str | Path, map_location: str = "cpu", expect: dict[str, Any] | None = None
) -> tuple[SignTransformer, dict[str, Any]]:
    """Rebuild the model from a checkpoint. ``expect`` (e.g. preset, num_classes) must match the metadata."""
    state, meta = read_checkpoint(path)
    for key, want in (expect or {}).items():
        if meta.get(key) != want:
            raise CheckpointError(
                f"{path}: checkpoint was made for {key}={meta.get(key)!r}, not {want!r}; "
                "use a matching checkpoint or train a new one"
            )
    try:
        model = SignTransformer(**meta["model_kwargs"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint model_kwargs do not fit SignTransformer: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the model described in its metadata: "
                              f"{str(exc).splitlines()[0][:300]}") from None
    return model.to(map_location).eval(), meta


def checkpoint_path(entry, num_classes: int, data_fingerprint: str, training_key: dict[str, Any],
                    home: Path | None = None) -> Path:
    cfg = {k: v for k, v in entry.to_dict().items() if k not in ("source", "use_case")}
    key = stable_hash({"entry": cfg, "classes": num_classes, "data": data_fingerprint, "train": training_key,
                       "features": FEATURE_VERSION, "model": network.MODEL_VERSION})
    return (home or zoo_home()) / "checkpoints" / f"{entry.name}-{key}.pt"
