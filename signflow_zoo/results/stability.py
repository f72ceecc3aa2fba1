"""Run stability, as a result records it: the readings of the reference workload, their spread and verdict.

The reference and the monitor that reads it during a bench are in :mod:`signflow_zoo.bench.stability`, which
also holds the measurements behind :data:`THRESHOLD` and the spread rule (:func:`reference_spread`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

WIDTH = 384  # hidden width of the reference graph ...
LAYERS = 4  # ... its MatMul + Add + Gelu layers ...
BATCH, FRAMES = 4, 64  # ... and its input [BATCH, FRAMES, WIDTH]: about 1.2 ms a call on two quiet cores here
OPSET = 20  # Gelu is an ONNX operator from opset 20
WARMUP_CALLS = 3
TIMED_CALLS = 15  # a reading is the median of these: one stray slow call does not move it
MIN_INTERVAL_S = 1.0  # between rounds, at most one reading a second
ROBUST_FROM = 10  # readings from which the spread is p90 / p10 instead of slowest / fastest
THRESHOLD = 1.25  # a run whose reference spread is above this is "unstable" (measurements above)
REFERENCE = (f"ONNX Runtime CPU session, {LAYERS} x (MatMul {WIDTH}x{WIDTH} + Add + Gelu) on a float32 "
             f"[{BATCH}, {FRAMES}, {WIDTH}] input at the bench's thread count; a reading is the median ms of "
             f"{TIMED_CALLS} calls after {WARMUP_CALLS} warm-up calls")


def reference_spread(ms: list[float | None]) -> float | None:
    """How far the reference moved during a run: slowest reading / fastest, or p90 / p10 of the readings from
    :data:`ROBUST_FROM` readings on; None with fewer than 2 readings (non-positive or non-finite ones are left out).

    Slowest / fastest while readings are few (a short bench: start, a few rounds, end), so that any change of
    state counts; p90 / p10 once there are many (one a second in a long bench), so that one stray reading (a
    process elsewhere for a second) does not decide the verdict while a state that lasts a tenth of the run does.
    """
    vals = sorted(v for v in (_ms(x) for x in ms) if v is not None)
    if len(vals) < 2:
        return None
    if len(vals) >= ROBUST_FROM:
        lo, hi = np.percentile(vals, [10, 90])
        return float(hi / lo)
    return vals[-1] / vals[0]


def _ms(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def status_of(spread: float | None, threshold: float = THRESHOLD) -> str:
    """ "unstable" when the spread is past ``threshold``, "stable" when not, "unknown" without a spread."""
    if spread is None:
        return "unknown"
    return "unstable" if spread > threshold else "stable"


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Stability:
    """The run's stability: its reference readings and the verdict on them (the result file's ``stability``).

    ``status`` and ``reference_spread`` are always computed from the readings and the threshold the run was
    judged by, never read back as written."""

    # {"at": "start" | "<preset> b<B>" (between rounds) | "after <preset>" (the last also " (end)"), "ms", "time"}
    readings: list[dict[str, Any]] = field(default_factory=list)
    threshold: float = THRESHOLD
    reference: str = REFERENCE  # what the workload is ("" for a file from before run stability: nothing measured)

    @property
    def spread(self) -> float | None:
        return reference_spread([r.get("ms") for r in self.readings])

    @property
    def status(self) -> str:
        return status_of(self.spread, self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reference_spread": self.spread, "threshold": self.threshold,
                "reference": self.reference, "readings": list(self.readings)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Stability":
        """From a result file; a file without ``stability`` (older than it) reads as status "unknown"."""
        if not d:
            return cls(reference="")
        threshold = _ms(d.get("threshold"))
        return cls(readings=[dict(r) for r in d.get("readings") or [] if isinstance(r, dict)],
                   threshold=threshold if threshold is not None else THRESHOLD,
                   reference=str(d.get("reference", REFERENCE)))
