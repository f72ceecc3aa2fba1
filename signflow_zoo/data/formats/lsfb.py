"""LSFB-ISOL as its own library (lsfb-dataset 2.x) lays it out and reads it::

    instances.csv                      id, sign, signer, start, end (start/end: ms in the LSFB-CONT video)
    metadata/sign_to_index.csv         sign, class (class indices, most frequent sign first)
    metadata/splits/{train,test,fold_0..fold_4,all}.json
                                       each a JSON list of instance ids; train = folds 2-4, test = folds 0-1
    poses/{left_hand,right_hand,pose,face}/ID.npy       [F,21,3], [F,21,3], [F,33 or 30,3], [F,468,3]
    poses_raw/...                      the same before interpolation and smoothing (NaN where undetected)

What this reader does with it: class indices follow ``sign_to_index.csv`` when present (else sorted signs);
``labels=N`` keeps the N first classes and their instances, like the library's ``n_labels``; the official
train/test split is used when ``train.json`` and ``test.json`` exist (validation: ``fold_4``, taken out of
train); poses come from ``poses/`` (or ``poses_raw/`` when that is all there is, or when asked). A 30-point
pose is zero-padded to 33, a 4th coordinate (visibility) dropped, ``face`` never read, and a point with NaN
becomes missing (all zeros, masked out by the features). Pose files are already cut to the instance, so
start/end are not used.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from signflow_zoo.common.documents import DocumentError, loads_json
from signflow_zoo.common.errors import DataError, InputError
from signflow_zoo.data.features import NUM_HAND_POINTS, NUM_POSE_POINTS, raw_from_parts
from signflow_zoo.data.clip import Clip
from signflow_zoo.data.formats.files import ClipRef, inside, load_npy, lost_points_to_zero, read_csv, require_dir

PARTS = ("left_hand", "right_hand", "pose")
POSE_FOLDERS = ("poses", "poses_raw")
FOLDS = 5
VAL_FOLD = "fold_4"  # the last of the official train folds (2, 3, 4)
_POINTS = {"left_hand": (NUM_HAND_POINTS,), "right_hand": (NUM_HAND_POINTS,), "pose": (NUM_POSE_POINTS, 30)}


@dataclass
class LsfbIndex:
    """Every usable instance, its class names, and the official split when the data set ships one."""

    refs: list[ClipRef]
    class_names: list[str]
    official: dict[str, list[int]] = field(default_factory=dict)  # "train"/"val"/"test" -> indices into refs
    split: str = ""  # how the official split was taken, e.g. "lsfb-official:train/test, val=fold_4"


def _check_id(ident: str, where: str) -> None:
    if "/" in ident or "\\" in ident or ident in (".", ".."):
        raise DataError(f"{where}: entry {ident!r} is not an instance id (ids name files inside poses/; a path "
                        "would lead outside the data folder)")


def _sign_table(root: Path, labels: int | None) -> list[str] | None:
    """Class names in class order from metadata/sign_to_index.csv (the first ``labels`` only), or None."""
    path = root / "metadata" / "sign_to_index.csv"
    if not path.exists():
        if labels is not None:
            raise DataError(f"{path}: not found; labels={labels} keeps the first classes of that table")
        return None
    by_class: dict[int, str] = {}
    for line, row in read_csv(path, ["sign", "class"]):
        sign, value = row.get("sign", ""), row.get("class", "")
        try:
            index = int(value)
        except ValueError:
            raise DataError(f"{path}, line {line}: class {value!r} is not an integer") from None
        if not sign or index < 0 or index in by_class or sign in by_class.values():
            raise DataError(f"{path}, line {line}: sign {sign!r} with class {value!r} is empty, negative or "
                            "repeated")
        by_class[index] = sign
    if sorted(by_class) != list(range(len(by_class))):
        raise DataError(f"{path}: class indices must be 0..{len(by_class) - 1} without gaps")
    names = [by_class[i] for i in range(len(by_class))]
    return names if labels is None else names[:labels]


def _split_ids(path: Path) -> set[str]:
    try:
        ids = loads_json(path.read_text(encoding="utf-8"), str(path))  # nesting bounded
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as JSON ({exc})") from None
    except DocumentError as exc:
        raise DataError(str(exc)) from None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise DataError(f"{path}: expected a JSON list of instance ids (as lsfb-dataset writes them)")
    return set(ids)


def _official_split(root: Path, refs: list[ClipRef]) -> tuple[dict[str, list[int]], str]:
    folder = root / "metadata" / "splits"
    train_path, test_path = folder / "train.json", folder / "test.json"
    if not train_path.exists() and not test_path.exists():
        return {}, ""
    for a, b in ((train_path, test_path), (test_path, train_path)):
        if not a.exists():
            raise DataError(f"{a}: not found, but {b.name} is; the official split needs both")
    train_ids, test_ids = _split_ids(train_path), _split_ids(test_path)
    both = sorted(train_ids & test_ids)
    if both:
        raise DataError(f"{train_path} and {test_path} share instance(s) {', '.join(both[:5])}: train and test "
                        "must not overlap")
    name_of = [r.name for r in refs]
    parts = {"train": [i for i, n in enumerate(name_of) if n in train_ids],
             "test": [i for i, n in enumerate(name_of) if n in test_ids]}
    val_path = folder / f"{VAL_FOLD}.json"
    split = "lsfb-official:train/test"
    if val_path.exists():
        val_ids = _split_ids(val_path)
        parts["val"] = [i for i in parts["train"] if name_of[i] in val_ids]
        parts["train"] = [i for i in parts["train"] if name_of[i] not in val_ids]
        split += f", val={VAL_FOLD}"
    return parts, split


def index_lsfb(path, labels: int | None = None, poses: str | None = None) -> LsfbIndex:
    """Every instance of ``instances.csv`` whose sign is a kept class, with its pose files checked to stay
    inside the data folder (their contents are read later, clip by clip)."""
    root = require_dir(Path(path), "LSFB-ISOL")
    if poses is None:
        poses = next((f for f in POSE_FOLDERS if (root / f).is_dir()), None)
        if poses is None:
            raise DataError(f"{root}: has neither poses/ nor poses_raw/ (expected poses/<part>/ID.npy)")
    elif poses not in POSE_FOLDERS:
        raise DataError(f"lsfb option poses={poses!r}: expected one of {', '.join(POSE_FOLDERS)}")
    require_dir(root / poses, "LSFB-ISOL pose")
    table = _sign_table(root, labels)
    csv_path = root / "instances.csv"
    refs, seen = [], set()
    for line, row in read_csv(csv_path, ["id", "sign", "signer"]):
        ident, sign, signer = row.get("id", ""), row.get("sign", ""), row.get("signer", "")
        where = f"{csv_path}, line {line}"
        if not ident or not sign or not signer:
            raise DataError(f"{where}: empty 'id', 'sign' or 'signer'")
        _check_id(ident, where)
        if ident in seen:
            raise DataError(f"{where}: instance id {ident!r} appears twice")
        seen.add(ident)
        if table is not None and sign not in table:
            if labels is not None:
                continue  # a class beyond the first N: left out, as lsfb-dataset's n_labels does
            raise DataError(f"{where}: sign {sign!r} is not in {root / 'metadata' / 'sign_to_index.csv'}")
        files = tuple(inside(root, f"{poses}/{part}/{ident}.npy", where) for part in PARTS)
        refs.append(ClipRef("lsfb", files, ident, sign, signer, where))
    if not refs:
        raise DataError(f"{csv_path}: no instance of the {labels} classes kept")
    names = table if table is not None else sorted({r.label for r in refs if r.label is not None})
    official, split = _official_split(root, refs)
    return LsfbIndex(refs, names, official, split)


def read_lsfb_parts(files: Sequence[Path], ident: str, where: str = "") -> np.ndarray:
    """One instance's left hand, right hand and pose files -> raw [F, 225] float32 without NaN."""
    arrays = {}
    for part, path in zip(PARTS, files):
        arr = load_npy(path, where)
        allowed = _POINTS[part]
        if arr.ndim != 3 or arr.shape[1] not in allowed or arr.shape[2] not in (3, 4):
            want = " or ".join(f"[frames, {p}, 3]" for p in allowed)
            raise DataError(f"{path}: has shape {arr.shape}, expected {want}")
        if arr.shape[0] == 0:
            raise DataError(f"{path}: has no frames")
        arrays[part] = arr
    frames = {str(p): a.shape[0] for p, a in zip(files, arrays.values())}
    if len(set(frames.values())) > 1:
        raise DataError(f"instance {ident}: its pose files disagree on the frame count: {frames}")
    try:
        raw = raw_from_parts(arrays["left_hand"], arrays["right_hand"], arrays["pose"])
    except InputError as exc:
        raise DataError(f"instance {ident}: {exc}") from None
    return lost_points_to_zero(raw)


def instance_files(root: Path, ident: str, poses: str = "poses") -> tuple[Path, ...]:
    """The files of one instance, for reading it on its own (``predict ROOT --instance ID``)."""
    _check_id(ident, f"instance {ident!r}")
    return tuple(inside(root, f"{poses}/{part}/{ident}.npy", f"instance {ident!r}") for part in PARTS)


def instance_label(root: Path, ident: str) -> str | None:
    """The sign of one instance from ``instances.csv`` (None when there is no such file or row)."""
    path = root / "instances.csv"
    if not path.is_file():
        return None
    for _, row in read_csv(path, ["id", "sign"]):
        if row.get("id") == ident:
            return row.get("sign") or None
    return None


# Writing the layout (fixtures for tests, docs and benchmarks) ---------------------------------------
def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text) or "clip"


def write_lsfb_fixture(directory, clips: Sequence[Clip], class_names: Sequence[str], fps: float = 50.0,
                       official_splits: bool = True, nan_for_missing: bool = True, pose_points: int = 33,
                       face: bool = True, poses: str = "poses") -> Path:
    """Write clips in the LSFB-ISOL layout of lsfb-dataset 2.x; returns the directory.

    ``instances.csv``, ``metadata/sign_to_index.csv`` (classes in ``class_names`` order) and, with
    ``official_splits``, ``metadata/splits/{fold_0..fold_4,train,test,all}.json``: the folds go by signer
    (signer k -> fold k mod 5, signers in order of appearance), so train (folds 2-4) and test (folds 0-1) share
    no signer. A hand missing in a frame is written as NaN (as LSFB does) with ``nan_for_missing``, else zeros;
    ``pose_points=30`` writes the 30-point pose of some releases; ``face`` writes [F,468,3] face files.
    start/end are made-up consecutive times in milliseconds.
    """
    root = Path(directory)
    parts = PARTS + (("face",) if face else ())
    for part in parts:
        (root / poses / part).mkdir(parents=True, exist_ok=True)
    (root / "metadata" / "splits").mkdir(parents=True, exist_ok=True)
    with (root / "metadata" / "sign_to_index.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sign", "class"])
        writer.writerows([name, i] for i, name in enumerate(class_names))
    folds: list[list[str]] = [[] for _ in range(FOLDS)]
    signer_fold: dict[str, int] = {}
    t = 0
    with (root / "instances.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "sign", "signer", "start", "end"])
        for i, clip in enumerate(clips):
            raw = np.asarray(clip.raw, dtype=np.float32)
            frames = len(raw)
            ident = f"{_safe(clip.signer)}_{i:05d}"
            blocks = {"left_hand": raw[:, 0:63].reshape(frames, 21, 3),
                      "right_hand": raw[:, 63:126].reshape(frames, 21, 3),
                      "pose": raw[:, 126:].reshape(frames, 33, 3)[:, :pose_points]}
            for part, block in blocks.items():
                if nan_for_missing and part != "pose":
                    block = np.where((block == 0).all(axis=(1, 2))[:, None, None], np.nan, block)
                np.save(root / poses / part / f"{ident}.npy", block.astype(np.float32))
            if face:
                np.save(root / poses / "face" / f"{ident}.npy", np.zeros((frames, 468, 3), np.float32))
            end = t + int(round(frames * 1000 / fps))
            writer.writerow([ident, class_names[clip.label], clip.signer, t, end])
            t = end
            folds[signer_fold.setdefault(clip.signer, len(signer_fold) % FOLDS)].append(ident)
    if official_splits:
        split_files = {f"fold_{k}": folds[k] for k in range(FOLDS)}
        split_files.update(train=folds[2] + folds[3] + folds[4], test=folds[0] + folds[1],
                           all=[i for fold in folds for i in fold])
        for name, ids in split_files.items():
            (root / "metadata" / "splits" / f"{name}.json").write_text(json.dumps(ids))
    return root
