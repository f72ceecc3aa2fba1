"""Run stability: a reference workload that sees what the backends see, read between rounds.

On this project's 2-vCPU shared machines a multi-threaded runtime call can run 10-59% slower for minutes at a
time (``benchmarks/SCHEDULE.md``, "Machine states": the second vCPU is busy elsewhere on the host), which the
single numpy matmul of the ``drift`` reference does not notice. The reference here is what the ONNX Runtime
backends are: a small fixed ONNX graph (:func:`build_reference_model`: :data:`LAYERS` x (MatMul + Add + Gelu),
width :data:`WIDTH`, weights from a seeded generator) in an ONNX Runtime CPU session with the backends' session
options and the bench's thread count. A reading is the median of :data:`TIMED_CALLS` calls after
:data:`WARMUP_CALLS` warm-up calls. The bench reads it at the start, after every round of the schedule (at most
once a second) and after every preset (:class:`StabilityMonitor`); a run whose readings spread past
:data:`THRESHOLD` (:func:`reference_spread`) is ``unstable``, and the bench divides each preset's p50s by the
mean of the readings taken during it (``normalized_p50``).

The spread is slowest / fastest reading while readings are few, p90 / p10 from :data:`ROBUST_FROM` on: a short
bench has a handful of readings and any change of state in it counts; a long one reads once a second, and one
stray reading (another process for a second) should not decide its verdict while a state that lasts a tenth of
the run still does.

Measurements behind the choices, 2026-12-02 (03:07-03:30 UTC), on this machine: ``Intel(R) Xeon(R) Processor``
(``grep -m1 'model name' /proc/cpuinfo``), 2 vCPUs, Linux 6.18, onnxruntime 1.32.0, 2 threads. "Quiet": other
processes used under 0.02 cores during the measurement (/proc/stat less this process tree).

* Size. [4, 64, 256] x 3 layers (0.45 ms a call on two free cores) read 1.6-2x slower when one core was busy and
  no slower than that under 3, 4 or 6 busy-loop processes (its calls are shorter than a scheduler slice, so
  time-slicing does not reach the median), and a hog on a machine already half busy moved it only 1.32x.
  [4, 64, 384] x 3 (1.0 ms) saturated the same way (window medians 1.6-1.7 ms under 4 hogs). The chosen
  [4, 64, 384] x 4 reads 1.2-1.35 ms on two free cores (median 1.31 ms over 120 quiet readings), about 2.0 ms
  with one core taken, and 7.5-15 ms (window medians) under 4 busy loops: it sees both a lost core (the slow
  state) and heavier contention. A reading costs ~25 ms (18 calls) on a quiet machine, 0.1-0.3 s on a hogged one.
* Quiet spreads. Benches (tiny preset, onnx-cpu, ``--quick --min-time 4 --batch-sizes 1``, 6 readings each),
  10 runs: 1.04-1.12, all stable. One bench of three backends (``--min-time 8``, batch 1 and 8, 57 readings):
  p90/p10 1.13, max/min 1.43 (one stray reading of 1.71 ms, which the robust form leaves out). The monitor alone,
  120 readings a second apart: windows of 6 readings (max/min) median 1.10, 95th percentile 1.39; windows of
  10 (p90/p10) median 1.08, 95th percentile 1.35; the whole 120: p90/p10 1.14. The quiet tails are bursts of
  1-5 readings at 1.5-2.0 ms with no other process visible on the machine: the host's slow state, briefly.
* Disturbed spreads. The same bench with os.cpu_count() + 2 = 4 busy-loop processes from its second reading to
  the end of the preset: 6.3, 7.7, 7.7, 7.9, 8.1 (5 runs); with 1-2 more busy processes running through the whole
  run as well: 6.7-11.0 (4 runs); with only those background processes (a machine shared with a busy
  neighbour): 4.5-5.0 (3 runs). Quiet loops while other engineers' test suites used 1-2 cores: 1.6-3.5.
* Threshold 1.25: above every quiet bench (at most 1.13) and the median quiet window (1.10); below the level of
  a lost core (1.5-2.0, the slow state of SCHEDULE.md) and far below a hog (6.3 and more). The price: 13% of the
  6-reading windows of the quiet series hold one of those brief host bursts and read unstable (none of the 10
  quiet benches did); a short run that meets one had part of its calls timed in it, and is told to rerun.
* Order. A reading taken right after the matmul ``drift`` reading read 4.3-4.7x the others in 2 of 8 quiet
  benches: numpy's BLAS threads keep spinning after a product (readings 0-50 ms after one: 1.6-6.1 ms; 0.1-0.2 s
  after: 1.42-1.46 ms), so the bench reads this reference first. Between rounds a reading waits until 50 ms
  after the last block (the gap that stops the runtimes' spinning threads, SCHEDULE.md), and every reading is
  followed by the settling gap (``settle_time``) so that its own threads are quiet before the next block.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import numpy as np

from signflow_zoo.results.stability import (BATCH, FRAMES, LAYERS, MIN_INTERVAL_S, OPSET, TIMED_CALLS, WARMUP_CALLS,
                                             WIDTH, Stability, now_utc)


def build_reference_model(width: int = WIDTH, layers: int = LAYERS, batch: int = BATCH, frames: int = FRAMES,
                          seed: int = 0) -> bytes:
    """The reference graph, serialized: ``layers`` x (MatMul + Add + Gelu), weights from a seeded RNG."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / math.sqrt(width)).astype(np.float32)
        b = (0.01 * rng.standard_normal(width)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
                  helper.make_node("Gelu", [f"a{i}"], [f"h{i}" if i < layers - 1 else "y"])]
        prev = f"h{i}"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, frames, width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, frames, width])
    graph = helper.make_graph(nodes, "signflow_zoo_stability_reference", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = min(model.ir_version, 10)
    return model.SerializeToString()


class StabilityMonitor:
    """Owns the reference session of one bench (created at the first :meth:`read`, released by :meth:`close`)
    and appends every reading to ``record`` (the result document's :class:`Stability`)."""

    def __init__(self, threads: int, record: Stability | None = None):
        self.threads = max(1, int(threads))
        self.record = record if record is not None else Stability()
        self._session = None
        self._feed: dict[str, np.ndarray] = {}
        self._last = -math.inf

    @property
    def readings(self) -> list[dict[str, Any]]:
        return self.record.readings

    @property
    def spread(self) -> float | None:
        return self.record.spread

    @property
    def status(self) -> str:
        return self.record.status

    def _open(self):
        if self._session is None:
            import onnxruntime as ort

            so = ort.SessionOptions()  # as the ONNX Runtime backends set theirs (signflow_zoo.backends.ort), spinning on
            so.log_severity_level = 3
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            self._session = ort.InferenceSession(build_reference_model(), so, providers=["CPUExecutionProvider"])
            x = np.random.default_rng(1).standard_normal((BATCH, FRAMES, WIDTH)).astype(np.float32)
            self._feed = {"x": x}
        return self._session

    def measure(self) -> float:
        """Median ms of :data:`TIMED_CALLS` calls after :data:`WARMUP_CALLS` untimed ones (no reading kept)."""
        s = self._open()
        for _ in range(WARMUP_CALLS):
            s.run(None, self._feed)
        times = []
        for _ in range(TIMED_CALLS):
            t0 = time.perf_counter_ns()
            s.run(None, self._feed)
            times.append((time.perf_counter_ns() - t0) / 1e6)
        return float(statistics.median(times))

    def read(self, at: str) -> float:
        """Measure now and keep the reading ``{"at", "ms", "time"}``."""
        ms = self.measure()
        self._last = time.monotonic()
        self.readings.append({"at": at, "ms": ms, "time": now_utc()})
        return ms

    def due(self, min_interval: float = MIN_INTERVAL_S) -> bool:
        """True when the last reading is at least ``min_interval`` seconds old (reads between rounds stay cheap)."""
        return time.monotonic() - self._last >= min_interval

    def mean_ms(self, since: int = 0) -> float | None:
        """Mean ms of the readings from index ``since`` on (what a preset's p50s are normalized by)."""
        ms = [float(r["ms"]) for r in self.readings[since:]]
        return statistics.fmean(ms) if ms else None

    def close(self) -> None:
        self._session = None
        self._feed = {}

    def __enter__(self) -> "StabilityMonitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
