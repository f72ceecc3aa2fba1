"""Weights-only checkpoints: a state dict plus JSON metadata, loaded with ``weights_only=True``.

Loading never executes code from the file. The metadata carries what is needed to rebuild and serve
the model alone: preset, model kwargs, labels, feature version, data fingerprint, training config.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import torch

from .cachefiles import temp_path
from .errors import CheckpointError
from .model import SignTransformer

FORMAT = "signflow-zoo-checkpoint/1"


def save_checkpoint(path: str | Path, model: SignTransformer, metadata: dict[str, Any]) -> Path:
    """Write atomically (temp file + rename) so an interrupted save never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(metadata)
    meta.setdefault("model_kwargs", model_kwargs_of(model))
    meta["format"] = FORMAT
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
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
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (corrupt or truncated file); delete it and train again "
            "(`signflow-zoo train --preset NAME`)"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for bad files
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot load weights-only checkpoint: {first}") from None
    if not isinstance(blob, dict) or "state_dict" not in blob or "metadata" not in blob:
        raise CheckpointError(f"{path}: not a signflow-zoo checkpoint (expected keys state_dict, metadata)")
    try:
        meta = json.loads(blob["metadata"])
    except (TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is not valid JSON: {exc}") from None
    return blob["state_dict"], meta


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
    kwargs = meta.get("model_kwargs")
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{path}: checkpoint metadata has no model_kwargs")
    try:
        model = SignTransformer(**kwargs)
    except TypeError as exc:
        raise CheckpointError(f"{path}: checkpoint model_kwargs do not fit SignTransformer: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the model described in its metadata: "
                              f"{str(exc).splitlines()[0][:300]}") from None
    return model.to(map_location).eval(), meta
