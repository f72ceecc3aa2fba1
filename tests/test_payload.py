"""The browser frame payload: strict validation naming the field, and streams that survive junk frames."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signflow_zoo.common.errors import PayloadError
from signflow_zoo.data.features import FEATURE_DIM, RAW_DIM
from signflow_zoo.serve.payload import FrameInfo, parse_payload, payload_from_raw
from signflow_zoo.serve.pipeline import PipelineConfig, SignFlowInferencePipeline
from signflow_zoo.serve.replay import stream_from_clips
from signflow_zoo.backends.runner import Runner


def _points(n: int, base: float) -> list[list[float]]:
    return [[base + 0.01 * i, 0.5 - 0.005 * i, -0.02 * (i % 3)] for i in range(n)]


def valid_payload(**meta) -> dict:
    return {
        "hands": {"left": _points(21, 0.6), "right": _points(21, 0.3)},
        "pose": _points(33, 0.4),
        "metadata": {"averageConfidence": 0.9, "leftHandVisible": True, "rightHandVisible": True, **meta},
    }


# -- valid frames -----------------------------------------------------------------------------------
def test_valid_payload_fills_the_raw_layout():
    p = valid_payload()
    row, info = parse_payload(p)
    assert row.shape == (RAW_DIM,) and row.dtype == np.float32
    np.testing.assert_allclose(row[0:63], np.asarray(p["hands"]["left"], np.float32).ravel())
    np.testing.assert_allclose(row[63:126], np.asarray(p["hands"]["right"], np.float32).ravel())
    np.testing.assert_allclose(row[126:225], np.asarray(p["pose"], np.float32).ravel())
    assert info == FrameInfo(left_visible=True, right_visible=True, pose_visible=True, confidence=0.9)


def test_missing_parts_are_zero_filled_and_not_visible():
    p = valid_payload()
    p["hands"]["left"] = None
    p["pose"] = []
    del p["metadata"]
    row, info = parse_payload(p)
    assert not row[0:63].any() and not row[126:].any() and row[63:126].any()
    assert (info.left_visible, info.right_visible, info.pose_visible, info.confidence) == (False, True, False, None)
    assert info.hand_visible


def test_frontend_flag_can_mark_a_hand_invisible():
    row, info = parse_payload(valid_payload(rightHandVisible=False))
    assert row[63:126].any() and not info.right_visible and info.left_visible


def test_ints_tuples_and_arrays_are_accepted():
    p = valid_payload()
    p["hands"]["left"] = [tuple(int(v > 0.5) for v in pt) for pt in p["hands"]["left"]]
    p["pose"] = np.asarray(p["pose"], dtype=np.float32)
    row, _ = parse_payload(p)
    assert row[0:63].max() == 1.0


def test_payload_from_raw_roundtrips():
    rng = np.random.default_rng(0)
    row = rng.uniform(0, 1, RAW_DIM).astype(np.float32)
    row[0:63] = 0  # left hand not detected
    payload = payload_from_raw(row, confidence=0.8)
    assert payload["hands"]["left"] is None and payload["metadata"]["leftHandVisible"] is False
    json.dumps(payload)  # what a browser could send
    back, info = parse_payload(payload)
    np.testing.assert_array_equal(back, row)
    assert info.confidence == 0.8 and not info.left_visible and info.right_visible


# -- malformed frames name the field -----------------------------------------------------------------
def _mutate(path: list, value, delete: bool = False) -> dict:
    p = valid_payload()
    target = p
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return p


BAD = [
    (lambda: "not a dict", "<frame>"),
    (lambda: [valid_payload()], "<frame>"),
    (lambda: None, "<frame>"),
    (lambda: _mutate(["hands"], None, delete=True), "hands"),
    (lambda: _mutate(["hands"], [1, 2]), "hands"),
    (lambda: _mutate(["hands", "left"], None, delete=True), "hands.left"),
    (lambda: _mutate(["pose"], None, delete=True), "pose"),
    (lambda: _mutate(["hands", "left"], _points(20, 0.1)), "hands.left"),
    (lambda: _mutate(["pose"], _points(34, 0.1)), "pose"),
    (lambda: _mutate(["hands", "right"], "21 points"), "hands.right"),
    (lambda: _mutate(["hands", "right"], {"x": 1}), "hands.right"),
    (lambda: _mutate(["hands", "left", 3], [0.1, 0.2]), "hands.left[3]"),
    (lambda: _mutate(["hands", "left", 3], [0.1, 0.2, 0.3, 0.4]), "hands.left[3]"),
    (lambda: _mutate(["hands", "left", 3], "abc"), "hands.left[3]"),
    (lambda: _mutate(["hands", "left", 3], {"x": 0.1, "y": 0.2, "z": 0.3}), "hands.left[3]"),
    (lambda: _mutate(["hands", "left", 3, 1], float("nan")), "hands.left[3][1]"),
    (lambda: _mutate(["hands", "right", 0, 2], float("inf")), "hands.right[0][2]"),
    (lambda: _mutate(["pose", 32, 0], -float("inf")), "pose[32][0]"),
    (lambda: _mutate(["pose", 7, 2], "0.5"), "pose[7][2]"),
    (lambda: _mutate(["pose", 7, 2], True), "pose[7][2]"),
    (lambda: _mutate(["pose", 7, 2], None), "pose[7][2]"),
    (lambda: _mutate(["pose", 7, 2], [[[0.5]]]), "pose[7][2]"),
    (lambda: _mutate(["pose", 7, 2], 1e300), "pose[7][2]"),
    (lambda: _mutate(["pose", 7, 2], 10**400), "pose[7][2]"),
    (lambda: _mutate(["pose", 7, 2], complex(1, 1)), "pose[7][2]"),
    (lambda: _mutate(["metadata"], "high"), "metadata"),
    (lambda: _mutate(["metadata", "averageConfidence"], "0.9"), "metadata.averageConfidence"),
    (lambda: _mutate(["metadata", "averageConfidence"], 1.5), "metadata.averageConfidence"),
    (lambda: _mutate(["metadata", "averageConfidence"], float("nan")), "metadata.averageConfidence"),
    (lambda: _mutate(["metadata", "leftHandVisible"], "yes"), "metadata.leftHandVisible"),
    (lambda: _mutate(["metadata", "rightHandVisible"], 1), "metadata.rightHandVisible"),
]


@pytest.mark.parametrize("make,field", BAD, ids=[f for _, f in BAD])
def test_malformed_payload_names_the_field(make, field):
    with pytest.raises(PayloadError) as err:
        parse_payload(make())
    assert err.value.field == field
    assert field in str(err.value)


def test_array_part_of_the_wrong_shape_is_rejected():
    p = valid_payload()
    p["hands"]["left"] = np.zeros((21, 2))
    with pytest.raises(PayloadError, match="hands.left"):
        parse_payload(p)


def test_very_deep_nesting_is_reported_without_recursing():
    deep: object = 0.5
    for _ in range(100_000):
        deep = [deep]
    p = _mutate(["hands", "left", 0], deep)
    with pytest.raises(PayloadError) as err:
        parse_payload(p)
    assert err.value.field == "hands.left[0]"
    assert len(str(err.value)) < 300  # the message never dumps the junk


# -- fuzzing -------------------------------------------------------------------------------------------
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
json_like = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=40) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=80,
)


@settings(max_examples=150, deadline=None)
@given(json_like)
def test_arbitrary_json_parses_or_raises_payload_error(obj):
    try:
        row, info = parse_payload(obj)
    except PayloadError as exc:
        assert exc.field
        return
    assert row.shape == (RAW_DIM,) and np.isfinite(row).all()
    assert isinstance(info, FrameInfo)


def _paths(obj, prefix=()):
    """Every (path, value) inside a payload."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


VALID_PATHS = [p for p, _ in _paths(valid_payload()) if p]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(VALID_PATHS), json_like, st.booleans())
def test_a_payload_with_one_part_replaced_by_junk_parses_or_names_a_real_field(path, junk, delete):
    payload = valid_payload()
    target = payload
    for key in path[:-1]:
        target = target[key]
    if delete and isinstance(target, dict):
        del target[path[-1]]
    else:
        target[path[-1]] = junk
    try:
        row, _ = parse_payload(payload)
    except PayloadError as exc:
        # the field names the replaced spot, or the part that contains it, or a spot inside the junk
        text = "".join(f".{k}" if isinstance(k, str) else f"[{k}]" for k in path).lstrip(".")
        assert exc.field.startswith(text) or text.startswith(exc.field), (exc.field, text)
        return
    assert np.isfinite(row).all()


# -- a stream survives junk frames ----------------------------------------------------------------------
class MeanRunner(Runner):
    """Deterministic stand-in for a model: logits = mean features @ fixed random weights."""

    name = "test-mean"
    artifact = "onnx"

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.weights = np.random.default_rng(1).normal(0, 0.5, (FEATURE_DIM, num_classes)).astype(np.float32)
        self.prepared = True

    def infer(self, features, mask):
        w = mask[..., None].astype(np.float32)
        mean = (features * w).sum(1) / np.maximum(w.sum(1), 1)
        return mean @ self.weights


@pytest.fixture(scope="module")
def clean_stream():
    from signflow_zoo.data.synthetic import SyntheticSpec, generate

    clips, names = generate(SyntheticSpec(num_classes=5, num_signers=1, clips_per_signer_per_class=1, seed=3))
    rows, spans = stream_from_clips(clips[:3], rest_frames=15)
    payloads = [payload_from_raw(r) for r in rows]
    pipe = SignFlowInferencePipeline.from_runner(MeanRunner(), [f"c{i}" for i in range(5)], PipelineConfig())
    expected = [p.to_dict() for p in map(pipe.process_frame, payloads) if p.ended]
    assert len(expected) >= 3, "the clean stream must contain signs for this test to mean anything"
    return payloads, expected, pipe


def _comparable(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("latency_ms", "features_ms", "inference_ms", "frame_index")}


def _is_valid_frame(obj) -> bool:
    try:
        parse_payload(obj)
    except PayloadError:
        return False
    return True


junk_frames = (json_like | st.builds(lambda path, junk: _mutate(list(path), junk), st.sampled_from(VALID_PATHS),
                                     json_like)).filter(lambda obj: not _is_valid_frame(obj))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 10_000), junk_frames), min_size=1, max_size=30))
def test_junk_frames_interleaved_do_not_change_predictions(clean_stream, inserts):
    payloads, expected, pipe = clean_stream
    pipe.reset()
    junk_at: dict[int, list] = {}
    for pos, junk in inserts:
        junk_at.setdefault(pos % (len(payloads) + 1), []).append(junk)
    got = []
    for i in range(len(payloads) + 1):
        for junk in junk_at.get(i, []):
            with pytest.raises(PayloadError):
                pipe.process_frame(junk)
        if i < len(payloads):
            p = pipe.process_frame(payloads[i])
            if p.ended:
                got.append(_comparable(p.to_dict()))
    assert got == [_comparable(d) for d in expected]


def test_a_bad_frame_mid_sign_leaves_the_recording_intact(clean_stream):
    payloads, expected, pipe = clean_stream
    pipe.reset()
    got = []
    for i, payload in enumerate(payloads):
        if i % 7 == 3:  # bad frames everywhere, including inside every sign
            broken = copy.deepcopy(payload)
            broken["pose"] = [[math.nan, 0, 0]] * 33
            with pytest.raises(PayloadError):
                pipe.process_frame(broken)
        p = pipe.process_frame(payload)
        if p.ended:
            got.append(_comparable(p.to_dict()))
    assert got == [_comparable(d) for d in expected]
