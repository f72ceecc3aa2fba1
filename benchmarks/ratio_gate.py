"""The performance regression gate's rules: the change against its base, measured in the same run.

No stored baseline: a ratio stored on one CPU does not hold on another (a streaming ratio baselined on AMD
Zen 5 read +63% on Zen 3 with no change of code), and CI runs on whatever machine kind it gets. So, as
``asv continuous`` does, the gate runs the base commit's code (``benchmarks/GATE_BASE``) and the working
tree's side by side on this machine, every backend of both versions in its own worker process and in one
interleaved schedule, so that machine drift and machine states hit both alike. Each check is paired by
round: in every round of the schedule the head's block and the base's block of one backend ran seconds
apart, so the ratio of their medians cancels what the machine did between rounds; the check is the median
of those per-round ratios with a bootstrap 95% interval over rounds (:func:`paired_ratio`). It fails only
when the whole interval lies above ``1 + margin``: a slowdown larger than the margin that the run cannot
explain by its own noise. A check past the margin is measured once more in fresh worker processes (an
ONNX Runtime session sometimes settles ~1.4x slower for its whole life; a regression slows both).

Checks:

* ``<preset>/b<batch>/<backend>``: every backend available here, head over base (kind ``backend``);
* ``pipeline/per-frame``: the streaming pipeline's ``process_frame`` with a model that costs nothing, head
  over base, alternating (kind ``pipeline``);
* ``harness/lightweight/b1/timing-loop:bare-ort-loop``: the harness's timing loop over a bare ONNX Runtime
  loop in one process, against a fixed ceiling (kind ``overhead``: a property of the code alone).

The margins (below) and the runs that chose them: benchmarks/SCHEDULE.md, "The gate".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

# a check fails when its interval's low end exceeds 1 + margin (overhead: when its value exceeds 1 + margin)
MARGINS = {"backend": 0.10, "pipeline": 0.15, "overhead": 0.07}


@dataclass
class Check:
    name: str  # e.g. "lightweight/b1/onnx-cpu"
    kind: str  # a key of MARGINS
    value: float  # head / base (overhead: timing loop / bare loop)
    lo: float | None = None  # 95% interval of value (None for overhead)
    hi: float | None = None
    detail: str = ""
    note: str = ""  # why not gated ("new": only the head has this backend)

    @property
    def limit(self) -> float:
        return 1.0 + MARGINS[self.kind]

    @property
    def verdict(self) -> str:
        if self.note:
            return "skip"
        if not math.isfinite(self.value):
            return "FAIL"
        if self.lo is None:
            return "FAIL" if self.value > self.limit else "pass"
        return "FAIL" if self.lo > self.limit else "pass"

    def line(self) -> str:
        if self.note:
            return f"{self.name}: not gated: {self.note}"
        if self.lo is None:
            return f"{self.name}: {self.value:.3f} (limit {self.limit:.3f})"
        change = 100 * (self.value - 1)
        return (f"{self.name}: head/base {self.value:.3f} [{self.lo:.3f}, {self.hi:.3f}] ({change:+.1f}%; "
                f"fails when the interval lies above {self.limit:.2f})")


def paired_ratio(head: Sequence[Sequence[float]], base: Sequence[Sequence[float]], n_boot: int = 2000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Median over rounds of (median of the head's block) / (median of the base's block of the same round),
    with a bootstrap interval resampling rounds. Blocks are paired by index: the schedule runs one block of
    each worker per round. NaNs when no round has both."""
    ratios = np.array([np.median(h) / np.median(b) for h, b in zip(head, base) if len(h) and len(b)], dtype=float)
    if not len(ratios):
        return math.nan, math.nan, math.nan
    point = float(np.median(ratios))
    rng = np.random.default_rng(seed)
    meds = np.median(ratios[rng.integers(0, len(ratios), size=(n_boot, len(ratios)))], axis=1)
    lo, hi = np.quantile(meds, [(1 - level) / 2, 1 - (1 - level) / 2])
    return point, float(min(lo, point)), float(max(hi, point))


def lower(a: Check, b: Check) -> Check:
    """Of two measurements of one check, the one that speaks more for the change (the lower interval)."""
    key = (lambda c: c.lo if c.lo is not None else c.value)
    return a if key(a) <= key(b) else b


def as_rows(checks: list[Check]) -> list[dict]:
    return [{**asdict(c), "limit": c.limit, "verdict": c.verdict} for c in checks]
