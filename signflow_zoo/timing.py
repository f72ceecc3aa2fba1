"""Latency measurement owned by the harness and identical for every backend.

Warm-up, then interleaved rounds across backends (rotating the order each round, so that machine
drift hits all alike) until every backend has at least ``min_iters`` timed calls *and* ``min_time``
seconds of timed work. Each call is timed with the monotonic nanosecond clock, synchronizing the device
of asynchronous backends. A result whose spread is too wide is flagged ``noisy``.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

NOISY_CV = 0.25  # coefficient of variation above which a latency is flagged noisy
NOISY_TAIL = 4.0  # p99 / p50 above which a latency is flagged noisy


@dataclass
class TimingConfig:
    warmup: int = 10  # untimed calls per backend before timing, at most ...
    warmup_time: float = 1.0  # ... or this many seconds of them (at least 2 calls), whichever comes first
    min_iters: int = 20  # timed calls per backend, at least
    min_time: float = 1.0  # seconds of timed calls per backend, at least
    round_iters: int = 10  # calls per backend per interleaved round
    max_time: float = 120.0  # hard cap per backend (a very slow backend stops here and is marked short)

    def validate(self) -> "TimingConfig":
        from .errors import SignFlowError

        if self.warmup < 0 or self.min_iters < 1 or self.min_time < 0 or self.round_iters < 1 or self.max_time <= 0:
            raise SignFlowError(
                f"timing options must be warmup >= 0, min-iters >= 1, min-time >= 0, got warmup={self.warmup}, "
                f"min_iters={self.min_iters}, min_time={self.min_time}"
            )
        return self


@dataclass
class LatencyStats:
    batch: int
    iterations: int
    total_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float
    min_ms: float
    max_ms: float
    cv: float
    throughput_seq_s: float
    noisy: bool
    short: bool = False  # stopped by max_time before min_iters
    samples_ms: list[float] = field(default_factory=list, repr=False)

    def to_dict(self, samples: bool = False) -> dict:
        d = asdict(self)
        if not samples:
            d.pop("samples_ms")
        return d


def percentile(sorted_vals: list[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (q in 0..100)."""
    if not sorted_vals:
        return math.nan
    k = (len(sorted_vals) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def summarize(samples_ns: list[int], batch: int, short: bool = False) -> LatencyStats:
    ms = [s / 1e6 for s in samples_ns]
    s = sorted(ms)
    mean = statistics.fmean(ms)
    stdev = statistics.stdev(ms) if len(ms) > 1 else 0.0
    p50 = percentile(s, 50)
    cv = stdev / mean if mean > 0 else 0.0
    p99 = percentile(s, 99)
    return LatencyStats(
        batch=batch, iterations=len(ms), total_s=sum(ms) / 1e3, p50_ms=p50, p90_ms=percentile(s, 90), p99_ms=p99,
        mean_ms=mean, stdev_ms=stdev, min_ms=s[0], max_ms=s[-1], cv=cv,
        throughput_seq_s=batch * 1e3 / mean if mean > 0 else 0.0,
        noisy=bool(cv > NOISY_CV or (p50 > 0 and p99 / p50 > NOISY_TAIL)), short=short, samples_ms=ms,
    )


def time_calls(fn: Callable[[], object], sync: Callable[[], None] | None, n: int, out: list[int]) -> int:
    """Time ``n`` calls of ``fn`` one by one; append ns to ``out``; return ns spent."""
    clock = time.perf_counter_ns
    spent = 0
    if sync is None:
        for _ in range(n):
            t0 = clock()
            fn()
            dt = clock() - t0
            out.append(dt)
            spent += dt
    else:
        for _ in range(n):
            t0 = clock()
            fn()
            sync()
            dt = clock() - t0
            out.append(dt)
            spent += dt
    return spent


def measure_interleaved(
    calls: dict[str, tuple[Callable[[], object], Callable[[], None] | None]],
    batch: int,
    config: TimingConfig,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, LatencyStats]:
    """Time every named call the same way, in interleaved rounds. ``calls[name] = (fn, sync or None)``."""
    config.validate()
    names = list(calls)
    samples: dict[str, list[int]] = {n: [] for n in names}
    spent: dict[str, int] = {n: 0 for n in names}
    for name in names:  # warm-up: a count, capped by time so that slow calls do not warm up for long
        fn, sync = calls[name]
        start = time.perf_counter()
        for i in range(config.warmup):
            fn()
            if i >= 1 and time.perf_counter() - start >= config.warmup_time:
                break
        if sync and config.warmup:
            sync()
    min_ns, max_ns = int(config.min_time * 1e9), int(config.max_time * 1e9)

    def done(n: str) -> bool:
        return (len(samples[n]) >= config.min_iters and spent[n] >= min_ns) or spent[n] >= max_ns

    rnd = 0
    while not all(done(n) for n in names):
        order = names[rnd % len(names):] + names[: rnd % len(names)]
        for name in order:
            if done(name):
                continue
            fn, sync = calls[name]
            spent[name] += time_calls(fn, sync, config.round_iters, samples[name])
        rnd += 1
        if on_round:
            on_round(rnd)
    return {n: summarize(samples[n], batch, short=len(samples[n]) < config.min_iters) for n in names}
