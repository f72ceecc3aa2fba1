"""Latency statistics: percentiles, bootstrap intervals, the noisy rule and valid tails.

A p50 carries a 95% confidence interval bootstrapped over blocks (a block is a run of back-to-back calls of
one backend: the unit that machine drift and switches act on, so resampling single calls would understate the
uncertainty). The noisy rule is :data:`NOISY_RULE`; a result cut short by ``max_time`` before ``min_iters`` is
not *valid* (MLPerf LoadGen's INVALID): it is reported, never silently used.

A tail percentile is claimed only when the call count supports it: :func:`tail_upper_bound` is the upper bound
of a percentile at 99% confidence by LoadGen's early-stopping rule (an order statistic chosen from the binomial
distribution of calls above the true percentile), ``None`` below :func:`min_calls_for_tail` calls (459 for a
p99). ``LatencyStats.p99_upper_ms`` holds it. The timing loops that produce the samples are in
:mod:`signflow_zoo.bench.timing`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

import numpy as np

NOISY_CI = 0.10  # relative width (hi - lo) / p50 of the p50's 95% interval above which a result is noisy
NOISY_TAIL = 3.0  # p99 / p50 above which a result is noisy
NOISY_RULE = (f"noisy: the p50's 95% bootstrap interval is wider than {NOISY_CI:.0%} of the p50, "
              f"or p99 > {NOISY_TAIL:g} x p50")
BOOTSTRAP_SAMPLES = 1000
TAIL_PERCENTILE = 0.99  # the tail a latency cell reports ...
TAIL_CONFIDENCE = 0.99  # ... and the confidence its upper bound holds at (LoadGen's early stopping)


def _binom_cdf_all(n: int, p: float) -> np.ndarray:
    """P(X <= k) for k = 0..n, X ~ Binomial(n, p): log pmf by cumulative sums, normalised at its peak
    (no overflow or underflow for millions of calls)."""
    j = np.arange(1, n + 1, dtype=np.float64)
    log_choose = np.concatenate([[0.0], np.cumsum(np.log((n - j + 1) / j))])
    k = np.arange(n + 1, dtype=np.float64)
    logpmf = log_choose + k * math.log(p) + (n - k) * math.log1p(-p)
    pmf = np.exp(logpmf - logpmf.max())
    return np.cumsum(pmf) / pmf.sum()


def tail_rank(n: int, q: float = TAIL_PERCENTILE, confidence: float = TAIL_CONFIDENCE) -> int | None:
    """1-based rank k of the order statistic that bounds the q-quantile from above with ``confidence``
    (P(x_(k) >= true quantile) = P(Binomial(n, q) <= k - 1) >= confidence), or None when even the largest
    of ``n`` calls does not (too few calls: MLPerf LoadGen's early-stopping rule)."""
    if n < min_calls_for_tail(q, confidence):
        return None
    cdf = _binom_cdf_all(n, q)
    k = int(np.searchsorted(cdf, confidence)) + 1  # first k - 1 with cdf >= confidence
    return k if k <= n else None


def min_calls_for_tail(q: float = TAIL_PERCENTILE, confidence: float = TAIL_CONFIDENCE) -> int:
    """Fewest calls for which :func:`tail_rank` exists: q^n <= 1 - confidence (459 for a p99 at 99%)."""
    return math.ceil(math.log(1 - confidence) / math.log(q))


def tail_upper_bound(sorted_vals: Sequence[float], q: float = TAIL_PERCENTILE,
                     confidence: float = TAIL_CONFIDENCE) -> float | None:
    """Upper bound of the q-quantile at ``confidence`` from already sorted values; None with too few."""
    k = tail_rank(len(sorted_vals), q, confidence)
    return None if k is None else float(sorted_vals[k - 1])


def percentile(sorted_vals: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (q in 0..100); NaN when empty."""
    if not len(sorted_vals):
        return math.nan
    k = (len(sorted_vals) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return float(sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo))


def bootstrap_median_ci(blocks: Sequence[Sequence[float]], n_boot: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float]:
    """95% interval of the median of all values, resampling whole blocks with replacement.

    With a single block, single values are resampled instead (no block structure to keep).
    """
    arrays = [np.asarray(b, dtype=np.float64) for b in blocks if len(b)]
    if not arrays:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    if len(arrays) == 1:
        vals = arrays[0]
        meds = np.median(vals[rng.integers(0, len(vals), size=(n_boot, len(vals)))], axis=1)
    else:
        meds = np.empty(n_boot)
        picks = rng.integers(0, len(arrays), size=(n_boot, len(arrays)))
        for i, row in enumerate(picks):
            meds[i] = np.median(np.concatenate([arrays[j] for j in row]))
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(meds, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ratio_ci(num: Sequence[Sequence[float]], den: Sequence[Sequence[float]], n_boot: int = BOOTSTRAP_SAMPLES,
                       seed: int = 1, level: float = 0.95) -> tuple[float, float, float]:
    """median(num) / median(den) and its 95% interval, resampling the blocks of each side independently."""
    num_arrays = [np.asarray(b, dtype=np.float64) for b in num if len(b)]
    den_arrays = [np.asarray(b, dtype=np.float64) for b in den if len(b)]
    if not num_arrays or not den_arrays:
        return math.nan, math.nan, math.nan
    point = float(np.median(np.concatenate(num_arrays)) / np.median(np.concatenate(den_arrays)))
    rng = np.random.default_rng(seed)

    def medians(blocks):
        if len(blocks) == 1:
            vals = blocks[0]
            return np.median(vals[rng.integers(0, len(vals), size=(n_boot, len(vals)))], axis=1)
        picks = rng.integers(0, len(blocks), size=(n_boot, len(blocks)))
        return np.array([np.median(np.concatenate([blocks[j] for j in row])) for row in picks])

    ratios = medians(num_arrays) / medians(den_arrays)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(ratios, [alpha, 1.0 - alpha])
    return point, float(lo), float(hi)


@dataclass
class LatencyStats:
    """One backend at one batch size: the distribution of per-call latencies (ms)."""

    batch: int
    iterations: int
    blocks: int
    total_s: float
    p50_ms: float
    p50_ci_ms: tuple[float, float]
    p90_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float
    min_ms: float
    max_ms: float
    cv: float
    throughput_seq_s: float
    noisy: bool
    noisy_why: str
    valid: bool  # False when cut short by max_time before min_iters (LoadGen's INVALID)
    discarded: int = 0  # calls dropped after switches (not in the statistics)
    # upper bound of the p99 at 99% confidence (LoadGen's early stopping); None: too few calls to claim a p99
    p99_upper_ms: float | None = None

    @property
    def n(self) -> int:
        """Timed calls in the statistics."""
        return self.iterations

    @property
    def p99_valid(self) -> bool:
        """Enough calls for the p99 to be claimed (its upper bound exists)."""
        return self.p99_upper_ms is not None

    def to_dict(self) -> dict:
        from dataclasses import asdict

        d = asdict(self)
        d["p50_ci_ms"] = list(self.p50_ci_ms)
        d["n"] = self.n
        return d


def summarize(blocks_ns: Sequence[Sequence[int]], batch: int, min_iters: int = 1, discarded: int = 0) -> LatencyStats:
    """Statistics of timed calls given per block (ns), with the p50's bootstrap interval and the noisy rule."""
    blocks_ms = [[v / 1e6 for v in b] for b in blocks_ns if len(b)]
    ms = [v for b in blocks_ms for v in b]
    if not ms:
        raise ValueError("summarize: no timed calls")
    s = sorted(ms)
    mean = statistics.fmean(ms)
    stdev = statistics.stdev(ms) if len(ms) > 1 else 0.0
    p50, p99 = percentile(s, 50), percentile(s, 99)
    lo, hi = bootstrap_median_ci(blocks_ms)
    lo, hi = min(lo, p50), max(hi, p50)  # the point estimate lies in its interval, float rounding aside
    why = []
    if p50 > 0 and (hi - lo) / p50 > NOISY_CI:
        why.append(f"p50 interval {lo:.3g}-{hi:.3g} ms is {100 * (hi - lo) / p50:.0f}% of the p50")
    if p50 > 0 and p99 / p50 > NOISY_TAIL:
        why.append(f"p99 is {p99 / p50:.1f}x the p50")
    return LatencyStats(
        batch=batch, iterations=len(ms), blocks=len(blocks_ms), total_s=sum(ms) / 1e3, p50_ms=p50,
        p50_ci_ms=(lo, hi), p90_ms=percentile(s, 90), p99_ms=p99, mean_ms=mean, stdev_ms=stdev, min_ms=s[0],
        max_ms=s[-1], cv=stdev / mean if mean > 0 else 0.0, throughput_seq_s=batch * 1e3 / mean if mean > 0 else 0.0,
        noisy=bool(why), noisy_why="; ".join(why), valid=len(ms) >= min_iters, discarded=discarded,
        p99_upper_ms=tail_upper_bound(s),
    )
