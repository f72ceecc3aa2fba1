"""Data sets ready for a model, in memory (:class:`SignDataset`) or read from disk batch by batch
(:class:`ClipFileDataset`), the signer split, and the three splits together (:class:`DataSplits`).

Both data sets index the same way, so one DataLoader path serves them (``signflow_zoo.data.batches``):
``ds[i]`` -> (features [SEQ_LEN, 469] float32, mask [SEQ_LEN] bool, label int) and ``ds[indices]`` -> the
same stacked for a batch. A ClipFileDataset computes the features of a batch when it is asked for it
(in a DataLoader worker), so a training split bigger than memory never has to fit in it. A SignDataset whose
features are memory-mapped from a file (:func:`mapped_dataset`: big validation and test splits) is indexed
like any other: only the pages read are in memory, and the system may drop them again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from signflow_zoo.common.errors import DataError, InputError
from signflow_zoo.data.features import FEATURE_DIM, FEATURE_VERSION, SEQ_LEN, prepare_clips
from signflow_zoo.data.formats import ClipRef, read_ref
from signflow_zoo.data.clip import Clip

DEFAULT_VAL_FRACTION = 0.15
DEFAULT_TEST_FRACTION = 0.15


def _as_indices(index, n: int) -> np.ndarray | None:
    """None for a single integer index, else the indices (of ``n`` items) as int64."""
    if isinstance(index, (int, np.integer)):
        return None
    if isinstance(index, slice):
        return np.arange(n)[index]
    idx = np.asarray(index)
    return np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64).reshape(-1)


@dataclass
class SignDataset:
    """Fixed-length clips ready for a model: features [N, SEQ_LEN, 469] float32, mask [N, SEQ_LEN] bool
    (True = a frame where something was detected), labels [N] int64, the signer of each clip."""

    features: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    signers: list[str]

    in_memory = True  # read by the DataLoader set-up: no workers needed

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

    def __getitem__(self, index):
        idx = _as_indices(index, len(self))
        if idx is None:
            return self.features[index], self.mask[index], int(self.labels[index])
        return self.features[idx], self.mask[idx], self.labels[idx].astype(np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def memory_mapped(self) -> bool:
        """Whether the features are memory-mapped from a file (:func:`mapped_dataset`) rather than held."""
        return isinstance(self.features, np.memmap)

    def relabelled(self, order: np.ndarray, class_names: Sequence[str]) -> SignDataset:
        """The same clips (arrays shared, not copied), label ``i`` renumbered ``order[i]`` of ``class_names``."""
        return dataclasses.replace(self, labels=np.asarray(order, np.int64)[self.labels], class_names=list(class_names))

    def subset(self, idx) -> SignDataset:
        """The clips at ``idx`` (indices or a boolean mask), with the same class list."""
        idx = _as_indices(np.asarray(idx), len(self))
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


class ClipFileDataset:
    """A split read from its files when a batch is asked for: only the clip references live in memory.

    The files were all read once when the data set was loaded (checked, and hashed into the data
    fingerprint), so a batch read later fails only if a file changed since. Features are the same values
    :func:`clips_to_dataset` computes for the same clips (``materialize`` gives that SignDataset).
    """

    in_memory = False

    def __init__(self, refs: Sequence[ClipRef], labels: Sequence[int] | np.ndarray, class_names: Sequence[str],
                 seq_len: int = SEQ_LEN):
        self.refs = list(refs)
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.class_names = list(class_names)
        self.signers = [r.signer for r in self.refs]
        self.seq_len = seq_len
        if len(self.labels) != len(self.refs):
            raise DataError(f"ClipFileDataset: {len(self.labels)} labels for {len(self.refs)} clips")

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _prepare(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        refs = [self.refs[i] for i in idx]
        try:
            return prepare_clips([read_ref(r) for r in refs], self.seq_len, sources=[f"clip {r.name}" for r in refs])
        except InputError as exc:
            raise DataError(str(exc)) from None

    def __getitem__(self, index):
        idx = _as_indices(index, len(self))
        if idx is None:
            features, mask = self._prepare(np.array([index]))
            return features[0], mask[0], int(self.labels[index])
        features, mask = self._prepare(idx)
        return features, mask, self.labels[idx]

    @property
    def features(self) -> _Prepared:
        """``features[i:j]`` (or any index): those clips' features, prepared when asked for."""
        return _Prepared(self, 0)

    @property
    def mask(self) -> _Prepared:
        return _Prepared(self, 1)

    def subset(self, idx) -> ClipFileDataset:
        idx = _as_indices(np.asarray(idx), len(self))
        return ClipFileDataset([self.refs[i] for i in idx], self.labels[idx], self.class_names, self.seq_len)

    def fingerprint(self) -> str:
        """sha256 of the clips as read, their labels, signers and the class names (reads every file)."""
        hasher = ClipHasher(self.class_names, "", self.seq_len)
        for ref, label in zip(self.refs, self.labels):
            hasher.add(read_ref(ref), int(label), ref.signer)
        return hasher.hexdigest()

    def materialize(self) -> SignDataset:
        """All clips read and prepared into memory."""
        features, mask = self._prepare(np.arange(len(self)))
        return SignDataset(features, mask, self.labels.copy(), list(self.class_names), list(self.signers))

    def relabelled(self, order: np.ndarray, class_names: Sequence[str]) -> ClipFileDataset:
        """The same clips, label ``i`` renumbered ``order[i]`` of ``class_names``."""
        return ClipFileDataset(self.refs, np.asarray(order, np.int64)[self.labels], class_names, self.seq_len)


class _Prepared:
    """One column (features or mask) of a ClipFileDataset, indexable like the SignDataset array it stands for."""

    def __init__(self, dataset: ClipFileDataset, column: int):
        self._dataset, self._column = dataset, column

    def __len__(self) -> int:
        return len(self._dataset)

    @property
    def shape(self) -> tuple[int, ...]:
        n, t = len(self._dataset), self._dataset.seq_len
        return (n, t, FEATURE_DIM) if self._column == 0 else (n, t)

    def __getitem__(self, index) -> np.ndarray:
        return self._dataset[index][self._column]


@dataclass
class DataSplits:
    """Train/val/test, the spec they came from, how they were split (``split``, e.g.
    ``signer-split(seed=0, val=0.15, test=0.15)`` or ``lsfb-official:train/test, val=fold_4``) and one hash
    over all of it. ``train`` may be a :class:`ClipFileDataset`; val and test are SignDatasets, held in memory
    or memory-mapped from disk (:func:`mapped_dataset`)."""

    train: SignDataset | ClipFileDataset
    val: SignDataset
    test: SignDataset
    class_names: list[str]
    spec: str
    fingerprint: str = field(default="")
    split: str = ""

    def __post_init__(self):
        if not self.fingerprint:
            h = hashlib.sha256(self.split.encode())
            for part in (self.train, self.val, self.test):
                h.update(part.fingerprint().encode())
            self.fingerprint = h.hexdigest()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def in_label_order(self, class_names: Sequence[str]) -> DataSplits:
        """The same splits with labels numbered by ``class_names``, the same classes in another order (a model's
        output order); the fingerprint stays the data set's. :class:`DataError` when the classes differ."""
        names = list(class_names)
        if names == self.class_names:
            return self
        if sorted(names) != sorted(self.class_names) or len(set(names)) != len(names):
            raise DataError(f"{self.spec}: classes {self.class_names} are not a reordering of {names}")
        position = {n: i for i, n in enumerate(names)}
        order = np.array([position[n] for n in self.class_names], np.int64)
        return dataclasses.replace(self, train=self.train.relabelled(order, names), val=self.val.relabelled(order, names),
                                   test=self.test.relabelled(order, names), class_names=names)


class ClipHasher:
    """The data fingerprint of a loaded data set, from the raw clips as read (they fix the features, given
    FEATURE_VERSION and SEQ_LEN), their labels and signers, the class names and the split: the same whether
    the training split is held in memory or read from disk."""

    def __init__(self, class_names: Sequence[str], split: str, seq_len: int = SEQ_LEN):
        self._h = hashlib.sha256(f"{FEATURE_VERSION}|{seq_len}|{split}\0".encode())
        self._h.update("\n".join(class_names).encode() + b"\0")

    def part(self, name: str) -> None:
        self._h.update(f"\0part:{name}\0".encode())

    def add(self, raw: np.ndarray, label: int, signer: str) -> None:
        raw = np.ascontiguousarray(raw, dtype=np.float32)
        self._h.update(f"{raw.shape}|{int(label)}|{signer}\0".encode())
        self._h.update(raw.tobytes())

    def hexdigest(self) -> str:
        return self._h.hexdigest()


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


SPILL_CHUNK = 256  # clips prepared at a time into a memory-mapped split (about 30 MB of features)


def mapped_dataset(clips: Iterable[Clip], n: int, class_names: Sequence[str], folder: str | Path,
                   seq_len: int = SEQ_LEN) -> SignDataset:
    """The SignDataset of ``n`` clips whose features and mask live in files, memory-mapped: computed
    :data:`SPILL_CHUNK` clips at a time (the same values as :func:`clips_to_dataset`), so neither the clips nor
    their features are ever all in memory. ``clips`` is consumed once, in order (it may read each file as it goes).

    The files are unnamed temporary files in ``folder`` (created if needed): nothing is left behind, even by a
    process that is killed, and the space is freed when the arrays are no longer referenced. The arrays are
    mapped copy-on-write: writable like arrays in memory, a write never reaching the file.
    """
    if n < 1:
        raise DataError(f"mapped_dataset: needs at least one clip, got {n}")
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        ffile = tempfile.TemporaryFile(dir=folder, prefix=".split-features-")
        mfile = tempfile.TemporaryFile(dir=folder, prefix=".split-mask-")
    except OSError as exc:
        raise DataError(f"{folder}: cannot hold a split's features on disk there: {exc}") from None
    shape = (n, _check_seq_len(seq_len), FEATURE_DIM)
    labels: list[int] = []
    signers: list[str] = []
    with ffile, mfile:
        features = np.memmap(ffile, np.float32, "w+", shape=shape)
        mask = np.memmap(mfile, np.bool_, "w+", shape=shape[:2])
        pending: list[Clip] = []

        def write() -> None:
            start = len(labels) - len(pending)
            part = clips_to_dataset(pending, class_names, seq_len)
            features[start:len(labels)] = part.features
            mask[start:len(labels)] = part.mask
            pending.clear()

        for clip in clips:
            if len(labels) == n:
                raise DataError(f"mapped_dataset: more than the {n} clips announced")
            pending.append(clip)
            labels.append(int(clip.label))
            signers.append(clip.signer)
            if len(pending) == SPILL_CHUNK:
                write()
        if pending:
            write()
        if len(labels) != n:
            raise DataError(f"mapped_dataset: {len(labels)} clips, {n} announced")
        features.flush()
        mask.flush()
        del features, mask  # the writable maps; the read maps below keep the files (their own descriptors)
        return SignDataset(features=np.memmap(ffile, np.float32, "c", shape=shape),
                           mask=np.memmap(mfile, np.bool_, "c", shape=shape[:2]),
                           labels=np.array(labels, dtype=np.int64), class_names=list(class_names), signers=signers)


def _check_seq_len(seq_len: int) -> int:
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise DataError(f"seq_len must be a positive integer, got {seq_len!r}")
    return int(seq_len)


def signer_split_indices(
    signers: Sequence[str],
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
) -> tuple[list[int], list[int], list[int]]:
    """Positions of (train, val, test) so that no signer appears in two of them.

    Each split with a positive fraction gets at least one signer; train keeps the rest.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"split fractions must be in [0, 1) and sum below 1, got val={val_fraction}, "
                        f"test={test_fraction}")
    names = sorted(set(signers))
    n_val = max(1, round(val_fraction * len(names))) if val_fraction > 0 else 0
    n_test = max(1, round(test_fraction * len(names))) if test_fraction > 0 else 0
    if len(names) < n_val + n_test + 1:
        raise DataError(
            f"splitting by signer needs at least {n_val + n_test + 1} signers (train, val and test must not "
            f"share a signer), but the data has {len(names)}: {', '.join(names[:10]) or 'none'}; "
            f"add signers, or give each recording its own signer"
        )
    order = np.random.default_rng(seed).permutation(len(names))
    test_set = {names[i] for i in order[:n_test]}
    val_set = {names[i] for i in order[n_test : n_test + n_val]}
    train = [i for i, s in enumerate(signers) if s not in test_set and s not in val_set]
    val = [i for i, s in enumerate(signers) if s in val_set]
    test = [i for i, s in enumerate(signers) if s in test_set]
    return train, val, test


def split_by_signer(
    clips: Sequence,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
) -> tuple[list, list, list]:
    """Split clips (anything with a ``signer``) into (train, val, test) with no signer in two of them."""
    parts = signer_split_indices([c.signer for c in clips], val_fraction, test_fraction, seed)
    train, val, test = ([clips[i] for i in idx] for idx in parts)
    return train, val, test
