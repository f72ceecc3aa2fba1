"""Folders of labelled clips: SignFlow recordings (``.npy``) and ``.pose`` files.

Two layouts, checked in this order:

1. ``labels.csv`` with columns ``file,label[,signer]``: ``file`` is a path relative to the folder (a ``.npy``
   recording [frames, 225], or a ``.pose`` file for ``pose:``). Without ``signer`` every recording counts
   as its own signer.
2. No ``labels.csv`` (``.npy`` only): the file names carry the label, as SignFlow itself saves recorded
   signs (its feedback store writes ``<sign>_<12 hex digits>.npy``: the sign's slug with every character
   other than letters, digits, ``-`` and ``_`` replaced by ``_``, then ``_`` and the first 12 hex digits of
   a uuid4). The label is everything before the last ``_<12 hex>``; each recording is its own signer.

Entries that lead outside the folder (absolute paths, ``..``, symbolic links pointing out) are refused.
"""

from __future__ import annotations

import csv
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from signflow_zoo.common.errors import DataError
from signflow_zoo.data.clip import Clip
from signflow_zoo.data.formats.files import ClipRef, inside, read_csv, require_dir

LABELS_CSV = "labels.csv"
SLUG_FILE = re.compile(r"^(?P<slug>.+)_(?P<uid>[0-9a-f]{12})\.npy$")


def slug_of(label: str) -> str:
    """A label as SignFlow writes it into a recording's file name."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label)


def index_labelled_folder(root: Path, suffixes: Sequence[str], what: str) -> list[ClipRef]:
    """The clips ``root/labels.csv`` lists; each file must end in one of ``suffixes``."""
    root = require_dir(Path(root), what)
    csv_path = root / LABELS_CSV
    refs = []
    for line, row in read_csv(csv_path, ["file", "label"]):
        file, label = row.get("file", ""), row.get("label", "")
        where = f"{csv_path}, line {line}"
        if not file or not label:
            raise DataError(f"{where}: empty 'file' or 'label'")
        path = inside(root, file, where)
        suffix = path.suffix.lower()
        if suffix not in suffixes:
            raise DataError(f"{where}: entry {file!r} is not a {' or '.join(suffixes)} file"
                            + (" (use pose:DIR for .pose files)" if suffix == ".pose" else ""))
        kind = "pose" if suffix == ".pose" else "npy"
        refs.append(ClipRef(kind, (path,), Path(file).stem, label, row.get("signer") or Path(file).stem, where))
    return refs


def index_slug_folder(root: Path) -> list[ClipRef]:
    """SignFlow's own layout: ``<slug>_<12 hex>.npy`` files, the label being the slug."""
    root = require_dir(Path(root), "SignFlow recordings")
    files = sorted(p.name for p in root.iterdir() if p.suffix.lower() == ".npy")
    if not files:
        raise DataError(f"{root}: no {LABELS_CSV} and no recordings named <sign>_<12 hex digits>.npy (as SignFlow "
                        f"saves them); add a {LABELS_CSV} with columns file,label[,signer]")
    refs = []
    for name in files:
        where = f"{root} (no {LABELS_CSV}: label from the file name)"
        match = SLUG_FILE.match(name)
        if not match:
            raise DataError(f"{root / name}: cannot tell its sign: without {LABELS_CSV} a recording must be named "
                            "<sign>_<12 hex digits>.npy as SignFlow saves them (e.g. bonjour_3f2a9c0d1e4b.npy); "
                            f"or add a {LABELS_CSV} with columns file,label[,signer]")
        path = inside(root, name, where)
        refs.append(ClipRef("npy", (path,), Path(name).stem, match["slug"], Path(name).stem, where))
    return refs


def index_recordings(root: Path) -> list[ClipRef]:
    """SignFlow recordings: ``labels.csv`` if the folder has one, else labels from the file names."""
    root = require_dir(Path(root), "SignFlow recordings")
    if (root / LABELS_CSV).exists():
        return index_labelled_folder(root, (".npy",), "SignFlow recordings")
    return index_slug_folder(root)


def write_signflow_fixture(directory, clips: Sequence[Clip], class_names: Sequence[str],
                           labels_csv: bool = True) -> Path:
    """Write clips as SignFlow recordings; returns the directory.

    ``labels_csv=True``: ``NNNNN_<name>.npy`` + ``labels.csv`` (file,label,signer). ``False``: SignFlow's own
    naming, ``<slug>_<12 hex>.npy`` and no CSV (the hex part is drawn from the clip's index, so it is stable).
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, clip in enumerate(clips):
        label = class_names[clip.label]
        if labels_csv:
            file = f"{i:05d}_{slug_of(clip.name or label)}.npy"
        else:
            file = f"{slug_of(label)}_{uuid.UUID(int=i + 1).hex[-12:]}.npy"
        np.save(root / file, np.asarray(clip.raw, dtype=np.float32))
        rows.append([file, label, clip.signer])
    if labels_csv:
        with (root / LABELS_CSV).open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file", "label", "signer"])
            writer.writerows(rows)
    return root
