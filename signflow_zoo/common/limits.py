"""The range of every number a user gives signflow-zoo, in one table.

Read by the CLI's argument types (a number outside its range is a one-line usage error, exit 2), by the
library's ``validate()`` methods (the same numbers from Python fail the same way), and checked against the
"User errors" paragraph of docs/commands.md by a test. The bounds keep a typo from turning into an allocation failure,
an hour-long hang or a checkpoint of NaN weights; they are far above any sensible run.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """Numbers from ``lo`` to ``hi`` (both included unless ``lo_open``); floats must be finite."""

    kind: type  # int or float
    lo: float
    hi: float
    lo_open: bool = False

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if self.kind is int else numbers.Real):
            return False
        if not isinstance(value, numbers.Integral) and not math.isfinite(value):
            return False
        # numbers.Real declares only < and <= (typeshed follows it); every concrete Real has > and >=
        return (value > self.lo if self.lo_open else value >= self.lo) and value <= self.hi  # type: ignore[operator]

    @property
    def text(self) -> str:
        """How the range reads in help texts and errors: ``1..4096``, ``0 < x <= 1``."""
        if self.lo_open:
            return f"> {self.lo:g} and <= {self.hi:g}"
        if self.kind is int:
            return f"{int(self.lo)}..{int(self.hi)}"
        return f"{self.lo:g}..{self.hi:g}"

    @property
    def what(self) -> str:
        return ("an integer " if self.kind is int else "a number ") + ("in " if not self.lo_open else "") + self.text


def max_threads() -> int:
    """4 threads per core of this machine, at most 256: more only oversubscribes the cores."""
    return min(256, 4 * (os.cpu_count() or 1))


SEED = Range(int, 0, 2**32 - 1)  # numpy's and torch's seedable range
EPOCHS = Range(int, 1, 10_000)
LEARNING_RATE = Range(float, 0.0, 1.0, lo_open=True)
BATCH_SIZE = Range(int, 1, 4096)  # training batches and timed batches alike
MAX_BATCH_SIZES = 16  # how many batch sizes one bench times
NUM_CLASSES = Range(int, 1, 100_000)
THREADS = Range(int, 1, max_threads())
WARMUP = Range(int, 0, 100_000)  # untimed calls (warm-up stops after its time cap anyway)
MIN_ITERS = Range(int, 1, 1_000_000)
TAIL_ITERS = Range(int, 0, 1_000_000)
MIN_TIME = Range(float, 0.0, 3600.0)  # seconds
TIMEOUT = Range(float, 0.0, 86_400.0, lo_open=True)  # seconds
PORT = Range(int, 1, 65_535)
SYNTHETIC_CLIPS = Range(int, 1, 20_000)  # classes x signers x clips of a synthetic data set (~120 kB each)
THRESHOLD = Range(float, 0.0, 1.0)  # a confidence
TEMPERATURE = Range(float, 0.0, 100.0, lo_open=True)  # softmax temperature: 100 already flattens any model
FPS = Range(float, 0.1, 1000.0)  # stream replay: a frame every 10 s .. 1000 frames a second
REST_FRAMES = Range(int, 0, 10_000)  # still frames around each replayed clip (over 5 minutes at 30 fps)
REPORT_SINCE_DAYS = 36_500  # report --since reaches back 100 years at most

# Every ranged CLI option, for the docs check and the fuzz suite: option -> range.
CLI_OPTIONS: dict[str, Range] = {
    "--seed": SEED, "--epochs": EPOCHS, "--lr": LEARNING_RATE, "--batch-size": BATCH_SIZE,
    "--batch-sizes": BATCH_SIZE, "--num-classes": NUM_CLASSES, "--threads": THREADS, "--warmup": WARMUP,
    "--min-iters": MIN_ITERS, "--tail-iters": TAIL_ITERS, "--min-time": MIN_TIME, "--timeout": TIMEOUT, "--port": PORT,
    "--threshold": THRESHOLD, "--temperature": TEMPERATURE, "--fps": FPS, "--rest-frames": REST_FRAMES,
}
