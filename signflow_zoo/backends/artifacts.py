"""The zoo cache: trained checkpoints and their ONNX artifacts, content-addressed and reused.

Layout under ``$SIGNFLOW_ZOO_HOME`` (default ``./.signflow-zoo``)::

    checkpoints/<preset>-<key>.pt          key = hash(preset config, classes, data fingerprint, training config)
    artifacts/<ckpt sha[:16]>-<exporter>/  model.onnx, model.optimized.onnx, info.json
    results/                               one JSON per bench invocation (written before any tracking)

A cached file that fails to load is reported with its path; it is never silently retrained over.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from signflow_zoo.common.cachefiles import atomic_write_text, exclusive, zoo_home
from signflow_zoo.common.documents import loads_json
from signflow_zoo.common.errors import ModelFileError
from signflow_zoo.model.export import (OPSET, export_to_onnx, file_sha256, optimize_onnx_model, read_metadata,
                                      serving_metadata)
from signflow_zoo.backends.runner import Artifacts

def artifact_folder(checkpoint_sha256: str, exporter: str, home: Path | None = None) -> Path:
    """Where the exports of one checkpoint (by content) and one exporter are cached."""
    return (home or zoo_home()) / "artifacts" / f"{checkpoint_sha256[:16]}-{exporter}-op{OPSET}"


def build_artifacts(checkpoint: str | Path, exporter: str = "dynamo", home: Path | None = None,
                    optimize: bool = True, log=print) -> Artifacts:
    """Export the checkpoint to ONNX once (verified at several shapes) and derive the optimized graph.

    One process builds a folder at a time (a lock next to it); the others wait and reuse its files.
    Derived files that are unreadable or do not match their recorded sha256 (a truncated ``info.json``,
    a half-written optimized graph) are named in the log and built again; a plain export that no
    longer matches its recorded hash is an error naming it (it may be someone's deliberate edit).
    """
    from signflow_zoo.model.checkpoint import load_checkpoint

    checkpoint = Path(checkpoint)
    model, meta = load_checkpoint(checkpoint)
    sha = file_sha256(checkpoint)
    folder = artifact_folder(sha, exporter, home)
    onnx_path, opt_path, info_path = folder / "model.onnx", folder / "model.optimized.onnx", folder / "info.json"
    with exclusive(folder, use="artifact", what="ONNX export", log=log):
        info = _read_info(info_path, log) if onnx_path.is_file() else None
        if info is not None:
            if file_sha256(onnx_path) != info.get("export", {}).get("sha256"):
                raise ModelFileError(
                    f"{onnx_path}: cached ONNX artifact does not match its recorded hash (modified or corrupt); "
                    f"delete {folder} to export again"
                )
        else:
            log(f"exporting {meta.get('preset')} to ONNX ({exporter} exporter, opset {OPSET}) and verifying ...")
            export = export_to_onnx(model, onnx_path, metadata=serving_metadata(meta), exporter=exporter)
            info = {"export": export.to_dict(), "checkpoint_sha256": sha}
            atomic_write_text(info_path, json.dumps(info, indent=1))
        stale = optimize and opt_path.is_file() and not _optimized_matches(opt_path, info)
        if stale:
            log(f"{opt_path}: optimized graph does not match the sha256 recorded in {info_path.name} "
                "(half-written or modified); optimizing again")
        if optimize and (stale or not opt_path.is_file()):
            kw = meta["model_kwargs"]
            log("optimizing the ONNX graph (transformer fusions + ORT offline extended optimization) ...")
            rep = optimize_onnx_model(onnx_path, opt_path, num_heads=kw["nhead"], hidden_size=kw["d_model"])
            info["optimize"] = rep.to_dict()
            atomic_write_text(info_path, json.dumps(info, indent=1))
    hashes = {"torch": sha, "onnx": info["export"]["sha256"]}
    if opt_path.is_file() and info.get("optimize"):
        hashes["onnx-optimized"] = info["optimize"]["sha256"]
    sm = serving_metadata(meta)
    return Artifacts(
        preset=sm["preset"], num_classes=sm["num_classes"], labels=sm["labels"], model_kwargs=sm["model_kwargs"],
        checkpoint=checkpoint, onnx=onnx_path,
        onnx_optimized=opt_path if "onnx-optimized" in hashes else None,
        workdir=folder, hashes=hashes, info=info,
    )


def _read_info(info_path: Path, log) -> dict[str, Any] | None:
    """The folder's record, or None (export again) when it is missing, truncated or not a record."""
    if not info_path.is_file():
        return None
    try:
        info = loads_json(info_path.read_text(), info_path.name)  # nesting bounded
        if isinstance(info, dict) and isinstance(info.get("export"), dict) and info["export"].get("sha256"):
            return info
        why = "it holds no export record"
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError, DocumentError
        why = f"unreadable: {exc}"
    log(f"{info_path}: {why}; exporting again (derived from the checkpoint)")
    return None


def _optimized_matches(opt_path: Path, info: dict[str, Any]) -> bool:
    recorded = (info.get("optimize") or {}).get("sha256")
    return bool(recorded) and file_sha256(opt_path) == recorded


def artifacts_from_model_file(path: str | Path) -> Artifacts:
    """Artifacts for a single model file (``.onnx`` or ``.pt``), read from the file's own metadata."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        meta = read_metadata(path)
        if "labels" not in meta:
            raise ModelFileError(f"{path}: ONNX file has no signflow-zoo metadata (labels); export it with signflow-zoo")
        kind = "onnx-optimized" if meta.get("optimized") else "onnx"
        art = Artifacts(preset=str(meta.get("preset", "")), num_classes=int(meta.get("num_classes") or len(meta["labels"])),
                        labels=list(meta["labels"]), model_kwargs=meta.get("model_kwargs", {}), workdir=path.parent,
                        hashes={kind: file_sha256(path)})
        art.onnx = path
        if kind == "onnx-optimized":
            art.onnx_optimized = path
        return art
    if suffix in (".pt", ".pth"):
        from signflow_zoo.model.checkpoint import read_checkpoint

        _, meta = read_checkpoint(path)
        sm = serving_metadata(meta)
        return Artifacts(preset=sm["preset"], num_classes=sm["num_classes"], labels=sm["labels"],
                         model_kwargs=sm["model_kwargs"], checkpoint=path, workdir=path.parent,
                         hashes={"torch": file_sha256(path)})
    raise ModelFileError(f"{path}: unknown model file type {suffix!r}; expected .onnx or .pt")


__all__ = ["artifact_folder", "build_artifacts", "artifacts_from_model_file"]
