"""Data sets by spec string: clips from the synthetic generator or from disk, split (by signer, or by the
data set's official split), turned into fixed-length features. The formats themselves are read in
:mod:`signflow_zoo.data.formats`; the data set classes live in :mod:`signflow_zoo.data.datasets`.

Spec strings (``load_data``, the CLI's ``--data``): see :data:`SPEC_FORMS`.

A split whose features would take more than :data:`IN_MEMORY_LIMIT_BYTES` stays on disk: the training split
as a :class:`ClipFileDataset` (read through DataLoader workers while training), val and test as SignDatasets
whose features are computed once into files and memory-mapped (:func:`mapped_dataset`). Every file is read
once at load time, so a broken file is reported before training starts, and the data fingerprint covers the
clips as read. Every problem with a path or file raises
:class:`DataError` naming the file (and the CSV line and entry where one led to it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from signflow_zoo.data.datasets import (
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
    ClipFileDataset,
    ClipHasher,
    DataSplits,
    SignDataset,
    clips_to_dataset,
    mapped_dataset,
    signer_split_indices,
    split_by_signer,
)
from signflow_zoo.common.cachefiles import zoo_home
from signflow_zoo.common.errors import DataError
from signflow_zoo.data.features import FEATURE_DIM, SEQ_LEN
from signflow_zoo.data.formats import ClipRef, RecordedClip, read_clip_file, read_clips, read_ref
from signflow_zoo.data.formats.lsfb import index_lsfb, write_lsfb_fixture
from signflow_zoo.data.formats.poseformat import write_pose_fixture
from signflow_zoo.data.formats.recordings import index_labelled_folder, index_recordings, write_signflow_fixture
from signflow_zoo.data.clip import Clip
from signflow_zoo.data.synthetic import SyntheticSpec, generate

SPEC_FORMS = (
    "synthetic",
    "synthetic:classes=N,signers=N,clips=N,seed=N,difficulty=X (any subset of the options)",
    "signflow:PATH (SignFlow recordings: .npy files [frames, 225] listed in labels.csv: file,label[,signer]; "
    "without labels.csv, files named <sign>_<12 hex>.npy as SignFlow saves them)",
    "lsfb:PATH[?labels=N,poses=poses_raw] (LSFB-ISOL as lsfb-dataset 2.x lays it out: instances.csv, "
    "metadata/sign_to_index.csv, metadata/splits/*.json, poses/{left_hand,right_hand,pose}/ID.npy; "
    "official split used when present)",
    "pose:PATH (.pose files of MediaPipe Holistic landmarks, pose-format library, listed in labels.csv: "
    "file,label[,signer])",
)
# A split (train, val or test) up to this many bytes of features is held in memory; a bigger one is read from disk.
IN_MEMORY_LIMIT_BYTES = 1 << 30
_CLIP_BYTES = SEQ_LEN * (FEATURE_DIM * 4 + 1)


# Spec strings ---------------------------------------------------------------------------------------
_SYNTHETIC_OPTIONS = {
    "classes": ("num_classes", int),
    "signers": ("num_signers", int),
    "clips": ("clips_per_signer_per_class", int),
    "seed": ("seed", int),
    "difficulty": ("difficulty", float),
}
_LSFB_OPTIONS = {"labels": int, "poses": str}
_KIND_WORDS = {int: "an integer", float: "a number", str: "a word"}


def _bad_spec(spec: str, why: str) -> DataError:
    forms = "\n  ".join(SPEC_FORMS)
    return DataError(f"data spec {spec!r}: {why}. Valid forms:\n  {forms}")


def _options(spec: str, text: str, allowed: dict) -> dict:
    """``k=v,k=v`` -> {key: typed value} for the keys of ``allowed`` ({key: type})."""
    out = {}
    for item in filter(None, (o.strip() for o in text.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if key not in allowed or not eq:
            raise _bad_spec(spec, f"unknown option {item!r} (options: {', '.join(allowed)})")
        try:
            out[key] = allowed[key](value)
        except ValueError:
            raise _bad_spec(spec, f"option {key} needs {_KIND_WORDS[allowed[key]]}, got {value!r}") from None
    return out


def parse_synthetic_spec(spec: str, seed: int = 0) -> SyntheticSpec:
    """``synthetic[:k=v,...]`` -> SyntheticSpec; the generator seed defaults to ``seed``."""
    scheme, _, options = spec.partition(":")
    if scheme.strip() != "synthetic":
        raise _bad_spec(spec, "not a synthetic spec")
    given = _options(spec, options, {k: kind for k, (_, kind) in _SYNTHETIC_OPTIONS.items()})
    return SyntheticSpec(**{"seed": seed, **{_SYNTHETIC_OPTIONS[k][0]: v for k, v in given.items()}})


@dataclass
class _Catalogue:
    """Every clip of a data set (in memory, or as references to its files) before it is split."""

    items: list  # Clip or ClipRef
    labels: list[int]
    class_names: list[str]
    canonical: str
    official: dict[str, list[int]] = field(default_factory=dict)
    official_split: str = ""


def _labels_of(refs: list[ClipRef], names: list[str] | None = None) -> tuple[list[int], list[str]]:
    names = names if names is not None else sorted({r.label for r in refs if r.label is not None})
    index: dict[str | None, int] = {n: i for i, n in enumerate(names)}
    return [index[r.label] for r in refs], names


def _catalogue(spec: str, seed: int) -> _Catalogue:
    text = (spec or "").strip()
    scheme, sep, rest = text.partition(":")
    if scheme == "synthetic":
        synth = parse_synthetic_spec(text, seed)
        d = synth.to_dict()
        canonical = (f"synthetic:classes={d['num_classes']},signers={d['num_signers']},"
                     f"clips={d['clips_per_signer_per_class']},seed={d['seed']},difficulty={d['difficulty']:g}")
        clips, names = generate(synth)
        return _Catalogue(clips, [c.label for c in clips], names, canonical)
    if scheme not in ("signflow", "lsfb", "pose"):
        raise _bad_spec(spec, f"unknown data source {scheme!r}")
    path, _, query = rest.strip().partition("?")
    if not sep or not path.strip():
        raise _bad_spec(spec, f"{scheme}: needs a path")
    path = path.strip()
    canonical = f"{scheme}:{Path(path).resolve()}"
    if scheme == "lsfb":
        opts = _options(spec, query, _LSFB_OPTIONS)
        if "labels" in opts and opts["labels"] < 1:
            raise _bad_spec(spec, f"option labels needs a positive integer, got {opts['labels']}")
        index = index_lsfb(path, labels=opts.get("labels"), poses=opts.get("poses"))
        if opts:
            canonical += "?" + ",".join(f"{k}={opts[k]}" for k in _LSFB_OPTIONS if k in opts)
        labels, names = _labels_of(index.refs, index.class_names)
        return _Catalogue(index.refs, labels, names, canonical, index.official, index.split)
    if query:
        raise _bad_spec(spec, f"{scheme}: takes no options, got {query!r}")
    refs = index_recordings(Path(path)) if scheme == "signflow" else index_labelled_folder(Path(path), (".pose",),
                                                                                      ".pose clips")
    labels, names = _labels_of(refs)
    return _Catalogue(refs, labels, names, canonical)


def _raw(item):
    return item.raw if isinstance(item, Clip) else read_ref(item)


def _read_into_clips(items: list, labels: list[int]) -> list[Clip]:
    return [item if isinstance(item, Clip) else Clip(read_ref(item), label, item.signer, item.name)
            for item, label in zip(items, labels)]


def load_clips(spec: str, seed: int = 0) -> tuple[list[Clip], list[str], str]:
    """Every clip of a spec, read into memory, with the class names and the spec in canonical form."""
    cat = _catalogue(spec, seed)
    return _read_into_clips(cat.items, cat.labels), cat.class_names, cat.canonical


def _split(cat: _Catalogue, seed: int, val_fraction: float, test_fraction: float) -> tuple[dict, str]:
    signers = [item.signer for item in cat.items]
    if not cat.official:
        train, val, test = signer_split_indices(signers, val_fraction, test_fraction, seed)
        return ({"train": train, "val": val, "test": test},
                f"signer-split(seed={seed}, val={val_fraction:g}, test={test_fraction:g})")
    parts, split = dict(cat.official), cat.official_split
    for part, idx in parts.items():
        if not idx:
            raise DataError(f"{cat.canonical}: the official {part} split ({split}) has none of the instances "
                            "listed in instances.csv (with the classes kept)")
    if "val" not in parts:  # no validation fold: signers of the official train part, held out
        pool = parts["train"]
        train, val, _ = signer_split_indices([signers[i] for i in pool], val_fraction, 0.0, seed)
        parts["train"], parts["val"] = [pool[i] for i in train], [pool[i] for i in val]
        split += f", val=signer-split(seed={seed}, val={val_fraction:g})"
    return parts, split


def load_data(
    spec: str = "synthetic",
    seed: int = 0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    in_memory: bool | None = None,
    spill_dir: str | Path | None = None,
) -> DataSplits:
    """Load a data set by spec string and split it: by the data set's official split when it has one
    (LSFB-ISOL), else by signer (fixed by ``seed``). ``splits.split`` says which.

    ``in_memory``: hold every split's features in memory (True), read the training split from disk while
    training (False; file-based data only), or decide by size (None). Without True, each split whose features
    would exceed IN_MEMORY_LIMIT_BYTES stays on disk: the training split read while training
    (:class:`ClipFileDataset`), val and test as SignDatasets whose arrays are memory-mapped from unnamed
    temporary files in ``spill_dir`` (default: the zoo home's ``data`` folder), the same values as in memory.
    Synthetic data is always in memory.
    """
    cat = _catalogue(spec, seed)
    parts, split = _split(cat, seed, val_fraction, test_fraction)
    synthetic = cat.canonical.startswith("synthetic")
    if in_memory is False and synthetic:
        raise DataError("in_memory=False needs a data set on disk; synthetic data is generated in memory")
    hasher = ClipHasher(cat.class_names, split)
    out: dict[str, SignDataset | ClipFileDataset] = {}
    for part in ("train", "val", "test"):
        idx = parts[part]
        hasher.part(part)
        if synthetic or in_memory:
            keep = True
        elif part == "train" and in_memory is False:
            keep = False
        else:
            keep = len(idx) * _CLIP_BYTES <= IN_MEMORY_LIMIT_BYTES

        def read(idx=idx):  # every file is read once here: checked, and hashed
            for i in idx:
                item, label = cat.items[i], cat.labels[i]
                raw = _raw(item)
                hasher.add(raw, label, item.signer)
                yield item if isinstance(item, Clip) else Clip(raw, label, item.signer, item.name)

        if keep:
            out[part] = clips_to_dataset(list(read()), cat.class_names)
        elif part == "train":
            for _ in read():
                pass
            out[part] = ClipFileDataset([cat.items[i] for i in idx], [cat.labels[i] for i in idx], cat.class_names)
        else:
            out[part] = mapped_dataset(read(), len(idx), cat.class_names,
                                       Path(spill_dir) if spill_dir is not None else zoo_home() / "data")
    val, test = out["val"], out["test"]
    assert isinstance(val, SignDataset) and isinstance(test, SignDataset)  # only train is read while used
    return DataSplits(train=out["train"], val=val, test=test, class_names=list(cat.class_names),
                      spec=cat.canonical, fingerprint=hasher.hexdigest(), split=split)


def load_signflow_recordings(path) -> tuple[list[Clip], list[str]]:
    """SignFlow recordings (see :mod:`signflow_zoo.data.formats.recordings`), read into memory."""
    refs = index_recordings(Path(path))
    labels, names = _labels_of(refs)
    return _read_into_clips(refs, labels), names


def load_lsfb_isol(path) -> tuple[list[Clip], list[str]]:
    """Every instance of an LSFB-ISOL folder (see :mod:`signflow_zoo.data.formats.lsfb`), read into memory."""
    index = index_lsfb(path)
    labels, names = _labels_of(index.refs, index.class_names)
    return _read_into_clips(index.refs, labels), names


__all__ = [
    "SPEC_FORMS", "IN_MEMORY_LIMIT_BYTES", "DataSplits", "SignDataset", "ClipFileDataset", "Clip", "ClipRef",
    "RecordedClip", "clips_to_dataset", "mapped_dataset", "split_by_signer", "signer_split_indices", "parse_synthetic_spec",
    "load_clips", "load_data", "load_signflow_recordings", "load_lsfb_isol", "read_clip_file", "read_clips",
    "write_signflow_fixture", "write_lsfb_fixture", "write_pose_fixture",
]
