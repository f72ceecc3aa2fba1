"""Data sets: clips from the synthetic generator or from disk, turned into fixed-length feature arrays
and split by signer (a model must be judged on people it has never seen).

Spec strings (``load_data``, the CLI's ``--data``)::

    synthetic                                           the default synthetic set
    synthetic:classes=10,signers=12,clips=2,seed=3,difficulty=1.2
    signflow:PATH                                       SignFlow recordings (.npy + labels.csv)
    lsfb:PATH                                           LSFB-ISOL (instances.csv + poses/...)

Every problem with a path or file raises :class:`DataError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError, InputError
from .features import (
    FEATURE_DIM,
    FEATURE_VERSION,
    NUM_HAND_POINTS,
    NUM_POSE_POINTS,
    RAW_DIM,
    SEQ_LEN,
    prepare_clips,
    raw_from_parts,
)
from .synthetic import Clip, SyntheticSpec, generate

SPEC_FORMS = (
    "synthetic",
    "synthetic:classes=N,signers=N,clips=N,seed=N,difficulty=X (any subset of the options)",
    "signflow:PATH (a directory of .npy files [frames, 225] with labels.csv: file,label[,signer])",
    "lsfb:PATH (an LSFB-ISOL directory: instances.csv and poses/{left_hand,right_hand,pose}/ID.npy)",
)
DEFAULT_VAL_FRACTION = 0.15
DEFAULT_TEST_FRACTION = 0.15


# Data sets ----------------------------------------------------------------------------------------
@dataclass
class SignDataset:
    """Fixed-length clips ready for a model: features [N, SEQ_LEN, 469] float32, mask [N, SEQ_LEN] bool
    (True = a frame where something was detected), labels [N] int64, the signer of each clip."""

    features: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    signers: list[str]

    def __post_init__(self):
        n = len(self.labels)
        if self.features.ndim != 3 or self.features.shape[0] != n or self.features.shape[2] != FEATURE_DIM:
            raise DataError(f"SignDataset: features must be [{n}, frames, {FEATURE_DIM}], got {self.features.shape}")
        if self.mask.shape != self.features.shape[:2]:
            raise DataError(f"SignDataset: mask must be {self.features.shape[:2]}, got {self.mask.shape}")
        if len(self.signers) != n:
            raise DataError(f"SignDataset: {len(self.signers)} signers for {n} clips")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, idx) -> SignDataset:
        """The clips at ``idx`` (indices or a boolean mask), with the same class list."""
        idx = np.asarray(idx)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64).reshape(-1)
        return SignDataset(
            features=self.features[idx],
            mask=self.mask[idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            signers=[self.signers[i] for i in idx],
        )

    def fingerprint(self) -> str:
        """sha256 of the arrays, class names and signers: equal fingerprints, equal data."""
        h = hashlib.sha256(FEATURE_VERSION.encode())
        for arr in (self.features, self.mask, self.labels):
            arr = np.ascontiguousarray(arr)
            h.update(f"{arr.dtype.str}{arr.shape}".encode())
            h.update(arr.tobytes())
        h.update("\n".join(self.class_names).encode())
        h.update(b"\0" + "\n".join(self.signers).encode())
        return h.hexdigest()


@dataclass
class DataSplits:
    """Train/val/test with disjoint signers, the spec they came from and one hash over all three."""

    train: SignDataset
    val: SignDataset
    test: SignDataset
    class_names: list[str]
    spec: str
    fingerprint: str = field(default="")

    def __post_init__(self):
        if not self.fingerprint:
            h = hashlib.sha256()
            for part in (self.train, self.val, self.test):
                h.update(part.fingerprint().encode())
            self.fingerprint = h.hexdigest()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def clips_to_dataset(clips: Sequence[Clip], class_names: Sequence[str], seq_len: int = SEQ_LEN) -> SignDataset:
    """Resample every clip to ``seq_len`` frames and enrich them (batched across clips)."""
    bad = [c.name or str(i) for i, c in enumerate(clips) if not 0 <= int(c.label) < len(class_names)]
    if bad:
        raise DataError(f"clips {bad[:5]} have labels outside 0..{len(class_names) - 1}")
    try:
        features, mask = prepare_clips([c.raw for c in clips], seq_len,
                                       sources=[f"clip {c.name or i}" for i, c in enumerate(clips)])
    except InputError as exc:
        raise DataError(str(exc)) from None
    return SignDataset(
        features=features,
        mask=mask,
        labels=np.array([int(c.label) for c in clips], dtype=np.int64),
        class_names=list(class_names),
        signers=[c.signer for c in clips],
    )


def split_by_signer(
    clips: Sequence[Clip],
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
) -> tuple[list[Clip], list[Clip], list[Clip]]:
    """Split clips into (train, val, test) so that no signer appears in two of them.

    Each split with a positive fraction gets at least one signer; train keeps the rest.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"split fractions must be in [0, 1) and sum below 1, got val={val_fraction}, "
                        f"test={test_fraction}")
    signers = sorted({c.signer for c in clips})
    n_val = max(1, round(val_fraction * len(signers))) if val_fraction > 0 else 0
    n_test = max(1, round(test_fraction * len(signers))) if test_fraction > 0 else 0
    if len(signers) < n_val + n_test + 1:
        raise DataError(
            f"splitting by signer needs at least {n_val + n_test + 1} signers (train, val and test must not "
            f"share a signer), but the data has {len(signers)}: {', '.join(signers[:10]) or 'none'}; "
            f"add signers, or give each recording its own signer"
        )
    order = np.random.default_rng(seed).permutation(len(signers))
    test_set = {signers[i] for i in order[:n_test]}
    val_set = {signers[i] for i in order[n_test : n_test + n_val]}
    train = [c for c in clips if c.signer not in test_set and c.signer not in val_set]
    val = [c for c in clips if c.signer in val_set]
    test = [c for c in clips if c.signer in test_set]
    return train, val, test


# Reading real formats -----------------------------------------------------------------------------
def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected a CSV with columns {', '.join(required)})")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in required if c not in columns]
            if missing:
                raise DataError(
                    f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(columns) or 'no header'}"
                )
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read as CSV: {exc}") from None
    if not rows:
        raise DataError(f"{path}: has a header but no rows")
    return rows


def _load_npy(path: Path, referenced_by: str) -> np.ndarray:
    """np.load without pickles; every failure becomes a DataError naming the file."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (listed in {referenced_by})")
    try:
        with path.open("rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    if magic != b"\x93NUMPY":  # otherwise numpy guesses "pickle" and suggests loading it unsafely
        raise DataError(f"{path}: not a valid .npy array file (no NumPy header; is it a .npy file?)")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:  # object arrays (need pickles), malformed header, short data
        raise DataError(f"{path}: not a valid .npy array file ({exc})") from None
    except Exception as exc:  # truncated data, I/O errors: whatever numpy raises, name the file
        raise DataError(f"{path}: unreadable or truncated .npy file ({type(exc).__name__}: {exc})") from None
    if arr.dtype.kind not in "fiu":
        raise DataError(f"{path}: expected numeric landmark values, got dtype {arr.dtype}")
    return arr


def _names(labels: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    names = sorted(set(labels))
    return names, {n: i for i, n in enumerate(names)}


def load_signflow_recordings(path) -> tuple[list[Clip], list[str]]:
    """SignFlow recordings: a directory of ``.npy`` arrays [frames, 225] and ``labels.csv``
    (``file,label[,signer]``). Without a signer, each recording counts as its own signer."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: SignFlow recordings directory not found")
    csv_path = root / "labels.csv"
    rows = _read_csv(csv_path, ["file", "label"])
    entries = []
    for line, row in enumerate(rows, start=2):
        file, label = row.get("file", ""), row.get("label", "")
        if not file or not label:
            raise DataError(f"{csv_path}, line {line}: empty 'file' or 'label'")
        npy = root / file
        raw = _load_npy(npy, f"{csv_path}, line {line}")
        if raw.ndim != 2 or raw.shape[1] != RAW_DIM:
            raise DataError(f"{npy}: has shape {raw.shape}, expected [frames, {RAW_DIM}] "
                            f"(left hand 63, right hand 63, pose 99 values per frame)")
        if raw.shape[0] == 0:
            raise DataError(f"{npy}: has no frames")
        entries.append((raw.astype(np.float32), label, row.get("signer") or Path(file).stem, Path(file).stem))
    names, index = _names([e[1] for e in entries])
    clips = [Clip(raw=raw, label=index[label], signer=signer, name=name) for raw, label, signer, name in entries]
    return clips, names


_LSFB_PARTS = {"left_hand": NUM_HAND_POINTS, "right_hand": NUM_HAND_POINTS, "pose": NUM_POSE_POINTS}


def load_lsfb_isol(path) -> tuple[list[Clip], list[str]]:
    """LSFB-ISOL: ``instances.csv`` (id, sign, signer, start, end) and ``poses/<part>/<id>.npy`` for
    left_hand [F,21,3], right_hand [F,21,3] and pose [F,33 or 30,3]; ``poses/face`` is not used.

    The pose files are already cut to the instance, so start/end (times in the source video) are not
    used for cropping. A 4th coordinate (visibility), if present, is dropped.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: LSFB-ISOL directory not found")
    csv_path = root / "instances.csv"
    rows = _read_csv(csv_path, ["id", "sign", "signer"])
    entries = []
    for line, row in enumerate(rows, start=2):
        ident, sign, signer = row.get("id", ""), row.get("sign", ""), row.get("signer", "")
        if not ident or not sign or not signer:
            raise DataError(f"{csv_path}, line {line}: empty 'id', 'sign' or 'signer'")
        parts = {}
        for part, points in _LSFB_PARTS.items():
            npy = root / "poses" / part / f"{ident}.npy"
            arr = _load_npy(npy, f"{csv_path}, line {line}")
            allowed = (points, 30) if part == "pose" else (points,)
            if arr.ndim != 3 or arr.shape[1] not in allowed or arr.shape[2] not in (3, 4):
                want = " or ".join(f"[frames, {p}, 3]" for p in allowed)
                raise DataError(f"{npy}: has shape {arr.shape}, expected {want}")
            if arr.shape[0] == 0:
                raise DataError(f"{npy}: has no frames")
            parts[part] = (npy, arr)
        frames = {str(p): a.shape[0] for p, a in parts.values()}
        if len(set(frames.values())) > 1:
            raise DataError(f"instance {ident}: its pose files disagree on the frame count: {frames}")
        raw = raw_from_parts(parts["left_hand"][1], parts["right_hand"][1], parts["pose"][1])
        entries.append((raw, sign, signer, ident))
    names, index = _names([e[1] for e in entries])
    clips = [Clip(raw=raw, label=index[sign], signer=signer, name=ident) for raw, sign, signer, ident in entries]
    return clips, names


# Writing the same formats (fixtures for tests and docs) ---------------------------------------------
def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text) or "clip"


def write_signflow_fixture(directory, clips: Sequence[Clip], class_names: Sequence[str]) -> Path:
    """Write clips as SignFlow recordings (one .npy each + labels.csv); returns the directory."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    with (root / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "signer"])
        for i, clip in enumerate(clips):
            file = f"{i:05d}_{_safe(clip.name or class_names[clip.label])}.npy"
            np.save(root / file, np.asarray(clip.raw, dtype=np.float32))
            writer.writerow([file, class_names[clip.label], clip.signer])
    return root


def write_lsfb_fixture(directory, clips: Sequence[Clip], class_names: Sequence[str], fps: float = 50.0) -> Path:
    """Write clips in the LSFB-ISOL layout (instances.csv + poses/{left_hand,right_hand,pose}/ID.npy);
    start/end are made-up consecutive times in milliseconds. Returns the directory."""
    root = Path(directory)
    for part in _LSFB_PARTS:
        (root / "poses" / part).mkdir(parents=True, exist_ok=True)
    t = 0
    with (root / "instances.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "sign", "signer", "start", "end"])
        for i, clip in enumerate(clips):
            raw = np.asarray(clip.raw, dtype=np.float32)
            frames = len(raw)
            ident = f"{_safe(clip.signer)}_{i:05d}"
            np.save(root / "poses" / "left_hand" / f"{ident}.npy", raw[:, 0:63].reshape(frames, 21, 3))
            np.save(root / "poses" / "right_hand" / f"{ident}.npy", raw[:, 63:126].reshape(frames, 21, 3))
            np.save(root / "poses" / "pose" / f"{ident}.npy", raw[:, 126:].reshape(frames, 33, 3))
            end = t + int(round(frames * 1000 / fps))
            writer.writerow([ident, class_names[clip.label], clip.signer, t, end])
            t = end
    return root


# Spec strings ---------------------------------------------------------------------------------------
_SYNTHETIC_OPTIONS = {
    "classes": ("num_classes", int),
    "signers": ("num_signers", int),
    "clips": ("clips_per_signer_per_class", int),
    "seed": ("seed", int),
    "difficulty": ("difficulty", float),
}
_KIND_WORDS = {int: "an integer", float: "a number"}


def _bad_spec(spec: str, why: str) -> DataError:
    forms = "\n  ".join(SPEC_FORMS)
    return DataError(f"data spec {spec!r}: {why}. Valid forms:\n  {forms}")


def parse_synthetic_spec(spec: str, seed: int = 0) -> SyntheticSpec:
    """``synthetic[:k=v,...]`` -> SyntheticSpec; the generator seed defaults to ``seed``."""
    scheme, _, options = spec.partition(":")
    if scheme.strip() != "synthetic":
        raise _bad_spec(spec, "not a synthetic spec")
    kwargs: dict = {"seed": seed}
    for item in filter(None, (o.strip() for o in options.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if key not in _SYNTHETIC_OPTIONS or not eq:
            raise _bad_spec(spec, f"unknown option {item!r} (options: {', '.join(_SYNTHETIC_OPTIONS)})")
        name, kind = _SYNTHETIC_OPTIONS[key]
        try:
            kwargs[name] = kind(value)
        except ValueError:
            raise _bad_spec(spec, f"option {key} needs {_KIND_WORDS[kind]}, got {value!r}") from None
    return SyntheticSpec(**kwargs)


def load_clips(spec: str, seed: int = 0) -> tuple[list[Clip], list[str], str]:
    """Clips and class names for a spec string, plus the spec in canonical form."""
    text = (spec or "").strip()
    scheme, sep, rest = text.partition(":")
    if scheme == "synthetic":
        synth = parse_synthetic_spec(text, seed)
        d = synth.to_dict()
        canonical = (f"synthetic:classes={d['num_classes']},signers={d['num_signers']},"
                     f"clips={d['clips_per_signer_per_class']},seed={d['seed']},difficulty={d['difficulty']:g}")
        clips, names = generate(synth)
        return clips, names, canonical
    if scheme in ("signflow", "lsfb"):
        if not sep or not rest.strip():
            raise _bad_spec(spec, f"{scheme}: needs a path")
        loader = load_signflow_recordings if scheme == "signflow" else load_lsfb_isol
        clips, names = loader(rest.strip())
        return clips, names, f"{scheme}:{Path(rest.strip()).resolve()}"
    raise _bad_spec(spec, f"unknown data source {scheme!r}")


def load_data(
    spec: str = "synthetic",
    seed: int = 0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> DataSplits:
    """Load a data set by spec string and split it by signer (the split is fixed by ``seed``)."""
    clips, names, canonical = load_clips(spec, seed)
    train, val, test = split_by_signer(clips, val_fraction, test_fraction, seed)
    return DataSplits(
        train=clips_to_dataset(train, names),
        val=clips_to_dataset(val, names),
        test=clips_to_dataset(test, names),
        class_names=names,
        spec=canonical,
    )
