"""Replaying recorded clips as a live stream: frame by frame, lazily, through the streaming pipeline.

A replay is the clips in order with the signer at rest between them: ``rest_frames`` still frames before
each clip and after the last, and between two clips a glide from one clip's last frame to the next one's
first, slow enough (each step below half the motion threshold) not to be read as a sign, and never longer
than :data:`MAX_GLIDE_FRAMES` frames (a longer gap is crossed in bigger steps, which the state machine may read
as motion). Clips must hold normalized image coordinates (x, y in 0..1, as MediaPipe gives them): a clip with
a coordinate beyond :data:`MAX_COORDINATE` (pixel coordinates, most likely) is refused by
:func:`check_stream_clips` before any frame is replayed. Frames are
produced one at a time (:func:`stream_rows`, :func:`stream_payloads` are generators), so a replay of any
length holds one frame's payload at a time, never the whole stream.

:func:`replay_stream` is what ``signflow-zoo stream`` runs; :func:`measure_stream_latency` is what the
harness runs on a prepared runner.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from signflow_zoo.common.errors import InputError
from signflow_zoo.data.features import PARTS, RAW_DIM, part_present, validate_raw
from signflow_zoo.serve.motion import pair_motion
from signflow_zoo.serve.payload import payload_from_raw
from signflow_zoo.serve.pipeline import PipelineConfig, Prediction, SignFlowInferencePipeline
from signflow_zoo.backends.runner import Runner
from signflow_zoo.results.latency import percentile

MIN_SIGNS_FOR_P99 = 20
# At most this many frames glide between two clips (5 s at 30 fps). A glide of normalized coordinates takes
# 2-33 frames on the synthetic data and ~40 for a hand moving from the lap to the face; uncapped, a clip in
# pixel coordinates made a 200,000-frame (1.85 h) glide.
MAX_GLIDE_FRAMES = 150
# Normalized landmark coordinates stay within a few units (x, y in 0..1, slightly beyond for a point off the
# image; z on the scale of x); a clip with any |coordinate| above this holds pixel coordinates, most likely.
MAX_COORDINATE = 10.0


@dataclass(frozen=True)
class RestNoise:
    """Tracking noise on the rest frames (default: none, a perfectly still signer and tracker).

    A camera never freezes: ``hand_jitter``/``pose_jitter`` add Gaussian noise of that sigma to every
    coordinate of a detected part, and each detected hand is lost (zero-filled) on a frame with
    probability ``hand_loss``. The synthetic generator's own rates at difficulty 1 are 0.0024 / 0.004 /
    0.02 (and a resting hand it loses on half the frames).
    """

    hand_jitter: float = 0.0
    pose_jitter: float = 0.0
    hand_loss: float = 0.0
    seed: int = 0

    @property
    def still(self) -> bool:
        return not (self.hand_jitter or self.pose_jitter or self.hand_loss)


def _raw_of(clip) -> np.ndarray:
    raw = getattr(clip, "raw", clip)
    return np.asarray(validate_raw(raw, "clip"), dtype=np.float32)


def check_stream_clips(clips: Sequence, names: Sequence[str] | None = None) -> list[np.ndarray]:
    """The clips' raw arrays, each checked to be [F, 225] landmarks in normalized coordinates.

    :class:`~signflow_zoo.common.errors.InputError` naming the clip (``names[i]``, else its position) when a
    coordinate's magnitude exceeds :data:`MAX_COORDINATE`: pixel coordinates would make every tracking wobble a
    motion far above the state machine's thresholds (and made a replay glide for hours)."""
    raws = []
    for i, clip in enumerate(clips):
        what = f"clip {i + 1} of {len(clips)}" + (f" ({names[i]})" if names is not None and i < len(names) else "")
        raw = np.asarray(validate_raw(getattr(clip, "raw", clip), what), dtype=np.float32)
        peak = 0.0
        for start in range(0, len(raw), 1024):  # in chunks: no whole-clip temporaries on a long clip
            chunk = np.abs(raw[start:start + 1024])
            chunk[~np.isfinite(chunk)] = 0.0
            peak = max(peak, float(chunk.max()))
        if peak > MAX_COORDINATE:
            raise InputError(f"{what}: coordinates reach {peak:.6g}: they look like pixel coordinates; the stream "
                             f"expects normalized image coordinates (x, y in 0..1, as MediaPipe gives them; at most "
                             f"|{MAX_COORDINATE:g}| accepted): divide x by the frame's width and y by its height")
        raws.append(raw)
    return raws


def _glide_steps(prev: np.ndarray, first: np.ndarray, motion_threshold: float) -> int:
    """Steps of the glide from ``prev`` to ``first``: each below half the motion threshold, at most
    :data:`MAX_GLIDE_FRAMES`."""
    return min(_needed_steps(prev, first, motion_threshold), MAX_GLIDE_FRAMES)


def _needed_steps(prev: np.ndarray, first: np.ndarray, motion_threshold: float) -> int:
    """Steps of the glide without the cap (:data:`MAX_GLIDE_FRAMES` + 1 for a gap that is not finite)."""
    if motion_threshold <= 0:
        return 0
    gap = float(pair_motion(prev, first))
    if not math.isfinite(gap):
        return MAX_GLIDE_FRAMES + 1
    return int(math.ceil(min(gap / (motion_threshold / 2), 1e9)))


def _glide(prev: np.ndarray, first: np.ndarray, steps: int) -> Iterator[np.ndarray]:
    """Frames strictly between ``prev`` and ``first``: parts present in both move linearly, a part
    present in only one of them switches at the middle (a tracking event, not a movement)."""
    was, now = part_present(prev), part_present(first)
    both = np.zeros(RAW_DIM, bool)
    for name, cols in PARTS.items():
        both[cols] = bool(was[name]) and bool(now[name])
    for s in range(1, steps):
        w = s / steps
        yield np.where(both, prev * (1 - w) + first * w, prev if w < 0.5 else first).astype(np.float32)


def _rest(frame: np.ndarray, n: int, noise: RestNoise, rng: np.random.Generator) -> Iterator[np.ndarray]:
    if noise.still:
        for _ in range(n):
            yield frame
        return
    present = part_present(frame)
    for _ in range(n):
        row = frame.astype(np.float64)
        for name, cols in PARTS.items():
            if not present[name]:
                continue
            row[cols] += rng.normal(0.0, noise.pose_jitter if name == "pose" else noise.hand_jitter,
                                    cols.stop - cols.start)
            if name != "pose" and rng.random() < noise.hand_loss:
                row[cols] = 0.0
        yield row.astype(np.float32)


def stream_spans(clips: Sequence, rest_frames: int = 20,
                 motion_threshold: float = PipelineConfig.motion_threshold) -> tuple[list[tuple[int, int]], int]:
    """Each clip's (start, end) frame span in the replay of ``clips``, and the replay's length, without
    producing a frame."""
    spans, count, prev = [], 0, None
    for clip in clips:
        raw = _raw_of(clip)
        if prev is not None:
            count += max(0, _glide_steps(prev, raw[0], motion_threshold) - 1)
        count += rest_frames
        spans.append((count, count + len(raw)))
        count += len(raw)
        prev = raw[-1]
    return spans, (count + rest_frames if spans else 0)


def stream_rows(clips: Iterable, rest_frames: int = 20, motion_threshold: float = PipelineConfig.motion_threshold,
                rest_noise: RestNoise | None = None) -> Iterator[np.ndarray]:
    """The replay of ``clips`` (raw [F, 225] arrays or objects with ``.raw``), one raw row at a time."""
    noise = rest_noise or RestNoise()
    rng = np.random.default_rng(noise.seed)
    prev: np.ndarray | None = None
    for clip in clips:
        raw = _raw_of(clip)
        first = raw[0]
        if prev is not None:
            yield from _glide(prev, first, _glide_steps(prev, first, motion_threshold))
        yield from _rest(first, rest_frames, noise, rng)
        yield from raw
        prev = raw[-1]
    if prev is not None:
        yield from _rest(prev, rest_frames, noise, rng)


def stream_payloads(clips: Iterable, rest_frames: int = 20,
                    motion_threshold: float = PipelineConfig.motion_threshold,
                    rest_noise: RestNoise | None = None) -> Iterator[dict[str, Any]]:
    """The replay as the browser would send it: one frame payload at a time (a generator)."""
    for row in stream_rows(clips, rest_frames, motion_threshold, rest_noise):
        yield payload_from_raw(row)


def stream_from_clips(clips: Iterable, rest_frames: int = 20,
                      motion_threshold: float = PipelineConfig.motion_threshold
                      ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The whole replay as one array [N, 225] and each clip's (start, end) span: for short replays that
    are inspected as a whole (tests, plots). Streaming code should use :func:`stream_payloads`."""
    clips = [_raw_of(c) for c in clips]
    spans, total = stream_spans(clips, rest_frames, motion_threshold)
    out = np.empty((total, RAW_DIM), np.float32)
    for i, row in enumerate(stream_rows(clips, rest_frames, motion_threshold)):
        out[i] = row
    return out, spans


def stats_ms(values: Sequence[float]) -> dict[str, Any]:
    """Count, p50/p90/p99, mean and max of latencies in ms (``{"count": 0}`` when empty)."""
    if not len(values):
        return {"count": 0}
    a = np.asarray(values, dtype=np.float64)
    ordered = sorted(a.tolist())
    p50, p90, p99 = (percentile(ordered, q) for q in (50, 90, 99))  # linear interpolation, as np.percentile
    return {"count": int(a.size), "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "mean_ms": float(a.mean()), "max_ms": float(a.max())}


def clip_of(frame: int, spans: Sequence[tuple[int, int]], rest_frames: int) -> int | None:
    """Index of the clip whose span, or the rest right after it, holds ``frame`` (None: before the first)."""
    for i, (start, end) in enumerate(spans):
        if start <= frame < end + rest_frames:
            return i
    return None


def segmentation_score(predictions: Iterable[Prediction], spans: Sequence[tuple[int, int]]) -> dict[str, int]:
    """How well the state machine cut a replay into its clips.

    A prediction *matches* a clip when its window (``start_frame`` .. ``frame_index``) covers at least
    half of the clip and at least half of the window lies on the clip. ``detected``: clips matched at
    least once; ``false_starts``: predictions that match no clip (a recording started by rest or tracking
    noise, a fragment of a sign, or several signs run together).
    """
    matched: set[int] = set()
    n = false_starts = 0
    for p in predictions:
        n += 1
        first, stop = p.start_frame, p.frame_index + 1
        overlaps = [max(0, min(stop, end) - max(first, start)) for start, end in spans]
        best = int(np.argmax(overlaps)) if overlaps else -1
        if best >= 0 and 2 * overlaps[best] >= spans[best][1] - spans[best][0] and 2 * overlaps[best] >= stop - first:
            matched.add(best)
        else:
            false_starts += 1
    return {"signs": len(spans), "detected": len(matched), "false_starts": false_starts, "predictions": n}


def replay_stream(pipe: SignFlowInferencePipeline, clips: Sequence, rest_frames: int = 20, fps: float = 30.0,
                  realtime: bool = False, on_prediction: Callable[[Prediction, int | None], None] | None = None,
                  rest_noise: RestNoise | None = None) -> dict[str, Any]:
    """Feed the replay of ``clips`` to ``pipe`` frame by frame, paced at ``fps`` when ``realtime``.

    ``on_prediction(prediction, clip_index)`` is called for every sign that ends (clip_index: the clip
    being replayed then, None in the rest before the first). Returns a summary: frames, signs,
    predictions, accepted, the sentence, latency percentiles, wall time, frames/s and frames late. Memory
    stays bounded: one frame is in flight, only per-sign latencies are kept.

    The clips are checked first (:func:`check_stream_clips`: an :class:`InputError` for pixel coordinates);
    ``glides_capped`` in the summary counts glides cut to :data:`MAX_GLIDE_FRAMES` (with a ``RuntimeWarning``).
    """
    clips = check_stream_clips(clips)
    threshold = pipe.config.motion_threshold
    capped = sum(_needed_steps(a[-1], b[0], threshold) > MAX_GLIDE_FRAMES
                 for a, b in zip(clips, clips[1:], strict=False))
    if capped:
        warnings.warn(f"{capped} glide(s) between clips capped at {MAX_GLIDE_FRAMES} frames: the clips' ends are "
                      "far apart, and the faster glide may be read as motion", RuntimeWarning, stacklevel=2)
    spans, total = stream_spans(clips, rest_frames, threshold)
    interval = 1.0 / fps
    latencies: list[float] = []
    late = predictions = accepted = frames = 0

    def ended(pred: Prediction) -> None:
        nonlocal predictions, accepted
        predictions += 1
        accepted += pred.accepted
        assert pred.latency_ms is not None  # process_frame and flush time every prediction
        latencies.append(pred.latency_ms)
        if on_prediction is not None:
            on_prediction(pred, clip_of(pred.frame_index, spans, rest_frames))

    start = time.perf_counter()
    for i, payload in enumerate(stream_payloads(clips, rest_frames, pipe.config.motion_threshold, rest_noise)):
        if realtime:
            wait = start + i * interval - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            elif wait < -interval:
                late += 1
        pred = pipe.process_frame(payload)
        frames += 1
        if pred.ended:
            ended(pred)
    last = pipe.flush()
    if last is not None:
        ended(last)
    wall = time.perf_counter() - start
    return {"frames": frames, "signs": len(spans), "predictions": predictions, "accepted": accepted,
            "sentence": pipe.sentence, "latency_ms": stats_ms(latencies), "wall_s": wall,
            "frames_per_s": frames / wall if wall > 0 else None, "frames_late": late, "backend": pipe.backend_name,
            "expected_frames": total, "glides_capped": capped}


def measure_stream_latency(runner: Runner, labels: Sequence[str], clips: Iterable,
                           config: PipelineConfig | None = None, rest_frames: int = 20,
                           repeats: int = 1) -> dict[str, Any]:
    """Replay ``clips`` (with rest frames between them) through the streaming pipeline on a prepared
    ``runner``, as fast as it goes, timing every ``process_frame`` call.

    Returns ``latency_ms``: the sign's last frame (the one that ends it) arriving -> its prediction
    (validation, state machine, features, model, decision); ``model_ms`` (the runner's share of it);
    ``features_ms``; ``frame_ms``: the non-model cost of frames that end nothing (validation + buffer +
    state machine); ``nonmodel_ms``: every frame's time minus model time; ``frames_per_s``: sustained
    throughput; ``signs``/``predictions`` and ``trustworthy`` (False when fewer than
    ``MIN_SIGNS_FOR_P99`` predictions: a p99 of few samples is just the maximum). Payloads are built
    lazily, outside the timed calls.
    """
    config = config or PipelineConfig()
    raws = [_raw_of(c) for c in clips]
    spans, _ = stream_spans(raws, rest_frames, config.motion_threshold)
    pipe = SignFlowInferencePipeline.from_runner(runner, labels, config)  # warms the runner up
    latency: list[float] = []
    model: list[float] = []
    feats: list[float] = []
    idle: list[float] = []
    nonmodel: list[float] = []
    clock = time.perf_counter_ns
    timed_ns = 0
    n_frames = 0
    for _ in range(max(1, repeats)):
        pipe.reset()
        for payload in stream_payloads(raws, rest_frames, config.motion_threshold):
            t0 = clock()
            p = pipe.process_frame(payload)
            dt_ns = clock() - t0
            timed_ns += dt_ns
            n_frames += 1
            dt = dt_ns / 1e6
            if p.ended:
                assert p.inference_ms is not None and p.features_ms is not None  # set on every ended sign
                latency.append(dt)
                model.append(p.inference_ms)
                feats.append(p.features_ms)
                nonmodel.append(dt - p.inference_ms)
            else:
                idle.append(dt)
                nonmodel.append(dt)
        t0 = clock()
        last = pipe.flush()
        timed_ns += clock() - t0
        if last is not None:
            assert last.latency_ms is not None and last.inference_ms is not None and last.features_ms is not None
            latency.append(last.latency_ms)
            model.append(last.inference_ms)
            feats.append(last.features_ms)
    wall = timed_ns / 1e9
    out = {
        "backend": runner.name, "signs": len(spans) * max(1, repeats), "predictions": len(latency),
        "frames": n_frames, "frames_per_s": n_frames / wall if wall > 0 else float("inf"),
        "latency_ms": stats_ms(latency), "model_ms": stats_ms(model), "features_ms": stats_ms(feats),
        "frame_ms": stats_ms(idle), "nonmodel_ms": stats_ms(nonmodel),
        "trustworthy": len(latency) >= MIN_SIGNS_FOR_P99, "config": config.to_dict(), "rest_frames": rest_frames,
    }
    if not out["trustworthy"]:
        out["note"] = (f"only {len(latency)} predictions: percentiles of so few samples are not trustworthy "
                       f"(need >= {MIN_SIGNS_FOR_P99})")
    return out


__all__ = ["RestNoise", "stream_rows", "stream_payloads", "stream_spans", "stream_from_clips", "replay_stream",
           "segmentation_score", "measure_stream_latency", "stats_ms", "clip_of", "MIN_SIGNS_FOR_P99",
           "check_stream_clips", "MAX_GLIDE_FRAMES", "MAX_COORDINATE"]
