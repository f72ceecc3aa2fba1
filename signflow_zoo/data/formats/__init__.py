"""One reader per clip format: SignFlow recordings (``.npy``), LSFB-ISOL pose folders, ``.pose`` files.

:func:`read_ref` reads a clip a data set indexed; :func:`read_clips` reads whatever a user names on the
command line (a file or a folder), with the true labels where the files say them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from signflow_zoo.common.errors import DataError
from signflow_zoo.data.features import RAW_DIM
from signflow_zoo.data.formats.files import ClipRef, RecordedClip, read_recording
from signflow_zoo.data.formats.lsfb import POSE_FOLDERS, PARTS, index_lsfb, instance_files, instance_label, read_lsfb_parts
from signflow_zoo.data.formats.poseformat import read_pose_file
from signflow_zoo.data.formats.recordings import LABELS_CSV, index_labelled_folder, index_slug_folder


def read_ref(ref: ClipRef) -> np.ndarray:
    """The raw [F, 225] float32 frames of an indexed clip (no NaN: lost points are zeros)."""
    if ref.kind == "npy":
        return read_recording(ref.files[0], ref.where)
    if ref.kind == "lsfb":
        return read_lsfb_parts(ref.files, ref.name, ref.where)
    if ref.kind == "pose":
        return read_pose_file(ref.files[0], ref.where)
    raise ValueError(f"unknown clip kind {ref.kind!r}")


def _read_all(refs: list[ClipRef]) -> list[RecordedClip]:
    return [RecordedClip(r.name, read_ref(r), r.label, r.signer) for r in refs]


def read_clip_file(path, instance: str | None = None) -> RecordedClip:
    """One clip from a single file: a ``.npy`` recording [frames, 225], a ``.pose`` file, any of an LSFB
    instance's files (``ROOT/poses/<part>/ID.npy``; its label comes from ``ROOT/instances.csv``), or, with
    ``instance``, the LSFB-ISOL root itself."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found")
    if instance is not None:
        if not path.is_dir():
            raise DataError("--instance needs the LSFB-ISOL root directory as FILE")
        poses = next((f for f in POSE_FOLDERS if (path / f).is_dir()), POSE_FOLDERS[0])
        raw = read_lsfb_parts(instance_files(path, instance, poses), instance)
        return RecordedClip(instance, raw, instance_label(path, instance))
    suffix = path.suffix.lower()
    if suffix == ".pose":
        return RecordedClip(path.stem, read_pose_file(path))
    if suffix != ".npy" or path.is_dir():
        raise DataError(f"{path}: expected a .npy clip [frames, {RAW_DIM}], a .pose file or a data set directory")
    if path.parent.name in PARTS + ("face",) and path.parent.parent.name in POSE_FOLDERS:
        root, poses = path.parent.parent.parent, path.parent.parent.name
        raw = read_lsfb_parts(instance_files(root, path.stem, poses), path.stem)
        return RecordedClip(path.stem, raw, instance_label(root, path.stem))
    return RecordedClip(path.stem, read_recording(path))


def read_clips(path, instance: str | None = None) -> list[RecordedClip]:
    """The clip(s) a file or folder holds: a folder of LSFB-ISOL (``instances.csv``: every instance), of
    labelled clips (``labels.csv``: ``.npy`` or ``.pose`` files) or of SignFlow recordings named
    ``<sign>_<12 hex>.npy``; or one file (see :func:`read_clip_file`)."""
    path = Path(path)
    if not path.is_dir() or instance is not None:
        return [read_clip_file(path, instance)]
    if (path / "instances.csv").is_file():
        return _read_all(index_lsfb(path).refs)
    if (path / LABELS_CSV).is_file():
        return _read_all(index_labelled_folder(path, (".npy", ".pose"), "clips"))
    if any(path.glob("*.npy")):
        return _read_all(index_slug_folder(path))
    raise DataError(f"{path}: a directory must hold instances.csv (LSFB-ISOL), {LABELS_CSV} (file,label[,signer]) "
                    "or SignFlow recordings named <sign>_<12 hex digits>.npy; or pass a single .npy or .pose clip")


__all__ = ["ClipRef", "RecordedClip", "read_ref", "read_clip_file", "read_clips"]
