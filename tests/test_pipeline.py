"""The streaming pipeline: state machine, decision rules, wire format, config, model files, CLI, end to end."""

from __future__ import annotations

import json
import math
import shutil
import sys
import types
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signflow_zoo.common.errors import BackendError, InputError, ModelFileError, PayloadError, SignFlowError
from signflow_zoo.data.features import FEATURE_VERSION, prepare_clip
from signflow_zoo.serve.payload import parse_payload, payload_from_raw
from signflow_zoo.serve.pipeline import (
    NONE_LABEL,
    PipelineConfig,
    PipelineConfigError,
    Prediction,
    SignFlowInferencePipeline,
    motion_profile,
)
from signflow_zoo.serve.replay import measure_stream_latency, stream_from_clips
from signflow_zoo.backends.runner import Runner
from signflow_zoo.data.synthetic import SyntheticSpec, generate


# -- stand-in runners -------------------------------------------------------------------------------
class ScriptedRunner(Runner):
    """Returns the next logits of a script (or a fixed vector); the first call is the warm-up."""

    name = "test-scripted"
    artifact = "onnx"

    def __init__(self, logits, num_classes: int = 3):
        super().__init__()
        self.script = [np.asarray(x, np.float32) for x in logits] if np.ndim(logits) == 2 else None
        self.fixed = None if self.script is not None else np.asarray(logits, np.float32)
        self.calls = 0
        self.windows = []
        self.prepared = True

    def infer(self, features, mask):
        self.calls += 1
        self.windows.append((features.copy(), mask.copy()))
        if self.script is None:
            return self.fixed[None].repeat(len(features), 0)
        if self.calls == 1:  # warm-up
            return self.script[0][None]
        return self.script[min(self.calls - 2, len(self.script) - 1)][None]


def logits_for(p_top: float, top: int = 0, n: int = 3) -> np.ndarray:
    """Logits whose softmax puts ``p_top`` on class ``top`` and splits the rest evenly."""
    p = np.full(n, (1 - p_top) / (n - 1))
    p[top] = p_top
    return np.log(p).astype(np.float32)


LABELS = ["a", "b", "c"]
RAW = PipelineConfig(calibrate_confidence=False)  # confidence = the probability: isolates the other rules


def base_row() -> np.ndarray:
    """A body whose scale is 1 (shoulder width 1, the largest of shoulder width, hip width and torso height):
    motion in the original's units (hands minus the hip centre, over the body scale) reads as plain distances."""
    pts = lambda n, b: [[b + 0.01 * i, 0.5 - 0.005 * i, -0.02 * (i % 3)] for i in range(n)]  # noqa: E731
    pose = pts(33, 0.4)
    pose[11], pose[12] = [0.0, 0.44, 0.0], [1.0, 0.44, 0.0]  # shoulders (pose points 11, 12)
    row, _ = parse_payload({"hands": {"left": pts(21, 0.6), "right": pts(21, 0.3)}, "pose": pose})
    return row


STEP = np.zeros(225, np.float32)
STEP[63:126] = 0.02  # right hand moves: motion energy 63 * 0.02 / 126 = 0.01 per frame


def script_rows(*parts) -> np.ndarray:
    """("rest", n) holds the current position, ("move", n) moves the right hand by STEP per frame."""
    pos, rows = base_row(), []
    for kind, n in parts:
        for _ in range(n):
            if kind == "move":
                pos = pos + STEP
            rows.append(pos.copy())
    return np.asarray(rows, np.float32)


SIGN = (("rest", 20), ("move", 30), ("rest", 20))  # a sign: motion on frames 20..49


def run_stream(pipe, rows, **meta):
    preds = []
    for r in rows:
        payload = payload_from_raw(r)
        payload["metadata"].update(meta)
        preds.append(pipe.process_frame(payload))
    return preds


def ended(preds):
    return [p for p in preds if p.ended]


def make_pipe(logits=None, config=None, labels=LABELS, meta=None, **cfg):
    runner = ScriptedRunner(logits_for(0.99) if logits is None else logits)
    config = PipelineConfig(**{**(config.to_dict() if config else {}), **cfg})
    return SignFlowInferencePipeline.from_runner(runner, labels, config, meta), runner


# -- state machine --------------------------------------------------------------------------------
def test_sign_ends_after_ten_rest_frames_with_preroll_and_the_trailing_rest_cut():
    pipe, runner = make_pipe()
    rows = script_rows(*SIGN)
    preds = run_stream(pipe, rows)
    assert [p.state for p in preds[19:22]] == ["idle", "recording", "recording"]
    assert preds[20].frames == 4  # 3 frames of pre-roll + the frame that started it (the original's 4)
    [sign] = ended(preds)
    # motion on 20..49; frames 50.. are at rest; the 10th rest frame (59) ends it
    assert sign.frame_index == 59 and preds[59] is sign and sign.reason == "rest"
    # window 17..59 (43 frames) is longer than 10 rest + max(2, 15 // 2): all 10 rest frames are cut
    assert (sign.start_frame, sign.frames) == (17, 33)
    feats, mask = runner.windows[-1]
    want_f, want_m = prepare_clip(rows[17:50])  # what the model got: the window resampled and enriched
    np.testing.assert_array_equal(feats[0], want_f)
    np.testing.assert_array_equal(mask[0], want_m)
    assert sign.label == "a" and sign.accepted and sign.state == "idle"
    assert runner.calls == 2  # warm-up + ONE inference for the sign
    assert sign.latency_ms >= sign.inference_ms > 0
    assert all(not p.ended and p.label is None for p in preds if p is not sign)


def test_a_short_movement_is_recorded_until_min_sign_frames():
    pipe, _ = make_pipe()
    [sign] = ended(run_stream(pipe, script_rows(("rest", 20), ("move", 5), ("rest", 30))))
    assert sign.frame_index == 34  # recorded 15 (5 moving + 10 rest) and 10 rest frames
    assert (sign.start_frame, sign.frames) == (17, 3 + 15 - 10)


def test_a_short_window_keeps_its_trailing_rest():
    """The original cuts the trailing rest only from a window longer than rest + max(2, min_sign_frames // 2)."""
    pipe, _ = make_pipe(min_sign_frames=12, preroll_frames=0)
    [sign] = ended(run_stream(pipe, script_rows(("rest", 20), ("move", 2), ("rest", 30))))
    assert sign.frame_index == 31 and sign.frames == 12  # 12 <= 10 + 6: nothing cut


def test_continuous_motion_ends_at_max_frames():
    pipe, _ = make_pipe()
    preds = run_stream(pipe, script_rows(("rest", 20), ("move", 200)))
    first = ended(preds)[0]
    assert first.frame_index == 20 + 176 and first.frames == 180 and first.reason == "max_frames"
    # the frame after a sign has no motion (the original cleared its buffer), the one after starts again
    assert preds[197].state == "idle" and preds[197].motion == 0 and preds[198].state == "recording"


def test_thresholds_and_timings_come_from_the_config():
    pipe, _ = make_pipe(preroll_frames=0, min_rest_frames=5)
    [sign] = ended(run_stream(pipe, script_rows(*SIGN)))
    assert sign.frame_index == 54 and (sign.start_frame, sign.frames) == (20, 30)
    pipe, _ = make_pipe(preroll_frames=0, min_rest_frames=5, trailing_rest_kept=2)
    [sign] = ended(run_stream(pipe, script_rows(*SIGN)))
    assert sign.frames == 32
    pipe, _ = make_pipe(motion_threshold=0.02)  # the movement (0.01 per frame) is now below it
    assert not ended(run_stream(pipe, script_rows(*SIGN)))


def test_motion_is_measured_on_hip_centred_coordinates():
    rows = script_rows(("rest", 2), ("move", 3))
    np.testing.assert_allclose(motion_profile(rows), [0, 0, 0.01, 0.01, 0.01], atol=1e-6)
    pipe, _ = make_pipe()
    np.testing.assert_allclose([p.motion for p in run_stream(pipe, rows)], motion_profile(rows), atol=1e-6)

    body = np.repeat(base_row()[None], 4, axis=0)
    drift = np.zeros(225, np.float32)
    drift[0::3] = 0.05  # the whole body (hands, pose, hips) moves sideways: the signer steps, no sign
    body += np.arange(4)[:, None] * drift
    np.testing.assert_allclose(motion_profile(body), 0, atol=1e-6)
    hips = np.repeat(base_row()[None], 2, axis=0)
    hips[1, 126 + 69 : 126 + 75 : 3] += 0.04  # only the hips move (x of points 23, 24): the hands move against them
    assert motion_profile(hips)[1] == pytest.approx(42 * 0.04 / 126)


@pytest.mark.parametrize("ignore", [True, False])
def test_the_stream_measures_motion_as_motion_profile_does(ignore):
    rng = np.random.default_rng(0)
    rows = script_rows(*SIGN) + rng.normal(0, 0.003, (70, 225)).astype(np.float32)
    rows[rng.random(70) < 0.2, :63] = 0  # hands and the pose lost now and then
    rows[rng.random(70) < 0.2, 63:126] = 0
    rows[rng.random(70) < 0.1, 126:] = 0
    pipe, _ = make_pipe(motion_threshold=1e9, ignore_tracking_jumps=ignore)  # never starts: no sign ends
    got = [p.motion for p in run_stream(pipe, rows)]
    np.testing.assert_allclose(got, motion_profile(rows, ignore_tracking_jumps=ignore), rtol=1e-6, atol=1e-9)


def test_a_hand_appearing_or_vanishing_is_not_motion():
    flicker = np.repeat(base_row()[None], 60, axis=0)
    flicker[::2, 63:126] = 0  # the right hand is lost every other frame, never moves
    assert np.all(motion_profile(flicker) == 0)
    pipe, _ = make_pipe()
    assert all(p.state == "idle" for p in run_stream(pipe, flicker))
    # the original's rule: the lost hand jumps to minus the hip centre and back, every frame a "movement"
    assert motion_profile(flicker, ignore_tracking_jumps=False)[1:].min() > 0.1
    pipe, _ = make_pipe(ignore_tracking_jumps=False)
    assert run_stream(pipe, flicker)[1].state == "recording"


def test_a_sign_needs_more_than_min_hand_visibility():
    rows = script_rows(*SIGN)
    rows = rows[0] + 4 * (rows - rows[0])  # faster: 9 moving points still make 0.017 per frame
    few = rows.copy()
    few[:, :63] = 0
    few[:, 63 + 8 * 3 : 126] = 0  # 8 of 42 hand points seen: 0.19 < 0.2
    pipe, _ = make_pipe()
    assert all(p.state == "idle" for p in run_stream(pipe, few))
    enough = rows.copy()
    enough[:, :63] = 0
    enough[:, 63 + 9 * 3 : 126] = 0  # 9 of 42: 0.214
    pipe, _ = make_pipe()
    assert run_stream(pipe, enough)[20].state == "recording"
    # poor tracking lowers the visibility: 0.214 - 0.8 * (0.35 - 0.3) = 0.174
    pipe, _ = make_pipe()
    assert all(p.state == "idle" for p in run_stream(pipe, enough, averageConfidence=0.3))


def test_leading_and_trailing_frames_with_nothing_tracked_are_cut():
    rows = script_rows(*SIGN)
    rows[:19] = 0  # nothing tracked before frame 19
    pipe, _ = make_pipe(preroll_frames=6)
    preds = run_stream(pipe, rows)
    # 19 appears (not motion), 20 moves: the pre-roll 14..19 holds five empty frames; one is kept
    [sign] = ended(preds)
    assert sign.start_frame == 18 and sign.frames == 2 + 30


def test_flush_ends_a_recording_at_end_of_stream():
    pipe, _ = make_pipe()
    preds = run_stream(pipe, script_rows(("rest", 5), ("move", 40)))
    assert not ended(preds) and pipe.state == "recording"
    sign = pipe.flush()
    assert sign.reason == "flush" and sign.frames == 3 + 40 and pipe.state == "idle"
    assert pipe.flush() is None
    run_stream(pipe, script_rows(("rest", 5), ("move", 3)))  # too short to be a sign
    assert pipe.flush() is None and pipe.state == "idle"


# -- decision rules ---------------------------------------------------------------------------------
def test_softmax_temperature_from_the_config_or_the_model_file():
    logits = np.array([2.0, 1.0, 0.0, -1.0], np.float32)
    for cfg, meta, t in ((RAW, None, 1.0), (PipelineConfig(calibrate_confidence=False, temperature=2.0), None, 2.0),
                         (RAW, {"calibration_temperature": 0.5}, 0.5),
                         (PipelineConfig(calibrate_confidence=False, temperature=2.0), {"calibration_temperature": 0.5},
                          2.0)):
        pipe, _ = make_pipe(logits, cfg, labels=list("abcd"), meta=meta)
        [sign] = ended(run_stream(pipe, script_rows(*SIGN)))
        z = np.exp(logits / t)
        probs = z / z.sum()
        assert pipe.temperature == t
        assert [lab for lab, _ in sign.alternatives] == ["a", "b", "c", "d"]  # top_k 4
        np.testing.assert_allclose([p for _, p in sign.alternatives], probs, rtol=1e-6)
        assert sign.probability == pytest.approx(probs[0]) and sign.margin == pytest.approx(probs[0] - probs[1])


def test_confidence_is_calibrated_as_the_original_does():
    pipe, _ = make_pipe(logits_for(0.9))
    [sign] = ended(run_stream(pipe, script_rows(*SIGN)))
    probs = np.array([0.9, 0.05, 0.05])
    certainty = 1 + float(np.sum(probs * np.log(probs))) / math.log(3)
    # the sign ended on a still frame: motion factor 0, and x 0.85 for motion below min_motion_energy
    want = 0.85 * (0.58 * 0.9 + 0.24 * 0.85 + 0.10 * certainty)
    assert sign.confidence == pytest.approx(want, abs=1e-6) and want == pytest.approx(0.672, abs=1e-3)
    assert sign.label == NONE_LABEL and sign.rejected_by == "threshold"  # 0.672 < 0.7: the original's harshness

    pipe, _ = make_pipe(logits_for(0.9))  # ends at max_frames while moving (0.01 per frame): factor 1, no x 0.85
    sign = ended(run_stream(pipe, script_rows(("rest", 20), ("move", 200))))[0]
    assert sign.confidence == pytest.approx(0.58 * 0.9 + 0.24 * 0.85 + 0.10 * certainty + 0.08, abs=1e-6)
    assert sign.accepted


def test_a_small_top2_margin_scales_the_confidence_down():
    logits = np.log(np.array([0.5, 0.45, 0.05])).astype(np.float32)
    pipe, _ = make_pipe(logits, RAW, confidence_threshold=0.2)
    [sign] = ended(run_stream(pipe, script_rows(*SIGN)))
    assert sign.margin == pytest.approx(0.05)
    assert sign.confidence == pytest.approx(0.5 * 0.05 / 0.1)  # x margin / min_prediction_margin
    assert sign.accepted
    pipe, _ = make_pipe(logits, RAW, confidence_threshold=0.2, min_prediction_margin=0.0)  # 0 turns it off
    assert ended(run_stream(pipe, script_rows(*SIGN)))[0].confidence == pytest.approx(0.5)


def test_class_thresholds_from_the_model_file_raise_the_bar_for_their_class():
    meta = {"class_thresholds": [0.95, 0.1, 0.5]}
    pipe, _ = make_pipe(logits_for(0.9, 0), RAW, meta=meta)
    [sign] = ended(run_stream(pipe, script_rows(*SIGN)))
    assert (sign.class_threshold, sign.adaptive_threshold, sign.threshold) == (0.95, 0.7, 0.95)
    assert sign.label == NONE_LABEL and sign.rejected_by == "threshold"  # 0.9 < max(0.7, 0.95)
    pipe, _ = make_pipe(logits_for(0.8, 1), RAW, meta=meta)
    [sign] = ended(run_stream(pipe, script_rows(*SIGN)))
    assert sign.threshold == 0.7 and sign.label == "b"  # a low class threshold does not lower the adaptive one
    with pytest.raises(ModelFileError, match="class_thresholds"):
        make_pipe(meta={"class_thresholds": [0.5, 0.5]})


def test_threshold_is_raised_for_low_visibility_low_motion_and_poor_tracking():
    rows = script_rows(*SIGN)
    pipe, _ = make_pipe(logits_for(0.75), RAW)
    [ok] = ended(run_stream(pipe, rows, averageConfidence=0.9))
    assert ok.accepted and ok.label == "a" and ok.threshold == pytest.approx(0.7) and ok.flags == ()

    pipe, _ = make_pipe(logits_for(0.75), RAW)
    [fair] = ended(run_stream(pipe, rows, averageConfidence=0.5))
    assert fair.threshold == pytest.approx(0.74) and fair.flags == ("fair_tracking",) and fair.accepted
    pipe, _ = make_pipe(logits_for(0.75), RAW)
    [poor] = ended(run_stream(pipe, rows, averageConfidence=0.3))
    assert poor.threshold == pytest.approx(0.78) and poor.flags == ("poor_tracking",)
    assert poor.label == NONE_LABEL and poor.candidate == "a" and poor.rejected_by == "threshold"

    pipe, _ = make_pipe(logits_for(0.75), RAW, min_motion_energy=0.02)
    [still] = ended(run_stream(pipe, rows))
    assert still.flags == ("low_motion",) and still.threshold == pytest.approx(0.76)

    one_hand = rows[0] + 2 * (rows - rows[0])  # faster, so that 12 moving points are not low motion
    one_hand[:, :63] = 0
    one_hand[:, 63 + 12 * 3 : 126] = 0  # 12 of 42 points: 0.29 < max(0.3, 0.2 + 0.05)
    pipe, _ = make_pipe(logits_for(0.75), RAW)
    [low] = ended(run_stream(pipe, one_hand))
    assert low.flags == ("low_visibility",) and low.threshold == pytest.approx(0.75)

    pipe, _ = make_pipe(logits_for(0.99), RAW, min_motion_energy=0.02, low_motion_penalty=0.2)
    [capped] = ended(run_stream(pipe, one_hand, averageConfidence=0.3))
    assert capped.flags == ("low_visibility", "low_motion", "poor_tracking")
    assert capped.threshold == pytest.approx(0.95) and capped.accepted  # 0.7 + 0.33, capped at max_threshold


def test_vote_confirms_a_repeated_sign_and_restarts_on_a_new_one():
    rows = script_rows(*[("rest", 20), ("move", 30)] * 3, ("rest", 20))
    script = [logits_for(0.9, 0), logits_for(0.6, 0), logits_for(0.6, 1)]
    pipe, _ = make_pipe(script, RAW)
    s1, s2, s3 = ended(run_stream(pipe, rows))
    assert (s1.label, s1.votes) == ("a", 1)
    # a again at 0.6: confirmed by the run (mean 0.75 >= 0.7)
    assert (s2.label, s2.votes, s2.probability) == ("a", 2, pytest.approx(0.6))
    assert s2.confidence == pytest.approx(0.75) and s2.accepted
    # b at 0.6: the history restarts, b is not helped by the a's
    assert (s3.label, s3.candidate, s3.votes, s3.confidence) == (NONE_LABEL, "b", 1, pytest.approx(0.6))

    pipe, _ = make_pipe(script, RAW, vote_window=1)
    assert [p.label for p in ended(run_stream(pipe, rows))] == ["a", NONE_LABEL, NONE_LABEL]


def test_a_none_class_on_top_is_rejected_and_not_voted():
    rows = script_rows(*[("rest", 20), ("move", 30)] * 3, ("rest", 20))
    script = [logits_for(0.8, 1), logits_for(0.9, 0), logits_for(0.6, 1)]
    pipe, _ = make_pipe(script, RAW, labels=["NONE", "b", "c"])
    s1, s2, s3 = ended(run_stream(pipe, rows))
    assert s2.candidate == "NONE" and s2.label == NONE_LABEL and s2.rejected_by == "none_class"
    # the run of b's was not broken by NONE: 0.6 is confirmed by the mean of 0.8 and 0.6
    assert s3.votes == 2 and s3.confidence == pytest.approx(0.7) and s3.label == "b"
    assert s2.to_dict()["alternatives"] == [{"sign": "b", "confidence": 0.05}, {"sign": "c", "confidence": 0.05}]


def test_sentence_buffer_and_reset():
    rows = script_rows(*[("rest", 20), ("move", 30)] * 4, ("rest", 20))
    script = [logits_for(0.9, 0), logits_for(0.9, 0), logits_for(0.9, 1), logits_for(0.4, 2)]
    pipe, _ = make_pipe(script, RAW)
    preds = ended(run_stream(pipe, rows))
    assert [p.label for p in preds] == ["a", "a", "b", NONE_LABEL]
    assert pipe.sentence == ["a", "b"] and pipe.sentence_text == "a b"  # a repeat is not added twice
    assert preds[-1].sentence == ("a", "b")
    pipe.reset()
    assert pipe.sentence == [] and pipe.state == "idle"
    pipe, _ = make_pipe(script, RAW, sentence_max_words=1)
    run_stream(pipe, rows)
    assert pipe.sentence == ["b"]


def test_spawned_pipelines_share_the_runner_not_the_state():
    pipe, runner = make_pipe()
    other = pipe.spawn()
    rows = script_rows(*SIGN)
    run_stream(pipe, rows[:40])
    assert pipe.state == "recording" and other.state == "idle" and other.runner is runner
    [sign] = ended(run_stream(other, rows))
    assert sign.frame_index == 59 and other.sentence == ["a"] and pipe.sentence == []
    assert pipe.state == "recording"


def test_a_failing_backend_leaves_a_clean_state():
    class Flaky(ScriptedRunner):
        fail = False

        def infer(self, features, mask):
            if self.fail:
                raise BackendError("device lost")
            return super().infer(features, mask)

    runner = Flaky(logits_for(0.99))
    pipe = SignFlowInferencePipeline.from_runner(runner, LABELS)
    rows = script_rows(*SIGN, ("move", 30), ("rest", 20))
    before = run_stream(pipe, rows[:59])
    assert not ended(before) and before[-1].state == "recording"
    runner.fail = True
    with pytest.raises(BackendError, match="device lost"):
        pipe.process_frame(payload_from_raw(rows[59]))  # the frame that ends the sign
    assert pipe.state == "idle"
    runner.fail = False
    after = run_stream(pipe, rows[60:])
    assert after[0].state == "idle" and after[0].frames == 0  # nothing left over from the failed sign
    [second] = ended(after)  # the stream goes on: the next sign is clean
    assert second.label == "a" and second.frame_index == 109 and (second.start_frame, second.frames) == (67, 33)


def test_wrong_logits_shape_and_nan_are_backend_errors():
    with pytest.raises(BackendError, match="shape"):
        SignFlowInferencePipeline.from_runner(ScriptedRunner(np.zeros(5, np.float32)), LABELS)
    pipe, runner = make_pipe([np.array([np.nan, 0, 0], np.float32)])  # warm-up checks shape only
    with pytest.raises(BackendError, match="non-finite"):
        run_stream(pipe, script_rows(*SIGN))


def test_a_bad_frame_changes_nothing():
    rows = script_rows(*SIGN)
    clean, _ = make_pipe()
    want = [p.to_dict() for p in run_stream(clean, rows)]
    pipe, _ = make_pipe()
    got = []
    for i, r in enumerate(rows):
        if i in (10, 20, 35, 55, 59):  # at rest, on the starting frame, mid-sign, in the trailing rest, at the end
            for junk in ({"hands": {"left": None}}, {"hands": {"left": None, "right": [[0, 0, float("nan")]] * 21},
                                                     "pose": None}, "frame", None):
                with pytest.raises(PayloadError):
                    pipe.process_frame(junk)
        got.append(pipe.process_frame(payload_from_raw(r)).to_dict())

    def same(d):
        return {k: v for k, v in d.items() if k not in ("latency_ms", "features_ms", "inference_ms")}

    assert [same(d) for d in got] == [same(d) for d in want]


# -- wire format ------------------------------------------------------------------------------------
def test_to_dict_speaks_the_original_wire_format_and_more():
    script = [logits_for(0.99, 0, n=4), logits_for(0.5, 1, n=4)]
    pipe, _ = make_pipe(script, labels=list("abcd"))
    rows = script_rows(*SIGN, ("move", 30), ("rest", 20))
    preds = [json.loads(json.dumps(p.to_dict())) for p in run_stream(pipe, rows)]
    idle, recording, accepted, rejected = preds[5], preds[30], preds[59], preds[109]
    wire = ("prediction", "confidence", "alternatives", "sentence_buffer", "is_sentence_complete",
            "decision_diagnostics", "latency_ms")
    for d in preds:
        assert set(wire) <= set(d) and d["is_sentence_complete"] is False
        assert isinstance(d["sentence_buffer"], str) and isinstance(d["confidence"], float)
    assert (idle["prediction"], idle["confidence"], idle["alternatives"]) == ("NONE", 0.0, [])
    assert idle["decision_diagnostics"] is None and idle["label"] is None and not idle["ended"]
    assert recording["prediction"] == "RECORDING" and recording["state"] == "recording"
    assert accepted["prediction"] == "a" and accepted["confidence"] == round(accepted["candidate_confidence"], 3)
    assert accepted["alternatives"] == [{"sign": lab, "confidence": round(0.01 / 3, 3)} for lab in "bcd"]
    assert accepted["sentence_buffer"] == "a" and accepted["sentence"] == ["a"]
    assert accepted["decision_diagnostics"]["effective_threshold"] == pytest.approx(0.7)
    assert [x["label"] for x in accepted["top_k"]] == list("abcd")  # the richer form keeps the top-1 and full floats
    # rejected: the original says NONE with confidence 0; the candidate and its confidence stay in the rich fields
    assert (rejected["prediction"], rejected["confidence"], rejected["accepted"]) == ("NONE", 0.0, False)
    assert rejected["candidate"] == "b" and 0 < rejected["candidate_confidence"] < 0.7
    assert rejected["decision_diagnostics"]["rejected_by"] == "threshold"
    assert rejected["sentence_buffer"] == "a"


# -- config -----------------------------------------------------------------------------------------
def test_defaults_are_the_original_ones():
    cfg = PipelineConfig()
    original = {"motion_threshold": 0.005, "min_rest_frames": 10, "min_sign_frames": 15, "max_sign_frames": 180,
                "vote_window": 5, "confidence_threshold": 0.7, "min_hand_visibility": 0.2,
                "low_visibility_penalty": 0.05, "min_motion_energy": 0.003, "low_motion_penalty": 0.06,
                "tracking_confidence_floor": 0.35, "poor_tracking_penalty": 0.08, "fair_tracking_confidence": 0.55,
                "fair_tracking_penalty": 0.04, "max_threshold": 0.95, "min_prediction_margin": 0.1,
                "calibrate_confidence": True, "top_k": 4, "trailing_rest_kept": 0, "temperature": None}
    assert {k: getattr(cfg, k) for k in original} == original
    assert cfg.preroll_frames + 1 == 4  # the original keeps 4 frames, the starting one among them


@pytest.mark.parametrize("bad,names", [
    ({"motion_threshold": -1}, ["motion_threshold"]), ({"preroll_frames": -1}, ["preroll_frames"]),
    ({"min_rest_frames": 0}, ["min_rest_frames"]), ({"confidence_threshold": 1.5}, ["confidence_threshold"]),
    ({"temperature": 0}, ["temperature"]), ({"temperature": float("nan")}, ["temperature"]),
    ({"top_k": 0}, ["top_k"]), ({"vote_window": 2.5}, ["vote_window"]),
    ({"min_sign_frames": True}, ["min_sign_frames"]),
    ({"seq_len": 5000}, ["seq_len"]), ({"max_sign_frames": 10**6}, ["max_sign_frames"]),
    ({"calibrate_confidence": "yes"}, ["calibrate_confidence"]),
    # combinations that cannot work
    ({"max_sign_frames": 5, "preroll_frames": 4}, ["max_sign_frames", "preroll_frames"]),
    ({"min_sign_frames": 30, "max_sign_frames": 20}, ["min_sign_frames", "max_sign_frames"]),
    ({"min_rest_frames": 15, "max_sign_frames": 18}, ["min_rest_frames", "max_sign_frames"]),
    ({"trailing_rest_kept": 11}, ["trailing_rest_kept", "min_rest_frames"]),
    ({"confidence_threshold": 0.97}, ["confidence_threshold", "max_threshold"]),
    ({"min_hand_visibility": 1.0}, ["min_hand_visibility"]),
])
def test_config_refuses_bad_values_and_combinations_in_one_line(bad, names):
    with pytest.raises(PipelineConfigError) as err:
        PipelineConfig(**bad).validate()
    message = str(err.value)
    assert all(name in message for name in names) and "\n" not in message
    assert isinstance(err.value, SignFlowError)


def test_config_from_dict_names_unknown_options():
    assert PipelineConfig.from_dict({"top_k": 2}).top_k == 2
    with pytest.raises(PipelineConfigError, match="motion_treshold"):
        PipelineConfig.from_dict({"motion_treshold": 0.1})


def test_top_k_beyond_the_classes_lists_every_class():
    pipe, _ = make_pipe(top_k=10)
    [sign] = ended(run_stream(pipe, script_rows(*SIGN)))
    assert [lab for lab, _ in sign.alternatives] == LABELS


_STREAM = None


def _property_stream() -> np.ndarray:
    """Rest, signs of several lengths, tracking dropouts and a long movement: every state transition."""
    global _STREAM
    if _STREAM is None:
        rows = script_rows(("rest", 8), ("move", 6), ("rest", 14), ("move", 25), ("rest", 3), ("move", 4),
                           ("rest", 12), ("move", 60), ("rest", 5))
        rows[40:44, 63:126] = 0  # the moving hand is lost for a while
        rows[90:92] = 0  # nothing tracked
        _STREAM = [payload_from_raw(r, confidence=c) for r, c in zip(rows, np.linspace(0.1, 1.0, len(rows)))]
    return _STREAM


small_int = st.integers(min_value=-2, max_value=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({
    "motion_threshold": st.sampled_from([0.0, 0.001, 0.005, 0.02]), "preroll_frames": small_int,
    "min_rest_frames": small_int, "min_sign_frames": small_int, "max_sign_frames": st.integers(-1, 70),
    "trailing_rest_kept": small_int, "seq_len": st.one_of(st.none(), st.integers(0, 80)),
    "top_k": small_int, "vote_window": small_int, "confidence_threshold": st.floats(-0.1, 1.1),
    "min_hand_visibility": st.floats(0, 1), "max_threshold": st.floats(0, 1.1),
    "min_prediction_margin": st.floats(0, 1), "ignore_tracking_jumps": st.booleans(),
    "calibrate_confidence": st.booleans(), "sentence_max_words": small_int,
}))
def test_any_config_is_refused_or_runs_every_frame(options):
    """Either validate() refuses the config, or a replayed stream runs through without any exception."""
    try:
        config = PipelineConfig(**options).validate()
    except PipelineConfigError:
        return
    runner = ScriptedRunner([logits_for(0.95, 0), logits_for(0.5, 1), logits_for(0.8, 2)])
    pipe = SignFlowInferencePipeline.from_runner(runner, LABELS, config)
    for payload in _property_stream():
        p = pipe.process_frame(payload)
        assert p.frames <= config.max_sign_frames
    pipe.flush()


# -- whole clips ------------------------------------------------------------------------------------
def test_process_sequence_takes_raw_or_landmark_arrays_and_keeps_the_stream_state():
    pipe, runner = make_pipe()
    rows = script_rows(("rest", 5), ("move", 30))
    before = run_stream(pipe, rows[:10])
    a = pipe.process_sequence(rows)
    b = pipe.process_sequence({"left": rows[:, :63].reshape(-1, 21, 3), "right": rows[:, 63:126].reshape(-1, 21, 3),
                               "pose": rows[:, 126:].reshape(-1, 33, 3)})
    c = pipe.process_sequence((None, rows[:, 63:126].reshape(-1, 21, 3), rows[:, 126:].reshape(-1, 33, 3)))
    assert a.reason == "clip" and a.label == "a" and a.frames == len(rows) and a.votes == 1
    np.testing.assert_array_equal(runner.windows[-3][0], runner.windows[-2][0])
    assert c.frames == len(rows)
    assert b.alternatives == a.alternatives
    # stateless: the stream goes on as if the clips had not been classified
    after = run_stream(pipe, rows[10:])
    fresh, _ = make_pipe()
    expect = run_stream(fresh, rows)[10:]
    assert [(p.state, p.frames) for p in after] == [(p.state, p.frames) for p in expect]
    assert before[-1].state == "recording" and pipe.sentence == []
    with pytest.raises(InputError):
        pipe.process_sequence(np.zeros((10, 224), np.float32))
    with pytest.raises(InputError):
        pipe.process_sequence({"hand": rows})


def test_process_sequence_judges_the_clip_as_its_own_window():
    pipe, _ = make_pipe(logits_for(0.75), RAW)
    rows = script_rows(("move", 30))
    assert pipe.process_sequence(rows).flags == ()
    assert pipe.process_sequence(rows, confidence=0.3).flags == ("poor_tracking",)
    assert pipe.process_sequence(script_rows(("rest", 30))).flags == ("low_motion",)


# -- model files and backends -------------------------------------------------------------------------
@pytest.fixture
def tiny(tiny_artifacts):
    """A small untrained model as .pt, .onnx and optimized .onnx (the session fixture of conftest)."""
    return tiny_artifacts


@pytest.fixture(scope="module")
def sample_clip():
    clips, _ = generate(SyntheticSpec(num_classes=2, num_signers=1, clips_per_signer_per_class=1, seed=5))
    return clips[0].raw


def _copy(src, dst):
    shutil.copy(src, dst)
    return dst


def test_model_file_picks_the_backend_and_all_artifacts_agree(tiny, sample_clip):
    results = {}
    for path, backend in ((tiny.checkpoint, "torch-eager"), (tiny.onnx, "onnx-cpu"),
                          (tiny.onnx_optimized, "onnx-optimized")):
        with SignFlowInferencePipeline(path) as pipe:
            assert pipe.backend_name == backend and pipe.labels == tiny.labels and pipe.seq_len == 64
            results[backend] = pipe.process_sequence(sample_clip)
    ref = results["torch-eager"]
    for pred in results.values():
        assert pred.candidate == ref.candidate
        np.testing.assert_allclose([p for _, p in pred.alternatives], [p for _, p in ref.alternatives], atol=1e-5)


def test_explicit_backend_must_match_the_file(tiny):
    with pytest.raises(BackendError, match=r"\.onnx"):
        SignFlowInferencePipeline(tiny.checkpoint, backend="onnx-cpu")
    with pytest.raises(BackendError, match=r"\.pt"):
        SignFlowInferencePipeline(tiny.onnx, backend="torch-eager")
    with pytest.raises(BackendError, match="optimized"):
        SignFlowInferencePipeline(tiny.onnx, backend="onnx-optimized")
    with pytest.raises(BackendError, match="unknown backend 'no-such'"):
        SignFlowInferencePipeline(tiny.onnx, backend="no-such")
    pipe = SignFlowInferencePipeline(tiny.onnx_optimized, backend="onnx-cpu")  # an optimized graph runs on CPU too
    assert pipe.backend_name == "onnx-cpu"


def test_a_third_party_backend_comes_from_the_registry_passed_in(tiny, sample_clip):
    from signflow_zoo.backends.builtin.onnx_cpu import OnnxCpuRunner
    from signflow_zoo.hookspecs import hookimpl
    from signflow_zoo.plugins import PluginRegistry, get_registry

    class ThirdParty(OnnxCpuRunner):
        name = "acme-onnx"
        prepared_with = None

        def prepare(self, artifacts):
            ThirdParty.prepared_with = artifacts.path_for("onnx")
            super().prepare(artifacts)

    plugin = types.ModuleType("acme")
    plugin.register_runners = hookimpl(lambda register: register(ThirdParty))
    registry = PluginRegistry([plugin], entry_points=False)
    pipe = SignFlowInferencePipeline(tiny.onnx, backend="acme-onnx", registry=registry)
    assert pipe.backend_name == "acme-onnx" and ThirdParty.prepared_with == tiny.onnx
    assert pipe.process_sequence(sample_clip).candidate in tiny.labels
    assert "acme-onnx" not in get_registry().names()  # the process-wide registry was not touched
    with pytest.raises(BackendError, match="acme-onnx"):
        SignFlowInferencePipeline(tiny.onnx, backend="acme-onnx")


def test_a_plugin_artifact_kind_is_built_from_the_model_file(tiny, sample_clip):
    from signflow_zoo.plugins import get_registry

    if "onnx-int8" not in get_registry().names():
        pytest.skip("the example plugin signflow-zoo-ort-int8 is not installed (pip install -e plugins/...)")
    with pytest.warns(RuntimeWarning, match="building artifact 'onnx-int8-dynamic'"):
        pipe = SignFlowInferencePipeline(tiny.onnx, backend="onnx-int8")
    assert pipe.backend_name == "onnx-int8" and pipe.process_sequence(sample_clip).candidate in tiny.labels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SignFlowInferencePipeline(tiny.onnx, backend="onnx-int8")  # built once: cached in the zoo home


def test_a_plugin_kind_built_from_a_checkpoint_needs_the_checkpoint(tiny):
    from signflow_zoo.api import ArtifactKind, Runner, hookimpl
    from signflow_zoo.plugins import PluginRegistry

    class FromTorch(ArtifactKind):
        name, source, version, main_file = "from-torch", "torch", "1", "model.bin"

    class FromTorchRunner(Runner):
        name, artifact = "from-torch-runner", "from-torch"

    plugin = types.ModuleType("acme")
    plugin.register_artifact_kinds = hookimpl(lambda register: register(FromTorch))
    plugin.register_runners = hookimpl(lambda register: register(FromTorchRunner))
    registry = PluginRegistry([plugin], entry_points=False)
    with pytest.raises(BackendError, match=r"runs a PyTorch checkpoint: pass a \.pt model file"):
        SignFlowInferencePipeline(tiny.onnx, backend="from-torch-runner", registry=registry)


def test_without_onnxruntime_an_onnx_file_falls_back_to_its_checkpoint(tiny, tmp_path, monkeypatch, sample_clip):
    onnx = _copy(tiny.onnx, tmp_path / "model.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(BackendError, match="ONNX Runtime is not available.*model.pt"):
        SignFlowInferencePipeline(onnx)
    _copy(tiny.checkpoint, tmp_path / "model.pt")
    with pytest.warns(RuntimeWarning, match="serving model.pt with PyTorch"):
        pipe = SignFlowInferencePipeline(onnx)
    assert pipe.backend_name == "torch-eager" and pipe.model_path == tmp_path / "model.pt"
    assert pipe.notes and "torch-eager" in pipe.notes[0]
    assert pipe.process_sequence(sample_clip).candidate in tiny.labels


def test_fallback_refuses_a_checkpoint_of_another_model(tiny, tmp_path, monkeypatch):
    from signflow_zoo.model.checkpoint import save_checkpoint
    from signflow_zoo.model.network import SignTransformer

    onnx = _copy(tiny.onnx, tmp_path / "model.onnx")
    other = SignTransformer(num_classes=4, d_model=48, nhead=4, num_layers=1, dim_feedforward=64)
    save_checkpoint(tmp_path / "model.pt", other, {"preset": "x", "labels": ["w", "x", "y", "z"]})
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelFileError, match="labels differ"):
        SignFlowInferencePipeline(onnx)


def test_feature_version_mismatch_is_a_clear_error(tiny, tmp_path):
    import onnx

    from signflow_zoo.model.checkpoint import load_checkpoint, save_checkpoint
    from signflow_zoo.model.export import set_metadata

    model, meta = load_checkpoint(tiny.checkpoint)
    old_pt = save_checkpoint(tmp_path / "old.pt", model, {**meta, "feature_version": "signflow-300-v0"})
    proto = onnx.load(str(tiny.onnx))
    set_metadata(proto, {"feature_version": "signflow-300-v0"})
    onnx.save(proto, str(tmp_path / "old.onnx"))
    for path in (old_pt, tmp_path / "old.onnx"):
        with pytest.raises(ModelFileError) as err:
            SignFlowInferencePipeline(path)
        assert "signflow-300-v0" in str(err.value) and FEATURE_VERSION in str(err.value)


def test_bad_model_files_are_clear_errors(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        SignFlowInferencePipeline(tmp_path / "missing.onnx")
    (tmp_path / "model.h5").write_bytes(b"x")
    with pytest.raises(ModelFileError, match="expected .onnx"):
        SignFlowInferencePipeline(tmp_path / "model.h5")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(ModelFileError, match="junk.onnx"):
        SignFlowInferencePipeline(tmp_path / "junk.onnx")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(SignFlowError, match="junk.pt"):
        SignFlowInferencePipeline(tmp_path / "junk.pt")


# -- end to end: a trained model, served from every artifact -----------------------------------------
NUM_CLASSES = 5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """lightweight trained a few epochs on a small synthetic set; saved as .pt and exported to .onnx."""
    import torch

    from signflow_zoo.model.export import serving_metadata
    from signflow_zoo.model.checkpoint import read_checkpoint
    from signflow_zoo.data.loading import clips_to_dataset
    from signflow_zoo.model.export import export_to_onnx
    from signflow_zoo.model.network import build_model
    from signflow_zoo.model.training import SignTrainer, TrainingConfig
    from signflow_zoo.model.zoo import get_model_config

    clips, names = generate(SyntheticSpec(num_classes=NUM_CLASSES, num_signers=8, clips_per_signer_per_class=3, seed=0))
    train = [c for c in clips if c.signer not in ("signer-06", "signer-07")]
    val = [c for c in clips if c.signer == "signer-06"]
    test = [c for c in clips if c.signer == "signer-07"]
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    try:
        model = build_model(get_model_config("lightweight"), NUM_CLASSES)
        cfg = TrainingConfig(num_epochs=10, batch_size=16, use_mlflow=False, progress=False, amp="off", num_threads=1,
                             device="cpu")
        trainer = SignTrainer(model, cfg, class_names=names, metadata={"preset": "lightweight"})
        trainer.fit(clips_to_dataset(train, names), clips_to_dataset(val, names))
    finally:
        torch.set_num_threads(threads)
    folder = tmp_path_factory.mktemp("trained")
    pt = trainer.save_model(folder / "lightweight.pt")
    _, meta = read_checkpoint(pt)
    onnx = folder / "lightweight.onnx"
    export_to_onnx(trainer.model, onnx, metadata=serving_metadata(meta), exporter="legacy", verify=False)
    return {"pt": pt, "onnx": onnx, "names": names, "test": test, "val_accuracy": trainer.result["val_accuracy"]}


def _replay(pipe, rows):
    out = []
    for r in rows:
        p = pipe.process_frame(payload_from_raw(r))
        if p.ended:
            out.append(p)
    last = pipe.flush()
    return out + ([last] if last else [])


@pytest.mark.slow
def test_pt_and_onnx_give_the_same_answers_on_a_stream_of_known_signs(trained):
    from signflow_zoo.serve.replay import segmentation_score

    test = trained["test"]
    order = [test[i] for i in np.random.default_rng(0).permutation(len(test))]
    rows, spans = stream_from_clips(order, rest_frames=20)
    cfg = PipelineConfig(threads=1)
    runs = {}
    for kind in ("pt", "onnx"):
        with SignFlowInferencePipeline(trained[kind], config=cfg) as pipe:
            assert pipe.backend_name == {"pt": "torch-eager", "onnx": "onnx-cpu"}[kind]
            runs[kind] = (_replay(pipe, rows), pipe.sentence)
    pt, onnx = runs["pt"][0], runs["onnx"][0]
    score = segmentation_score(pt, spans)
    assert score["detected"] >= len(order) // 2, f"the state machine must find the signs in the stream: {score}"
    assert [p.frame_index for p in pt] == [p.frame_index for p in onnx]
    assert [p.candidate for p in pt] == [p.candidate for p in onnx]
    assert [p.label for p in pt] == [p.label for p in onnx]
    assert runs["pt"][1] == runs["onnx"][1]
    for a, b in zip(pt, onnx):
        np.testing.assert_allclose(a.probability, b.probability, atol=1e-4)

    # which clip each prediction belongs to: the last clip that started before the frame that ended it
    def truth(frame):
        return trained["names"][order[max(i for i, (s, _) in enumerate(spans) if s <= frame)].label]

    correct = [p for p in pt if p.candidate == truth(p.frame_index)]
    # half leaves room for another machine's training
    assert len(correct) >= len(pt) / 2, f"{len(correct)}/{len(pt)} right (val accuracy {trained['val_accuracy']:.2f})"


@pytest.mark.slow
def test_whole_clips_agree_between_pt_and_onnx(trained):
    clips = trained["test"]
    preds = {}
    for kind in ("pt", "onnx"):
        with SignFlowInferencePipeline(trained[kind], config=PipelineConfig(threads=1)) as pipe:
            preds[kind] = [pipe.process_sequence(c.raw) for c in clips]
    assert [p.candidate for p in preds["pt"]] == [p.candidate for p in preds["onnx"]]
    accuracy = np.mean([p.candidate == trained["names"][c.label] for p, c in zip(preds["pt"], clips)])
    assert accuracy > 1 / NUM_CLASSES  # better than chance on unseen signers


@pytest.mark.slow
def test_measure_stream_latency_on_a_prepared_runner(trained):
    from signflow_zoo.backends.artifacts import artifacts_from_model_file
    from signflow_zoo.backends.builtin.onnx_cpu import OnnxCpuRunner
    from signflow_zoo.backends.runner import RunnerOptions

    runner = OnnxCpuRunner(RunnerOptions(threads=1))
    runner.prepare(artifacts_from_model_file(trained["onnx"]))
    res = measure_stream_latency(runner, trained["names"], trained["test"][:5])
    assert res["backend"] == "onnx-cpu" and res["signs"] == 5
    assert res["predictions"] == res["latency_ms"]["count"] >= 3
    lat = res["latency_ms"]
    assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert res["model_ms"]["p50_ms"] < lat["p50_ms"]  # the model is part of the latency, not all of it
    assert res["frame_ms"]["count"] + res["predictions"] >= res["frames"] - 1
    assert res["trustworthy"] is False and "not trustworthy" in res["note"]
    json.dumps(res)
    runner.close()


# -- CLI --------------------------------------------------------------------------------------------
def cli(*argv):
    from signflow_zoo.cli.commands import main

    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory, trained):
    from signflow_zoo.data.loading import write_lsfb_fixture

    folder = tmp_path_factory.mktemp("clips")
    clips = trained["test"][:3]
    np.save(folder / "one.npy", clips[0].raw)
    lsfb = write_lsfb_fixture(folder / "lsfb", clips, trained["names"])
    return {"npy": folder / "one.npy", "lsfb": lsfb, "clips": clips}


@pytest.mark.slow
def test_cli_predict_npy_text_and_json(trained, clip_files, capsys):
    assert cli("predict", clip_files["npy"], "--model", trained["onnx"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("one: ") and "  1. " in out and "  4. " in out
    assert cli("predict", clip_files["npy"], "--model", trained["pt"], "--format", "json") == 0
    res = json.loads(capsys.readouterr().out)
    assert res["backend"] == "torch-eager" and len(res["predictions"]) == 1
    pred = res["predictions"][0]
    assert pred["candidate"] in trained["names"] and len(pred["top_k"]) == 4 and len(pred["alternatives"]) == 3
    assert pred["candidate"] in out  # same answer from .pt and .onnx


@pytest.mark.slow
def test_cli_predict_lsfb_instance_and_folder(trained, clip_files, capsys):
    lsfb = clip_files["lsfb"]
    ident = sorted((lsfb / "poses" / "pose").glob("*.npy"))[0]
    assert cli("predict", ident, "--model", trained["onnx"], "--format", "json") == 0
    one = json.loads(capsys.readouterr().out)["predictions"]
    assert len(one) == 1 and one[0]["clip"] == ident.stem and one[0]["true_label"] in trained["names"]
    assert cli("predict", lsfb, "--model", trained["onnx"], "--instance", ident.stem, "--format", "json") == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["candidate"] == one[0]["candidate"]
    assert cli("predict", lsfb, "--model", trained["onnx"]) == 0
    out = capsys.readouterr().out
    assert out.count("[true: ") == 3 and "top-1 accuracy:" in out


@pytest.mark.slow
def test_cli_stream_prints_predictions_with_latency(trained, clip_files, capsys):
    files = [clip_files["npy"], sorted((clip_files["lsfb"] / "poses" / "pose").glob("*.npy"))[1]]
    assert cli("stream", *files, "--model", trained["onnx"], "--no-realtime", "--format", "json", "--fps", 25) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    summary = lines[-1]["summary"]
    preds = lines[:-1]
    assert summary["predictions"] == len(preds) >= 1 and summary["signs"] == 2
    assert summary["frames"] == summary["expected_frames"]
    assert all(p["ended"] and p["latency_ms"] > 0 and p["t"] == pytest.approx(p["frame_index"] / 25, abs=1e-3)
               and p["prediction"] in trained["names"] + ["NONE"] for p in preds)
    assert cli("stream", clip_files["npy"], "--model", trained["pt"], "--no-realtime") == 0
    out = capsys.readouterr().out
    assert "latency" in out and "sentence:" in out and "torch-eager" in out


@pytest.mark.parametrize("argv,message", [
    (["predict", "{tmp}/nope.npy", "--model", "{pt}"], "not found"),
    (["predict", "{npy}", "--model", "{tmp}/nope.onnx"], "model file not found"),
    (["predict", "{npy}", "--model", "{pt}", "--backend", "onnx-cpu"], ".onnx"),
    (["predict", "{npy}", "--model", "{pt}", "--threshold", "2"], "--threshold: expected a number in 0..1"),
    (["predict", "{bad}", "--model", "{pt}"], "expected [frames, 225]"),
    (["stream", "{npy}", "--model", "{pt}", "--no-realtime", "--backend", "nope"], "unknown backend"),
])
def test_cli_user_errors_exit_2_with_a_message(argv, message, tiny, tmp_path, capsys):
    np.save(tmp_path / "clip.npy", np.zeros((20, 225), np.float32))
    np.save(tmp_path / "bad.npy", np.zeros((20, 75, 3), np.float32))
    subs = {"tmp": tmp_path, "pt": tiny.checkpoint, "npy": tmp_path / "clip.npy", "bad": tmp_path / "bad.npy"}
    assert cli(*[a.format(**subs) for a in argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_threshold_above_the_cap_is_honoured(tiny, tmp_path, capsys):
    clip, _ = generate(SyntheticSpec(num_classes=2, num_signers=1, clips_per_signer_per_class=1, seed=5))
    np.save(tmp_path / "clip.npy", clip[0].raw)
    assert cli("predict", tmp_path / "clip.npy", "--model", tiny.onnx, "--threshold", "0.99", "--format", "json") == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["threshold"] == pytest.approx(0.99)


def test_measure_stream_latency_needs_no_model_file():
    clips, names = generate(SyntheticSpec(num_classes=3, num_signers=1, clips_per_signer_per_class=1, seed=2))
    runner = ScriptedRunner(logits_for(0.9))
    res = measure_stream_latency(runner, names, clips, repeats=2)
    assert res["signs"] == 6 and res["predictions"] >= 4 and res["frames_per_s"] > 0
    assert res["nonmodel_ms"]["count"] == res["frames"]
    rows, spans = stream_from_clips(clips)
    assert res["frames"] == 2 * len(rows) and len(spans) == 3
    blank = Prediction()
    assert not blank.ended and blank.label is None and blank.state == "idle"
    wire = blank.to_dict()
    assert {k: wire[k] for k in ("prediction", "confidence", "alternatives", "sentence_buffer", "is_sentence_complete",
                                 "decision_diagnostics", "latency_ms")} == {
        "prediction": "NONE", "confidence": 0.0, "alternatives": [], "sentence_buffer": "",
        "is_sentence_complete": False, "decision_diagnostics": None, "latency_ms": None}
    assert wire["ended"] is False and wire["accepted"] is False and wire["top_k"] == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        json.dumps(res)
