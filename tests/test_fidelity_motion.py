"""Fidelity to the original SignFlow pipeline (commit 118fad0, the version whose model reads 469 features):
motion energy in its units (hands normalized per frame by the hip centre and the body scale) and the keys of
its ``decision_diagnostics``.

The original's formulas are re-written here from its source (``backend/app/ml/features.py``:
``normalize_landmarks`` / ``_resolve_body_scale``; ``backend/app/ml/pipeline.py``: ``process_frame``,
``_compute_motion_energy``, ``_compute_hand_visibility``), independently of signflow_zoo's code.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from signflow_zoo.backends.runner import Runner
from signflow_zoo.serve.motion import FrameHands, motion_profile, normalized_hands, visibility
from signflow_zoo.serve.payload import parse_payload, payload_from_raw
from signflow_zoo.serve.pipeline import DECISION_COUNTERS, PipelineConfig, SignFlowInferencePipeline


# -- the original, re-written from 118fad0 -----------------------------------------------------------------
def original_normalize_landmarks(payload: dict) -> np.ndarray:
    """``normalize_landmarks(FrameLandmarks(...), include_face=False)`` as ``process_frame`` calls it."""

    def flatten(points, expected_len):  # xyz list -> fixed size, zero-padded (a part not detected: all zeros)
        values = [coord for point in points for coord in point[:3]]
        if len(values) < expected_len * 3:
            values.extend([0.0] * (expected_len * 3 - len(values)))
        return values[: expected_len * 3]

    hands = payload.get("hands", {})
    pose = flatten(payload.get("pose", []) or [], 33)
    hip_left = np.array(pose[23 * 3 : 23 * 3 + 3]) if len(pose) >= 75 else np.zeros(3)
    hip_right = np.array(pose[24 * 3 : 24 * 3 + 3]) if len(pose) >= 78 else np.zeros(3)
    hip_center = (hip_left + hip_right) / 2.0
    left = np.array(flatten(hands.get("left", []) or [], 21)).reshape(-1, 3)
    right = np.array(flatten(hands.get("right", []) or [], 21)).reshape(-1, 3)
    pose_vec = np.array(pose).reshape(-1, 3)

    # _resolve_body_scale: 3-D distances on the zero-filled points, floor 1e-3
    sl, sr, hl, hr = pose_vec[11], pose_vec[12], pose_vec[23], pose_vec[24]
    shoulder_width = float(np.linalg.norm(sl - sr))
    hip_width = float(np.linalg.norm(hl - hr))
    torso_height = float(np.linalg.norm((sl + sr) / 2.0 - (hl + hr) / 2.0))
    body_scale = max(shoulder_width, hip_width, torso_height, 1e-3)

    chunks = [((part - hip_center) / body_scale).reshape(-1) for part in (left, right, pose_vec)]
    normalized = np.concatenate(chunks).astype(np.float32)
    normalized = np.nan_to_num(normalized, nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(normalized, -5.0, 5.0)


def original_motion(previous: np.ndarray, current: np.ndarray) -> float:
    """``_compute_motion_energy``: mean |delta| of the first 126 normalized values (left + right hands)."""
    return float(np.mean(np.abs(current[:126] - previous[:126])))


def original_visibility(payload: dict) -> float:
    """``_compute_hand_visibility``, on the raw (not normalized) points."""

    def visible(hand):
        return sum(1 for p in (hand or [])[:21] if len(p) >= 3 and any(abs(float(c)) > 1e-6 for c in p[:3]))

    hands = payload.get("hands", {})
    return min(1.0, (visible(hands.get("left")) + visible(hands.get("right"))) / 42)


# -- hand-made frames ------------------------------------------------------------------------------------
def hand(cx: float, cy: float) -> list[list[float]]:
    return [[cx + 0.03 * math.cos(i), cy + 0.04 * math.sin(1.3 * i), -0.01 * (i % 4)] for i in range(21)]


def body(dx: float = 0.0, dy: float = 0.0) -> list[list[float]]:
    """A pose whose largest measure is the torso height, with a z part (0.332 in x y z, 0.320 in x y)."""
    cx, cy = 0.5 + dx, 0.45 + dy
    pts = [[cx + 0.01 * (i - 16), cy - 0.2 + 0.004 * i, -0.05 + 0.002 * i] for i in range(33)]
    pts[11], pts[12] = [cx + 0.09, cy - 0.15, -0.10], [cx - 0.10, cy - 0.14, -0.08]
    pts[23], pts[24] = [cx + 0.05, cy + 0.18, 0.01], [cx - 0.06, cy + 0.17, -0.01]
    return pts


def frame(left=(0.62, 0.55), right=(0.38, 0.52), pose_shift=(0.0, 0.0), lost=()) -> dict:
    pose = body(*pose_shift)
    for i in lost:  # pose points the tracker reports as zeros
        if i != "pose":
            pose[i] = [0.0, 0.0, 0.0]
    return {"hands": {"left": hand(*left) if left else None, "right": hand(*right) if right else None},
            "pose": None if "pose" in lost else pose}


FRAMES = [
    frame(),                                                   # 0
    frame((0.624, 0.547), (0.378, 0.525)),                     # 1 both hands move
    frame((0.640, 0.556), (0.390, 0.531), (0.01, 0.005)),      # 2 the body shifts, the hands move more
    frame((0.645, 0.560), None, (0.01, 0.005)),                # 3 the right hand is lost
    frame((0.650, 0.565), None, (0.012, 0.006)),               # 4 still lost; the left hand and the body move
    frame((0.655, 0.570), (0.395, 0.535), (0.012, 0.006)),     # 5 the right hand is back
    frame((0.660, 0.572), (0.398, 0.537), (0.01, 0.005), lost=(23, 24)),  # 6 the hips are lost
    frame((0.665, 0.575), (0.401, 0.539), (0.01, 0.005), lost=(23, 24)),  # 7 still lost
    frame((0.670, 0.578), (0.404, 0.541), (0.01, 0.005), lost=(11,)),     # 8 hips back, a shoulder lost
    frame((0.675, 0.581), (0.407, 0.543), lost=("pose",)),     # 9 no pose at all: body scale 1e-3
    frame((0.680, 0.584), (0.410, 0.545), lost=("pose",)),     # 10 still no pose
    frame((0.685, 0.587), (0.413, 0.547)),                     # 11 the pose is back
]
ROWS = np.stack([parse_payload(f)[0] for f in FRAMES])
ORIGINAL = np.stack([original_normalize_landmarks(f) for f in FRAMES])
ORIGINAL_MOTION = np.array([0.0] + [original_motion(a, b) for a, b in zip(ORIGINAL[:-1], ORIGINAL[1:])])


class NullRunner(Runner):
    name = "test-fidelity-null"
    artifact = "onnx"

    def __init__(self, logits):
        super().__init__()
        self.script = [np.asarray(x, np.float32) for x in logits]
        self.calls = 0
        self.prepared = True

    def infer(self, features, mask):
        self.calls += 1
        return self.script[min(self.calls - 1, len(self.script) - 1)][None].repeat(len(features), 0)


def stream_motion(rows: np.ndarray, ignore: bool) -> list[float]:
    cfg = PipelineConfig(motion_threshold=1e9, ignore_tracking_jumps=ignore, warmup=False)  # never starts
    pipe = SignFlowInferencePipeline.from_runner(NullRunner([np.zeros(3)]), ["a", "b", "c"], cfg)
    return [pipe.process_frame(payload_from_raw(r)).motion for r in rows]


# -- units -----------------------------------------------------------------------------------------------
def test_the_frames_cover_the_cases():
    scale = np.linalg.norm(np.mean(ROWS[0, 126 + 33:126 + 39].reshape(2, 3), 0)
                           - np.mean(ROWS[0, 126 + 69:126 + 75].reshape(2, 3), 0))
    assert scale == pytest.approx(0.3324, abs=1e-4)  # the torso height, z included, is the body scale
    assert (ORIGINAL[9:11, :126] == 5.0).sum() > 100  # no pose: 1e-3 scale, the hands clip at +5


def test_normalized_hands_are_the_originals():
    np.testing.assert_allclose(normalized_hands(ROWS), ORIGINAL[:, :126], rtol=0, atol=2e-6)


def test_motion_with_the_originals_rule_is_the_originals_motion():
    np.testing.assert_allclose(motion_profile(ROWS, ignore_tracking_jumps=False), ORIGINAL_MOTION, rtol=0, atol=1e-6)
    np.testing.assert_allclose(stream_motion(ROWS, ignore=False), ORIGINAL_MOTION, rtol=0, atol=1e-6)
    assert ORIGINAL_MOTION[1] > 0.005  # a real movement of the hands is a sign start in these units


def test_ignore_tracking_jumps_departs_only_on_tracking_events():
    got = motion_profile(ROWS, ignore_tracking_jumps=True)
    np.testing.assert_allclose(stream_motion(ROWS, ignore=True), got, rtol=0, atol=1e-9)
    # both hands tracked, no shoulder or hip lost or found: the original's value (missing hips, no pose included)
    for i in (1, 2, 7, 10):
        assert got[i] == pytest.approx(ORIGINAL_MOTION[i], abs=1e-6), i
    # a hand appears, vanishes or stays lost: that hand adds nothing, the other counts as the original measures it
    for i in (3, 4, 5):
        left = float(np.abs(ORIGINAL[i, :63] - ORIGINAL[i - 1, :63]).sum()) / 126
        assert got[i] == pytest.approx(left, abs=1e-6) and ORIGINAL_MOTION[i] > got[i], i
    assert ORIGINAL_MOTION[3] > 0.05 > got[3]  # the original: the lost hand jumps to minus the hip centre / scale
    # a shoulder or hip is lost or found: both frames in the reference of the one with more of 11/12/23/24

    def in_reference(i: int, ref: int) -> float:
        pose = ROWS[ref, 126:].astype(np.float64).reshape(33, 3)
        centre = (pose[23] + pose[24]) / 2
        scale = max(np.linalg.norm(pose[11] - pose[12]), np.linalg.norm(pose[23] - pose[24]),
                    np.linalg.norm((pose[11] + pose[12]) / 2 - centre), 1e-3)
        norm = lambda r: np.clip((ROWS[r, :126].reshape(42, 3) - centre) / scale, -5, 5)  # noqa: E731
        return float(np.abs(norm(i) - norm(i - 1)).sum()) / 126

    for i, ref in ((6, 5), (8, 8), (9, 8), (11, 11)):
        assert got[i] == pytest.approx(in_reference(i, ref), abs=1e-6), i
    assert ORIGINAL_MOTION[9] > 1.0 and got[9] < 0.05  # the original: the hands jump to the clip value


def test_a_body_twice_as_large_moving_twice_as_far_has_the_same_motion():
    centre = np.array([0.5, 0.5, 0.0])
    rows = ROWS[:6].astype(np.float64)  # full pose; the right hand lost on 3 and 4
    pts = rows.reshape(len(rows), 75, 3)
    seen = (pts != 0).any(axis=-1, keepdims=True)
    big = np.where(seen, centre + 2 * (pts - centre), 0.0).reshape(rows.shape).astype(np.float32)
    small_m, big_m = motion_profile(rows.astype(np.float32)), motion_profile(big)
    np.testing.assert_allclose(big_m, small_m, rtol=1e-5, atol=1e-8)
    assert small_m[1:].min() > 0
    # the original's rule too, except where a hand appears or vanishes (3, 5): its zero-filled hand sits at
    # minus the hip centre over the scale, which depends on where the body is in the image, not on its size
    steady = [0, 1, 2, 4]
    np.testing.assert_allclose(motion_profile(big, False)[steady], ORIGINAL_MOTION[steady], rtol=0, atol=1e-6)
    # without the body scale (hands minus the hip centre only), the large body would move twice as much
    def hip_centred(r: np.ndarray) -> np.ndarray:
        r = r[:3].astype(np.float64)  # both hands tracked
        return r[:, :126].reshape(-1, 42, 3) - r[:, 126 + 69 : 126 + 75].reshape(-1, 2, 3).mean(axis=1)[:, None]

    d_small, d_big = (np.abs(np.diff(hip_centred(r), axis=0)).mean() for r in (rows, big))
    assert d_big / d_small == pytest.approx(2.0, rel=1e-4)


def test_visibility_is_read_on_the_raw_points_as_the_original():
    np.testing.assert_allclose(visibility(ROWS), [original_visibility(f) for f in FRAMES], atol=1e-12)
    assert visibility(ROWS)[3] == 0.5 and visibility(ROWS)[9] == 1.0  # one hand lost / no pose: unchanged


def test_frame_hands_is_the_array_measure_frame_by_frame():
    hands = [FrameHands(r) for r in ROWS]
    for ignore in (True, False):
        got = [0.0] + [a.motion_to(b, ignore) for a, b in zip(hands[:-1], hands[1:])]
        np.testing.assert_allclose(got, motion_profile(ROWS, ignore), rtol=1e-9, atol=1e-12)


# -- decision_diagnostics --------------------------------------------------------------------------------
def logits_for(p_top: float, top: int = 0, n: int = 3) -> np.ndarray:
    p = np.full(n, (1 - p_top) / (n - 1))
    p[top] = p_top
    return np.log(p).astype(np.float32)


def sign_rows(signs: int) -> np.ndarray:
    """Rest, then the right hand going round a loop back to where it was (0.01..0.03 per frame in these
    units), then rest; ``signs`` times."""
    rows = []
    for _ in range(signs):
        rows += [frame()] * 20
        for k in range(1, 31):
            a = 2 * math.pi * k / 30
            rows.append(frame(right=(0.38 + 0.15 * math.sin(a), 0.52 + 0.1 * (1 - math.cos(a)))))
    rows += [frame()] * 20
    return np.stack([parse_payload(f)[0] for f in rows])


def run_signs(pipe, rows):
    return [p for p in (pipe.process_frame(payload_from_raw(r)) for r in rows) if p.ended]


def make(script, labels=("a", "b", "c"), meta=None, **cfg):
    config = PipelineConfig(warmup=False, **cfg)
    return SignFlowInferencePipeline.from_runner(NullRunner(script), list(labels), config, meta)


def test_decision_diagnostics_carry_the_originals_traces_and_counters():
    pipe = make([logits_for(0.99, 0), logits_for(0.6, 1), logits_for(0.9, 2)], labels=("a", "b", "NONE"))
    s1, s2, s3 = run_signs(pipe, sign_rows(3))
    d1, d2, d3 = (json.loads(json.dumps(s.to_dict()))["decision_diagnostics"] for s in (s1, s2, s3))
    for d, s in ((d1, s1), (d2, s2), (d3, s3)):  # the existing keys stay
        assert d["effective_threshold"] == s.threshold and d["rejected_by"] == s.rejected_by
        assert {"adaptive_threshold", "class_threshold", "flags"} <= set(d)
        assert list(d["counters"]) == list(DECISION_COUNTERS)
        assert "diagnostics" not in s.to_dict()  # on the wire only inside decision_diagnostics
    assert (s1.accepted, s2.rejected_by, s3.rejected_by) == (True, "threshold", "none_class")

    before = d1["prediction_before_filters"]
    assert (before["status"], before["stage"], before["prediction"]) == ("candidate", "post_inference", "a")
    assert before["raw_confidence"] == pytest.approx(s1.probability) and before["top2_margin"] == s1.margin
    assert before["calibrated_confidence"] <= s1.confidence  # the vote may only raise it
    assert d1["filter_trace"] == {"status": "accepted", "stage": "filters", "prediction": "a",
                                  "confidence": s1.confidence, "threshold": s1.threshold, "smoothed_label": "a",
                                  "smoothed_confidence": pytest.approx(s1.confidence)}
    # each sign ends on a still frame: its confidence was lowered for motion (the original's rejected_by_motion)
    assert d1["counters"] == {**dict.fromkeys(DECISION_COUNTERS, 0), "total_inferences": 1, "accepted": 1,
                              "rejected_by_motion": 1}

    assert d2["prediction_before_filters"]["status"] == "candidate" and s2.flags == ()
    assert d2["filter_trace"]["status"] == "rejected" and d2["filter_trace"]["reason"] == "below_effective_threshold"
    assert d2["filter_trace"]["confidence"] == s2.confidence < d2["filter_trace"]["threshold"] == s2.threshold
    assert d2["counters"] == {**dict.fromkeys(DECISION_COUNTERS, 0), "total_inferences": 2, "accepted": 1,
                              "rejected_total": 1, "rejected_by_confidence_threshold": 1, "rejected_by_motion": 2}

    assert d3["prediction_before_filters"]["stage"] == "labeling"
    assert d3["prediction_before_filters"]["reason"] == "model_predicted_none_class"
    assert d3["filter_trace"]["reason"] == "prediction_none_or_non_positive_confidence"
    # counted once (the original also added rejected_by_calibration and rejected_total again at its filters)
    assert d3["counters"] == {**dict.fromkeys(DECISION_COUNTERS, 0), "total_inferences": 3, "accepted": 1,
                              "rejected_total": 2, "rejected_by_confidence_threshold": 1, "rejected_by_label_none": 1,
                              "rejected_by_motion": 3}

    pipe.reset()  # the original's reset zeroes its counters
    [again] = run_signs(pipe, sign_rows(1))
    assert again.diagnostics is not None and again.diagnostics["counters"]["total_inferences"] == 1


def test_counters_of_class_thresholds_calibration_and_whole_clips():
    meta = {"class_thresholds": [0.95, 0.1, 0.5]}
    [s] = run_signs(make([logits_for(0.9, 0)], meta=meta, calibrate_confidence=False), sign_rows(1))
    c = s.diagnostics["counters"]
    assert (c["rejected_by_confidence_threshold"], c["rejected_by_class_threshold"],
            c["rejected_by_adaptive_threshold"]) == (1, 1, 1)  # the original: effective threshold 0.95 > 0.7

    tie = np.log(np.array([0.45, 0.45, 0.1])).astype(np.float32)  # margin 0: confidence x 0 -> calibration
    pipe = make([tie])
    [s] = run_signs(pipe, sign_rows(1))
    before = s.diagnostics["prediction_before_filters"]
    assert s.rejected_by == "calibration" and before["stage"] == "calibration"
    assert s.diagnostics["filter_trace"]["confidence"] == 0.0
    c = s.diagnostics["counters"]
    assert (c["rejected_by_calibration"], c["rejected_by_margin"], c["rejected_total"]) == (1, 1, 1)

    clip = pipe.process_sequence(sign_rows(1))  # a whole clip: its own decision's counters, the stream's untouched
    assert clip.diagnostics["counters"]["total_inferences"] == 1
    assert clip.to_dict()["decision_diagnostics"]["filter_trace"]["status"] == "rejected"
    [s] = run_signs(pipe, sign_rows(1))
    assert s.diagnostics["counters"]["total_inferences"] == 2
