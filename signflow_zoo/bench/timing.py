"""The timing loops the harness runs identically for every backend, and how it times them (:class:`TimingConfig`).

The harness times backends in *blocks*: a run of back-to-back calls of one backend, inside that
backend's own worker process (:mod:`signflow_zoo.bench.worker`), each call timed with the monotonic
nanosecond clock (and a device synchronize for asynchronous backends). How blocks of different
backends follow each other is the schedule (:mod:`signflow_zoo.bench.schedule`); the statistics of the
samples (p50 interval, noisy rule, valid tails) are in :mod:`signflow_zoo.results.latency`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from signflow_zoo.common.errors import SignFlowError

SCHEDULES = ("interleaved", "sequential")


@dataclass
class TimingConfig:
    """How the harness times every backend (the same for all of them).

    Defaults are justified by the measurements in ``benchmarks/SCHEDULE.md``.
    """

    warmup: int = 10  # untimed calls per backend and batch size before timing, at most ...
    warmup_time: float = 1.0  # ... or this many seconds of them (at least 2 calls), whichever comes first
    min_iters: int = 20  # timed calls per backend and batch size, at least ...
    min_time: float = 1.0  # ... and this many seconds of timed calls
    # calls at batch 1, where a p99 is what users decide on: 459 is the fewest for which the p99 has an upper
    # bound at 99% confidence (:func:`min_calls_for_tail`); 0 turns it off. Larger batches keep ``min_iters``.
    tail_iters: int = 460
    max_time: float = 120.0  # hard cap per backend and batch size: stops there, marked not valid if short
    schedule: str = "interleaved"  # "interleaved": blocks of each backend in turn; "sequential": one backend after another
    block_time: float = 0.1  # seconds of back-to-back calls in one block (at least one call)
    settle_time: float = 0.05  # idle gap after every block: 20 ms left torch-eager's p99 3x its solo p99 (SCHEDULE.md)
    discard: int = 1  # calls dropped at the start of each block (after a switch), when calls are short
    timeout: float = 300.0  # seconds one worker request may run past its planned duration before the worker is killed

    def validate(self) -> "TimingConfig":
        problems = []
        if self.warmup < 0:
            problems.append(f"warmup must be >= 0, got {self.warmup}")
        if self.min_iters < 1:
            problems.append(f"min-iters must be >= 1, got {self.min_iters}")
        if self.tail_iters < 0:
            problems.append(f"tail-iters must be >= 0, got {self.tail_iters}")
        for name in ("warmup_time", "min_time", "settle_time"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                problems.append(f"{name.replace('_', '-')} must be a number >= 0, got {v}")
        for name in ("max_time", "block_time", "timeout"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                problems.append(f"{name.replace('_', '-')} must be a number > 0, got {v}")
        if self.discard < 0:
            problems.append(f"discard must be >= 0, got {self.discard}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if problems:
            raise SignFlowError("timing options: " + "; ".join(problems))
        return self

    def calls_for(self, batch: int) -> int:
        """Timed calls wanted at this batch size: ``min_iters``, or ``tail_iters`` at batch 1."""
        return max(self.min_iters, self.tail_iters) if batch == 1 else self.min_iters


def time_block(fn: Callable[[], object], sync: Callable[[], None] | None, min_calls: int, min_seconds: float,
               discard: int = 0) -> tuple[list[int], int]:
    """Call ``fn`` back to back: ``discard`` untimed-for-statistics calls, then at least ``min_calls``
    timed calls and ``min_seconds`` of them. Returns (timed ns per call, calls discarded)."""
    clock = time.perf_counter_ns
    for _ in range(discard):
        fn()
        if sync is not None:
            sync()
    out: list[int] = []
    spent, min_ns = 0, int(min_seconds * 1e9)
    while len(out) < min_calls or spent < min_ns:
        t0 = clock()
        fn()
        if sync is not None:
            sync()
        dt = clock() - t0
        out.append(dt)
        spent += dt
    return out, discard


def warm_up(fn: Callable[[], object], sync: Callable[[], None] | None, max_calls: int,
            max_seconds: float) -> list[int]:
    """Calls not counted in the statistics: ``max_calls`` at most, stopping after ``max_seconds`` (but at
    least 2 calls when ``max_calls`` >= 2). Returns each call's ns (their median estimates a call's cost:
    the first calls may include one-off work such as graph capture)."""
    clock = time.perf_counter_ns
    out: list[int] = []
    start = clock()
    while len(out) < max_calls:
        t0 = clock()
        fn()
        if sync is not None:
            sync()
        out.append(clock() - t0)
        if len(out) >= 2 and clock() - start >= max_seconds * 1e9:
            break
    return out


def reference_workload(repeats: int = 15, size: int = 384) -> float:
    """Median ms of a fixed float32 matrix product (numpy, all cores): the machine's speed right now.

    Timed at the start and end of a bench and between presets; the ratio between readings is the drift
    that the bench reports, and p50s divided by the nearest reading compare across runs and hosts.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(4):
            a @ b
        times.append((time.perf_counter_ns() - t0) / 4e6)
    return float(np.median(times))
