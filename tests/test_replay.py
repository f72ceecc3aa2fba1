"""Replaying clips as a stream: lazy, bounded in memory, with glides and rest between clips; segmentation score."""

from __future__ import annotations

import gc
import inspect
import itertools

import numpy as np
import pytest

from signflow_zoo.data.features import part_present
from signflow_zoo.serve.motion import motion_profile
from signflow_zoo.serve.payload import parse_payload
from signflow_zoo.serve.pipeline import PipelineConfig, Prediction, SignFlowInferencePipeline
from signflow_zoo.serve.replay import (
    RestNoise,
    clip_of,
    replay_stream,
    segmentation_score,
    stream_from_clips,
    stream_payloads,
    stream_rows,
    stream_spans,
)
from signflow_zoo.backends.runner import Runner
from signflow_zoo.data.synthetic import SyntheticSpec, generate


class FirstClass(Runner):
    """A model that costs nothing and always says class 0 (of ``num_classes``)."""

    name, artifact = "test-first", "onnx"

    def __init__(self, num_classes: int):
        super().__init__()
        self.prepared, self.num_classes = True, num_classes

    def infer(self, features, mask):
        return np.eye(self.num_classes, dtype=np.float32)[np.zeros(len(features), int)] * 5.0


@pytest.fixture(scope="module")
def clips():
    return generate(SyntheticSpec(num_classes=6, num_signers=2, clips_per_signer_per_class=1, seed=4))


def test_replay_is_a_generator_of_valid_payloads(clips):
    raws, _ = clips
    payloads = stream_payloads(raws[:3], rest_frames=5)
    assert inspect.isgenerator(payloads) and inspect.isgenerator(stream_rows(raws[:3]))
    first = list(itertools.islice(payloads, 7))  # nothing beyond what is asked for is built
    assert len(first) == 7 and all(isinstance(p, dict) for p in first)
    row, _ = parse_payload(first[5])
    np.testing.assert_array_equal(row, raws[0].raw[0])  # 5 rest frames, then the clip


def test_the_whole_replay_and_its_spans(clips):
    raws, _ = clips
    rows, spans = stream_from_clips(raws[:4], rest_frames=10)
    assert spans == stream_spans(raws[:4], rest_frames=10)[0] and len(rows) == stream_spans(raws[:4], 10)[1]
    np.testing.assert_array_equal(rows, np.asarray(list(stream_rows(raws[:4], rest_frames=10))))
    for clip, (start, end) in zip(raws[:4], spans):
        np.testing.assert_array_equal(rows[start:end], clip.raw)
        np.testing.assert_array_equal(rows[start - 10 : start], np.repeat(clip.raw[:1], 10, axis=0))
    # between clips the signer glides from one clip's last frame to the next one's first (then rests),
    # below the motion threshold: steps of half of it, measured on the hands found at both ends; a hand held
    # still (one the next clip lacks) moves in body units as the body glides, which the step count does not see
    glides = [(spans[i][1], spans[i + 1][0] - 10) for i in range(3)]
    assert sum(b - a for a, b in glides) > 0
    motion = motion_profile(rows)
    for a, b in glides:
        assert motion[a : b + 1].max() < PipelineConfig.motion_threshold
    assert clip_of(spans[1][0], spans, 10) == 1 and clip_of(spans[1][1] + 9, spans, 10) == 1
    assert clip_of(0, spans, 10) is None


def test_a_glide_does_not_move_a_part_that_is_missing_on_one_side():
    a = np.full((3, 225), 0.3, np.float32)
    b = np.full((3, 225), 0.6, np.float32)
    b[:, 126:] = 0  # no pose in the next clip
    rows = np.asarray(list(stream_rows([a, b], rest_frames=0)))
    glide = rows[3:-3]
    assert len(glide) > 2
    pose = part_present(glide)["pose"]
    assert pose[: len(glide) // 2].all() and not pose[len(glide) // 2 + 1 :].any()  # a switch, not a slide from 0
    assert np.isin(glide[:, 126:], [0.0, np.float32(0.3)]).all()


def test_rest_noise_jitters_and_drops_hands_on_rest_frames_only(clips):
    raws, _ = clips
    noise = RestNoise(hand_jitter=0.002, pose_jitter=0.003, hand_loss=0.5, seed=1)
    rows = np.asarray(list(stream_rows(raws[:1], rest_frames=40, rest_noise=noise)))
    spans, _ = stream_spans(raws[:1], rest_frames=40)
    start, end = spans[0]
    np.testing.assert_array_equal(rows[start:end], raws[0].raw)
    rest = rows[:start]
    assert not np.array_equal(rest[0], rest[1])
    right = part_present(rest)["right"]
    assert 0.2 < right.mean() < 0.8 if part_present(raws[0].raw[:1])["right"][0] else not right.any()


def test_replay_stream_reports_and_paces(clips):
    raws, names = clips
    pipe = SignFlowInferencePipeline.from_runner(FirstClass(len(names)), names)
    seen: list[tuple[Prediction, int | None]] = []
    summary = replay_stream(pipe, raws[:3], rest_frames=20, fps=2000, realtime=True,
                            on_prediction=lambda p, i: seen.append((p, i)))
    assert summary["frames"] == summary["expected_frames"] == stream_spans(raws[:3], 20)[1]
    assert summary["predictions"] == len(seen) >= 2 and summary["signs"] == 3
    assert summary["wall_s"] >= (summary["frames"] - 1) / 2000  # paced, not as fast as possible
    assert summary["latency_ms"]["count"] == len(seen) and summary["sentence"] == pipe.sentence
    assert all(i in (0, 1, 2) for _, i in seen)


def _kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ":"))


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM (peak resident memory) to the current resident size
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _can_reset_peak(), reason="needs Linux's /proc/self/clear_refs to reset the peak RSS")
@pytest.mark.slow  # over 2 s: out of the fast loop (-m 'not slow'), still in CI
def test_streaming_memory_does_not_grow_with_the_stream(clips):
    """Peak resident memory added by replaying a 2,000- vs a 20,000-frame clip through the pipeline: the
    replay holds one frame at a time, so both add about the same."""
    raws, names = clips
    base = np.concatenate([c.raw for c in raws])

    def growth_kb(frames: int):
        clip = np.resize(base, (frames, 225)).astype(np.float32)  # the input: allocated before measuring
        pipe = SignFlowInferencePipeline.from_runner(FirstClass(len(names)), names)
        gc.collect()
        _can_reset_peak()
        before = _kb("VmRSS")
        summary = replay_stream(pipe, [clip], rest_frames=0)
        return _kb("VmHWM") - before, summary

    growth_kb(2_000)  # first run: the allocator's pools and lazy imports
    small, s1 = growth_kb(2_000)
    large, s2 = growth_kb(20_000)
    assert s2["frames"] == 20_000 and s2["predictions"] > 5 * s1["predictions"]
    # the 20,000 payloads held at once would be ~240 MB, the stream as one array 18 MB
    assert large < small + 8_000, (small, large)


def test_segmentation_score():
    spans = [(10, 50), (80, 120)]

    def pred(start, end):
        return Prediction(label="x", start_frame=start, frame_index=end - 1)

    score = segmentation_score([pred(8, 52), pred(85, 100), pred(60, 75), pred(0, 200)], spans)
    # (85, 100) covers less than half of clip 2; (60, 75) lies on no clip; (0, 200) runs both clips together
    assert score == {"signs": 2, "detected": 1, "false_starts": 3, "predictions": 4}
    assert segmentation_score([], spans)["detected"] == 0


def test_ignoring_tracking_jumps_keeps_hands_lost_at_rest_from_starting_signs(clips):
    """The departure from the original, measured small: rest where the resting hand flickers."""
    raws, names = clips
    order = raws[:8]
    spans, _ = stream_spans(order)
    noise = RestNoise(hand_jitter=0.0024, pose_jitter=0.004, hand_loss=0.5, seed=3)
    scores = {}
    for ignore in (True, False):
        pipe = SignFlowInferencePipeline.from_runner(FirstClass(len(names)), names,
                                                     PipelineConfig(ignore_tracking_jumps=ignore))
        preds: list[Prediction] = []
        replay_stream(pipe, order, rest_noise=noise, on_prediction=lambda p, i: preds.append(p))
        scores[ignore] = segmentation_score(preds, spans)
    assert scores[True]["detected"] > scores[False]["detected"], scores
    assert scores[True]["false_starts"] < scores[False]["false_starts"], scores
