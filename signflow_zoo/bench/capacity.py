"""Live-stream capacity: how many concurrent 30 fps signers one machine serves within a deadline.

The question a deployment asks: N signers stream landmarks at ``fps``, each through its own streaming state
(:class:`~signflow_zoo.serve.pipeline.SignFlowInferencePipeline`), all sharing one backend; the time from the
frame that ends a sign to its prediction must stay under a deadline for (nearly) every sign. The answer is the
largest N whose sign-end-to-prediction p99 is within ``deadline_ms`` and whose deadline misses are at most
``max_miss_rate``.

**How a trial runs.** One serving thread, as a Python server is (the GIL): it takes the frames of all streams in
arrival order (each stream replays recorded clips with the signer at rest between them, from its own random
point of the replay, its frames ``1/fps`` apart plus up to ``jitter_ms`` of arrival jitter), runs each frame
through its stream's pipeline, and runs the model for every sign that ends. Every frame and every model call is
executed for real on this machine and its measured duration advances the server's clock; the server waits for
the next arrival when it is idle. The clock is virtual only in that idle time is skipped instead of slept, so a
trial costs the server's busy time, not the stream's length (at the capacity, where the server is busy most of
the time, the two hardly differ; at light load a runtime whose threads fall asleep when idle would be slower
live than here). Latency of a sign = the server's clock after its decision - the arrival of the frame that ended
it: queueing behind other streams' frames and model calls included. Signs ending in the first ``ramp_s``
seconds (the queue filling) are not counted.

**Dynamic batching** (``max_batch_wait_ms`` > 0): a sign that ends waits up to that long for others, then the
waiting signs run as one batch (at most ``max_batch``), while the server keeps taking frames; without it every
sign runs alone as soon as it ends.

**The search.** A trial at 1 stream gives the server's busy share per stream and a first guess; the number of
streams doubles (or halves) from the guess until one trial passes and one fails, then bisects to within 3%
(scouting trials of ``scout_signs`` signs and ``scout_seconds`` of stream time), and the result is confirmed with
a trial of ``min_signs`` signs and ``min_seconds`` (stepping down 5% three times, then 15% at a time, until one passes). Each trial and its verdict are kept in ``trials``.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from signflow_zoo.backends.runner import Runner
from signflow_zoo.serve.batching import complete_batch
from signflow_zoo.serve.pipeline import PendingSign, PipelineConfig, SignFlowInferencePipeline
from signflow_zoo.serve.replay import stream_payloads, stream_spans

# 100 ms: the classic limit for a response to feel immediate (Miller 1968; Card, Moran & Newell 1983). It comes on
# top of the stillness the state machine waits for before it ends a sign (min_rest_frames: 10 frames, 333 ms at 30
# fps), so a signer sees the word at most ~0.43 s after their hands stop.
DEFAULT_DEADLINE_MS = 100.0
DEFAULT_MAX_BATCH_WAIT_MS = 10.0


@dataclass(frozen=True)
class CapacityConfig:
    deadline_ms: float = DEFAULT_DEADLINE_MS
    max_miss_rate: float = 0.01
    fps: float = 30.0
    jitter_ms: float = 5.0  # each frame arrives up to this late (uniform), never before the previous one
    max_batch_wait_ms: float = 0.0  # 0: no batching, every sign runs alone
    max_batch: int = 32
    min_signs: int = 300  # counted signs of the confirming trial: its p99 rests on 3 signs above it
    scout_signs: int = 100  # counted signs of a search trial
    min_seconds: float = 10.0  # stream time of the confirming trial at least (a queue near saturation builds slowly)
    scout_seconds: float = 3.0  # ... and of a search trial
    ramp_s: float = 1.0
    max_streams: int = 2048
    rest_frames: int = 20
    budget_s: float = 45.0  # the search stops (keeping what passed) after this long
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Trial:
    streams: int
    signs: int  # signs counted (after the ramp)
    p50_ms: float
    p99_ms: float
    miss_rate: float
    busy: float  # the server's busy share of the trial's duration
    mean_batch: float
    seconds: float  # real time the trial took
    stopped: str = ""  # why the trial ended before its planned length (it failed then)
    passed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class StreamSet:
    """The replay every simulated signer streams (payloads built once, outside any timed work)."""

    def __init__(self, clips: Sequence, config: PipelineConfig, rest_frames: int):
        self.payloads = list(stream_payloads(clips, rest_frames, config.motion_threshold))
        spans, _ = stream_spans(clips, rest_frames, config.motion_threshold)
        if not self.payloads or not spans:
            raise ValueError("capacity: no clips to replay")
        self.signs_per_frame = len(spans) / len(self.payloads)


def run_trial(runner: Runner, labels: Sequence[str], streams: StreamSet, n: int, cfg: CapacityConfig,
              signs: int, pipeline_config: PipelineConfig | None = None, seed: int = 0, min_seconds: float = 0.0) -> Trial:
    """``n`` streams through one serving thread for ``ramp_s`` plus at least ``min_seconds`` of stream time and
    until ``signs`` signs after the ramp are expected (see the module)."""
    t_start = time.perf_counter()
    pcfg = replace(pipeline_config or PipelineConfig(), warmup=False)  # the runner is warm: the bench ran it
    base = SignFlowInferencePipeline.from_runner(runner, labels, pcfg)
    pipes = [base] + [base.spawn() for _ in range(n - 1)]
    rng = np.random.default_rng(seed)
    length = len(streams.payloads)
    offsets = rng.integers(0, length, n)
    interval = 1.0 / cfg.fps
    seconds = cfg.ramp_s + max(min_seconds, signs / max(1e-9, n * streams.signs_per_frame * cfg.fps))
    frames = max(2, int(math.ceil(seconds * cfg.fps)))
    jitter = cfg.jitter_ms / 1e3
    heap: list[tuple[float, int, int]] = [(float(rng.uniform(0, interval)), i, 0) for i in range(n)]
    heapq.heapify(heap)
    phases = [h[0] for h in heap]
    last = [0.0] * n
    wait = cfg.max_batch_wait_ms / 1e3
    max_batch = max(1, cfg.max_batch) if wait > 0 else 1
    pending: list[tuple[SignFlowInferencePipeline, PendingSign, float]] = []
    window_end = math.inf
    latencies: list[float] = []
    batches: list[int] = []
    now = busy = 0.0
    clock = time.perf_counter
    deadline_s = cfg.deadline_ms / 1e3
    expected = n * streams.signs_per_frame * cfg.fps * (seconds - cfg.ramp_s)  # signs after the ramp, about
    allowed = max(1, int(cfg.max_miss_rate * expected))  # more misses than this: the trial has failed, stop it
    misses = 0

    def run_batch() -> None:
        nonlocal now, busy, window_end, misses
        t0 = clock()
        complete_batch(runner, [(p, s) for p, s, _ in pending])
        dt = clock() - t0
        now += dt
        busy += dt
        batches.append(len(pending))
        for _, _, arrived in pending:
            if arrived >= cfg.ramp_s:
                latencies.append((now - arrived) * 1e3)
                misses += now - arrived > deadline_s
        pending.clear()
        window_end = math.inf

    stopped = ""
    while heap or pending:
        if misses > allowed:
            stopped = f"stopped early: {misses} signs missed the deadline (more than {allowed})"
            break
        if heap and now - heap[0][0] > 10 * deadline_s + 1.0:
            stopped = f"stopped early: the server fell {now - heap[0][0]:.1f} s behind the streams"
            break
        next_t = heap[0][0] if heap else math.inf
        if pending and (len(pending) >= max_batch or now >= window_end or next_t >= window_end):
            now = max(now, min(window_end, next_t) if len(pending) < max_batch and now < window_end else now)
            run_batch()
            continue
        t, i, k = heapq.heappop(heap)
        if now < t:
            now = t  # idle until the frame arrives
        t0 = clock()
        out = pipes[i].process_frame_deferred(streams.payloads[(offsets[i] + k) % length])
        dt = clock() - t0
        now += dt
        busy += dt
        if isinstance(out, PendingSign):
            if not pending:
                window_end = now + wait
            pending.append((pipes[i], out, t))
        if k + 1 < frames:
            nominal = phases[i] + (k + 1) * interval + (float(rng.uniform(0, jitter)) if jitter > 0 else 0.0)
            arrival = max(nominal, last[i])
            last[i] = arrival
            heapq.heappush(heap, (arrival, i, k + 1))
    lat = np.asarray(latencies)
    deadline = cfg.deadline_ms
    return Trial(streams=n, signs=int(lat.size),
                 p50_ms=float(np.percentile(lat, 50)) if lat.size else math.nan,
                 p99_ms=float(np.percentile(lat, 99)) if lat.size else math.nan,
                 miss_rate=float((lat > deadline).mean()) if lat.size else math.nan,
                 busy=busy / now if now > 0 else math.nan,
                 mean_batch=float(np.mean(batches)) if batches else math.nan,
                 seconds=clock() - t_start, stopped=stopped)


def passes(t: Trial, cfg: CapacityConfig) -> bool:
    return not t.stopped and t.signs > 0 and t.p99_ms <= cfg.deadline_ms and t.miss_rate <= cfg.max_miss_rate


def search_capacity(runner: Runner, labels: Sequence[str], clips: Sequence, cfg: CapacityConfig,
                    pipeline_config: PipelineConfig | None = None, start: int | None = None) -> dict[str, Any]:
    """The largest number of streams within the deadline (see the module); the record's ``capacity`` section."""
    pcfg = pipeline_config or PipelineConfig()
    streams = StreamSet(clips, pcfg, cfg.rest_frames)
    began = time.perf_counter()
    trials: list[Trial] = []
    seeds = iter(range(cfg.seed, cfg.seed + 10_000))

    def trial(n: int, signs: int) -> Trial:
        full = signs >= cfg.min_signs
        t = run_trial(runner, labels, streams, n, cfg, signs, pcfg, seed=next(seeds),
                      min_seconds=cfg.min_seconds if full else cfg.scout_seconds)
        t.passed = passes(t, cfg)
        trials.append(t)
        return t

    def over_budget() -> bool:
        return time.perf_counter() - began > cfg.budget_s

    first = trial(1, cfg.scout_signs)
    lo, hi = (1, None) if first.passed else (0, 1)  # lo: most streams that passed; hi: fewest that failed
    n = start or (int(0.5 / first.busy) if first.busy > 0 else 2)
    n = min(cfg.max_streams, max(2, n))
    while lo >= 1 and not over_budget():
        if hi is not None:
            if hi - lo <= max(1, int(0.03 * lo)):
                break
            n = (lo + hi) // 2
        if trial(n, cfg.scout_signs).passed:
            lo = n
            if n >= cfg.max_streams:
                break
            if hi is None:
                n = min(cfg.max_streams, n * 2)
        else:
            hi = n
    # confirm with a full-size trial, stepping down 5% at a time (at most 3 steps past the budget)
    confirmed: Trial | None = None
    n, steps = lo, 0
    while n >= 1 and steps < 3 + (0 if over_budget() else 10):
        t = trial(n, cfg.min_signs)
        steps += 1
        if t.passed:
            confirmed = t
            break
        n = min(n - 1, int(n * (0.95 if steps < 3 else 0.85)))  # 5% steps, then 15%: the longer trial's queue grew
    if confirmed is None and n > 1 and lo >= 1:  # out of steps: one stream at least, if the machine allows it
        n, t = 1, trial(1, cfg.min_signs)
        confirmed = t if t.passed else None
    best = confirmed
    out: dict[str, Any] = {
        "streams": best.streams if best else 0, "deadline_ms": cfg.deadline_ms,
        "p99_ms": best.p99_ms if best else (first.p99_ms if first.signs else None),
        "p50_ms": best.p50_ms if best else None,
        "miss_rate": best.miss_rate if best else first.miss_rate, "fps": cfg.fps,
        "signs": best.signs if best else first.signs, "busy": best.busy if best else first.busy,
        "max_miss_rate": cfg.max_miss_rate, "jitter_ms": cfg.jitter_ms,
        "max_batch_wait_ms": cfg.max_batch_wait_ms, "max_batch": cfg.max_batch if cfg.max_batch_wait_ms > 0 else 1,
        "mean_batch": best.mean_batch if best else None,
        "seconds": round(time.perf_counter() - began, 2), "budget_exhausted": over_budget(),
        "clock": "virtual: frames and model calls run for real; idle time skipped (docs/deployment.md)",
        "trials": [t.to_dict() for t in trials],
    }
    if best is None and not first.passed:
        out["note"] = (f"even 1 stream misses the {cfg.deadline_ms:g} ms deadline (p99 {first.p99_ms:.1f} ms, "
                       f"{100 * first.miss_rate:.1f}% missed)")
    elif best is None:
        out["note"] = (f"no confirming trial ({cfg.min_signs} signs) passed, down to {max(1, n)} streams, although "
                       f"shorter ones did up to {lo}: the machine may have been busy with other work; rerun it quieter")
    elif out["budget_exhausted"] or (best.streams == 1 and lo > 1):
        out["note"] = (f"the search stopped at its {cfg.budget_s:g} s budget or its confirming steps: {best.streams} "
                       "streams is a lower bound")
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


__all__ = ["CapacityConfig", "DEFAULT_DEADLINE_MS", "DEFAULT_MAX_BATCH_WAIT_MS", "Trial", "run_trial",
           "search_capacity"]
