"""Batches for training and prediction: one DataLoader path for data sets in memory and on disk.

A sampler hands the data set whole index batches (``dataset[indices]`` returns the stacked batch), so an
in-memory set is sliced exactly as before and an on-disk set prepares a batch's features in one call, in
a worker. Shuffling draws ``rng.permutation(n)`` when a pass starts -- the same draws from the same
generator as the training loop made before it went through a DataLoader, so a seed gives the same
batches (and, with augmentation drawing from the same generator afterwards, the same training).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from signflow_zoo.common.errors import SignFlowError

# Workers for an on-disk set when the config does not say: the cores but one, at least one, up to 4. With a
# GPU the features must be computed beside it; on the 2-core development machine 0, 1 and 2 workers were
# within run-to-run noise of each other (benchmarks/RESULTS.md, "Training from disk").
MAX_DEFAULT_WORKERS = 4


class EpochBatches(Sampler):
    """Index batches of one pass over ``n`` items: a fresh ``rng.permutation(n)`` per pass, or in order."""

    def __init__(self, n: int, batch_size: int, rng: np.random.Generator | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.rng = n, batch_size, rng

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self):
        order = self.rng.permutation(self.n) if self.rng is not None else np.arange(self.n)
        for start in range(0, self.n, self.batch_size):
            yield order[start:start + self.batch_size]


def default_workers(dataset) -> int:
    """0 for a set in memory (slicing beats any worker); for one on disk, the cores but one (1 to 4)."""
    if getattr(dataset, "in_memory", True):
        return 0
    return max(1, min(MAX_DEFAULT_WORKERS, (os.cpu_count() or 1) - 1))


def _as_tensors(batch):
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in batch)


class Batches:
    """The batches of a DataLoader, pass after pass (``iter()`` once per pass). A user error raised in a
    worker (a file that changed since loading) comes out as the same one-line error, not wrapped in the
    worker's traceback text."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        try:
            yield from self.loader
        except SignFlowError as exc:
            text = str(exc)
            if "Original Traceback" not in text:
                raise
            original = text.rstrip().splitlines()[-1].partition(": ")[2]
            raise type(exc)(f"{original} (read by a DataLoader worker)") from None


def batch_loader(dataset, batch_size: int, rng: np.random.Generator | None = None, num_workers: int | None = None,
                 pin_memory: bool = False) -> Batches:
    """(features, mask, labels) tensors per batch, through a DataLoader; ``rng`` shuffles each pass.

    Workers (``num_workers``, default :func:`default_workers`) persist across passes.
    """
    workers = default_workers(dataset) if num_workers is None else int(num_workers)
    # Its own generator: each pass draws a worker seed from it, which must not advance torch's global RNG
    # (dropout and the model would then see other random numbers than without a DataLoader).
    return Batches(DataLoader(dataset, sampler=EpochBatches(len(dataset), batch_size, rng), batch_size=None,
                              collate_fn=_as_tensors, num_workers=workers, persistent_workers=workers > 0,
                              pin_memory=pin_memory, generator=torch.Generator()))
