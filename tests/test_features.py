"""The 469-feature pipeline: layout, invariances (hypothesis), missing parts, NaN, resampling."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from signflow_zoo.data import features as F
from signflow_zoo.common.errors import InputError

HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# Building bodies ----------------------------------------------------------------------------------
def make_body(frames: int, seed: int) -> np.ndarray:
    """A random but well-formed raw clip [frames, 225]: every point present, in (0.2, 0.8), shoulders
    at least 0.1 apart, so that no point sits at the origin and the shoulder width is well measured."""
    rng = np.random.default_rng(seed)
    raw = rng.uniform(0.2, 0.8, (frames, F.RAW_DIM))
    pose = raw[:, F.POSE].reshape(frames, 33, 3)
    pose[:, F.POSE_LEFT_SHOULDER, 0] = rng.uniform(0.55, 0.65, frames)
    pose[:, F.POSE_RIGHT_SHOULDER, 0] = rng.uniform(0.35, 0.45, frames)
    raw[:, F.POSE] = pose.reshape(frames, -1)
    return raw.astype(np.float32)


def pose_points(raw: np.ndarray) -> np.ndarray:
    return raw[:, F.POSE].reshape(len(raw), 33, 3)


def coords_of(feat: np.ndarray) -> np.ndarray:
    return feat[:, F.COORDS].reshape(len(feat), 75, 3)


bodies = st.builds(make_body, st.integers(1, 10), st.integers(0, 2**32 - 1))
GEOMETRY = [F.COORDS, F.VELOCITIES, F.DISTANCES, F.ANGLES, F.SHAPE]


# Layout -----------------------------------------------------------------------------------------
def test_constants_and_layout():
    assert (F.RAW_DIM, F.FEATURE_DIM, F.SEQ_LEN) == (225, 469, 64)
    assert F.FEATURE_VERSION == "signflow-469-v1"
    widths = [s.stop - s.start for s in (F.COORDS, F.VELOCITIES, F.DISTANCES, F.ANGLES, F.SHAPE)]
    assert widths == [225, 225, 5, 4, 10] and sum(widths) == F.FEATURE_DIM
    assert (F.LEFT_HAND, F.RIGHT_HAND, F.POSE) == (slice(0, 63), slice(63, 126), slice(126, 225))


def test_enrich_shape_dtype_and_first_velocity_zero():
    raw = make_body(7, 1)
    feat = F.enrich(raw)
    assert feat.shape == (7, 469) and feat.dtype == np.float32
    assert np.all(feat[0, F.VELOCITIES] == 0)
    assert np.abs(feat[1:, F.VELOCITIES]).max() > 0
    np.testing.assert_allclose(feat[1:, F.VELOCITIES], feat[1:, F.COORDS] - feat[:-1, F.COORDS], atol=1e-6)


def test_enrich_accepts_a_batch_and_matches_single_clips():
    batch = np.stack([make_body(5, s) for s in range(3)])
    out = F.enrich(batch)
    assert out.shape == (3, 5, 469)
    for i in range(3):
        np.testing.assert_array_equal(out[i], F.enrich(batch[i]))


def test_centre_is_hip_midpoint_and_scale_is_shoulder_width():
    raw = make_body(3, 2)
    pose = pose_points(raw).astype(np.float64)
    feat = F.enrich(raw)
    c = coords_of(feat)[:, 42:]
    hip_mid = c[:, F.POSE_LEFT_HIP] + c[:, F.POSE_RIGHT_HIP]
    np.testing.assert_allclose(hip_mid, 0.0, atol=1e-6)
    width = np.median(np.linalg.norm(pose[:, 11] - pose[:, 12], axis=-1))
    expected = (pose[:, 0] - 0.5 * (pose[:, 23] + pose[:, 24])) / width  # the nose
    np.testing.assert_allclose(c[:, 0], np.clip(expected, -5, 5), atol=1e-5)


def test_hips_missing_everywhere_falls_back_to_shoulder_midpoint():
    raw = make_body(4, 3)
    pose = pose_points(raw)
    pose[:, [F.POSE_LEFT_HIP, F.POSE_RIGHT_HIP]] = 0
    raw[:, F.POSE] = pose.reshape(4, -1)
    c = coords_of(F.enrich(raw))[:, 42:]
    np.testing.assert_allclose(c[:, 11] + c[:, 12], 0.0, atol=1e-6)  # shoulders centred
    assert np.all(c[:, [23, 24]] == 0)  # the missing hips stay missing


def test_hips_missing_in_some_frames_keeps_the_centre_steady():
    """A still body: losing the hips for a frame must not make every point jump."""
    frame = make_body(1, 4)
    raw = np.repeat(frame, 5, axis=0)
    lost = raw.copy()
    pose = pose_points(lost)
    pose[2, [23, 24]] = 0
    lost[:, F.POSE] = pose.reshape(5, -1)
    full, part = F.enrich(raw), F.enrich(lost)
    keep = [i for i in range(75) if i not in (42 + 23, 42 + 24)]
    np.testing.assert_allclose(coords_of(part)[:, keep], coords_of(full)[:, keep], atol=1e-5)
    assert np.abs(part[:, F.VELOCITIES]).max() < 1e-5


def test_frames_without_pose_take_the_centre_of_their_neighbours():
    raw = np.repeat(make_body(1, 5), 3, axis=0)
    raw[1, F.POSE] = 0  # only the hands were found in the middle frame
    feat = F.enrich(raw)
    np.testing.assert_allclose(feat[1, :126], feat[0, :126], atol=1e-6)
    assert np.all(feat[1, 126:225] == 0)


def test_tiny_shoulder_width_is_guarded():
    raw = make_body(3, 6)
    pose = pose_points(raw)
    pose[:, 12] = pose[:, 11]  # shoulders on top of each other
    raw[:, F.POSE] = pose.reshape(3, -1)
    feat = F.enrich(raw)
    assert np.isfinite(feat).all()
    c = coords_of(feat)[:, 42:]
    expected = pose[:, 0] - 0.5 * (pose[:, 23] + pose[:, 24])  # scale 1: plain re-centring
    np.testing.assert_allclose(c[:, 0], expected, atol=1e-6)


def test_coordinates_are_clipped():
    raw = make_body(2, 7)
    raw[:, 0:3] = [50.0, -50.0, 0.5]  # the left wrist far outside the frame
    feat = F.enrich(raw)
    assert feat[0, 0] == 5.0 and feat[0, 1] == -5.0
    assert np.abs(feat[:, F.COORDS]).max() <= 5.0


def test_distances_angles_and_shape_on_known_geometry():
    raw = make_body(1, 8).astype(np.float64)
    pose = pose_points(raw)
    pose[0, 11], pose[0, 12] = (0.6, 0.4, 0.0), (0.4, 0.4, 0.0)  # width 0.2
    pose[0, 13], pose[0, 15] = (0.7, 0.4, 0.0), (0.7, 0.3, 0.0)  # left elbow bent 90 degrees
    pose[0, 14], pose[0, 16] = (0.3, 0.4, 0.0), (0.2, 0.4, 0.0)  # right arm straight
    raw[0, F.POSE] = pose.reshape(-1)
    left = raw[0, F.LEFT_HAND].reshape(21, 3)
    right = raw[0, F.RIGHT_HAND].reshape(21, 3)
    left[0], right[0] = pose[0, 15], (0.3, 0.3, 0.0)  # wrists 0.4 apart = 2 shoulder widths
    left[12] = (0.7, 0.2, 0.0)  # straight on from the forearm: wrist angle pi
    for tip, d in zip([8, 12, 16, 20], [0.02, 0.04, 0.06, 0.08]):
        right[tip] = right[0] + (0, -d, 0)
    raw[0, F.LEFT_HAND], raw[0, F.RIGHT_HAND] = left.reshape(-1), right.reshape(-1)
    feat = F.enrich(raw.astype(np.float32))[0].astype(np.float64)
    assert feat[F.DISTANCES][0] == pytest.approx(2.0, abs=1e-4)
    angles = feat[F.ANGLES]
    assert angles[0] == pytest.approx(np.pi / 2, abs=1e-4)  # left elbow
    assert angles[1] == pytest.approx(np.pi, abs=1e-4)  # right elbow, straight
    assert angles[2] == pytest.approx(np.pi, abs=1e-3)  # left wrist
    shape = feat[F.SHAPE]
    np.testing.assert_allclose(shape[6:], [0.1, 0.2, 0.3, 0.4], atol=1e-4)  # right hand, / width 0.2
    assert shape[5] == pytest.approx(0.25, abs=1e-4)  # their mean


# Invariances (hypothesis) ---------------------------------------------------------------------------
@HYP
@given(arrays(np.float32, st.tuples(st.integers(1, 6), st.just(225)),
              elements=st.floats(allow_nan=False, allow_infinity=False, width=32)))
def test_finite_input_gives_finite_output(raw):
    feat = F.enrich(raw)
    assert feat.shape == (len(raw), 469) and np.isfinite(feat).all()
    assert np.abs(feat[:, F.COORDS]).max(initial=0) <= 5.0


@HYP
@given(arrays(np.float32, st.tuples(st.integers(1, 6), st.just(225)), elements=st.floats(width=32)))
def test_nan_and_inf_input_gives_finite_output(raw):
    feat = F.enrich(raw)
    assert np.isfinite(feat).all()
    bad = ~np.isfinite(raw[:, :225]).reshape(len(raw), 75, 3).all(-1)
    assert np.all(coords_of(feat)[bad] == 0)  # a point with a NaN coordinate counts as missing


@HYP
@given(bodies, st.lists(st.floats(-0.15, 0.15), min_size=3, max_size=3))
def test_geometry_is_invariant_to_translating_the_body(raw, shift):
    moved = (raw.reshape(len(raw), 75, 3) + np.float32(shift)).reshape(len(raw), -1).astype(np.float32)
    a, b = F.enrich(raw), F.enrich(moved)
    for block in GEOMETRY:
        np.testing.assert_allclose(b[:, block], a[:, block], atol=3e-4, err_msg=str(block))


@HYP
@given(bodies, st.floats(0.4, 2.5))
def test_geometry_is_invariant_to_scaling_the_body(raw, k):
    scaled = (raw * np.float32(k)).astype(np.float32)
    a, b = F.enrich(raw), F.enrich(scaled)
    for block in GEOMETRY:
        np.testing.assert_allclose(b[:, block], a[:, block], atol=3e-4, err_msg=str(block))


@HYP
@given(bodies, st.data())
def test_missing_hand_is_zero_and_leaves_the_rest_alone(raw, data):
    frames = len(raw)
    lost = np.array(data.draw(st.lists(st.booleans(), min_size=frames, max_size=frames)))
    side = data.draw(st.sampled_from(["left", "right"]))
    cols = F.PARTS[side]
    other = F.PARTS["right" if side == "left" else "left"]
    cut = raw.copy()
    cut[lost, cols] = 0
    full, part = F.enrich(raw), F.enrich(cut)

    # The lost hand: coordinates 0, and velocities 0 in its frames and the frame after.
    assert np.all(part[lost][:, cols] == 0)
    touched = lost | np.concatenate([[False], lost[:-1]])
    assert np.all(part[touched][:, 225 + cols.start : 225 + cols.stop] == 0)
    # Distances need both hands; this hand's wrist angle and shape need it too.
    assert np.all(part[lost][:, F.DISTANCES] == 0)
    wrist_angle = 457 if side == "left" else 458
    shape = slice(459, 464) if side == "left" else slice(464, 469)
    assert np.all(part[lost][:, wrist_angle] == 0)
    assert np.all(part[lost][:, shape] == 0)
    other_shape = slice(464, 469) if side == "left" else slice(459, 464)
    other_angle = 458 if side == "left" else 457
    # Everything that does not involve the lost hand is unchanged.
    for block in [other, F.POSE, slice(225 + other.start, 225 + other.stop), slice(351, 450),
                  slice(455, 457), other_angle, other_shape]:
        np.testing.assert_array_equal(part[:, block], full[:, block], err_msg=str(block))
    # Frames where the hand was kept are exactly as before.
    np.testing.assert_array_equal(part[~touched], full[~touched])


# Presence and masks ---------------------------------------------------------------------------------
def test_part_present_and_frame_mask():
    raw = make_body(4, 9)
    raw[0, F.LEFT_HAND] = 0
    raw[1, F.RIGHT_HAND] = np.nan
    raw[2] = 0
    raw[3, F.LEFT_HAND] = 0
    raw[3, 5] = 0.3  # one value is enough for a part to be present
    present = F.part_present(raw)
    assert present["left"].tolist() == [False, True, False, True]
    assert present["right"].tolist() == [True, False, False, True]
    assert present["pose"].tolist() == [True, True, False, True]
    assert F.frame_mask(raw).tolist() == [True, True, False, True]


def test_missing_hand_does_not_turn_into_nonzero_coordinates():
    """The original's flaw: re-centring made zero-filled hands non-zero."""
    raw = make_body(3, 10)
    raw[:, F.LEFT_HAND] = 0
    feat = F.enrich(raw)
    assert np.all(feat[:, F.LEFT_HAND] == 0)
    assert F.frame_mask(raw).all()  # the frame itself is still valid


# raw_from_parts and validation ------------------------------------------------------------------------
def test_raw_from_parts_layout_and_padding():
    rng = np.random.default_rng(0)
    left, right = rng.random((4, 21, 3)), rng.random((4, 21, 3))
    pose30 = rng.random((4, 30, 3))
    raw = F.raw_from_parts(left, right, pose30)
    assert raw.shape == (4, 225) and raw.dtype == np.float32
    np.testing.assert_allclose(raw[:, F.LEFT_HAND], left.reshape(4, -1), rtol=1e-6)
    np.testing.assert_allclose(raw[:, F.RIGHT_HAND], right.reshape(4, -1), rtol=1e-6)
    np.testing.assert_allclose(raw[:, 126:216], pose30.reshape(4, -1), rtol=1e-6)
    assert np.all(raw[:, 216:] == 0)
    only_pose = F.raw_from_parts(None, None, rng.random((2, 33, 4)))  # visibility column dropped
    assert np.all(only_pose[:, :126] == 0) and only_pose.shape == (2, 225)


@pytest.mark.parametrize(
    "left, pose, match",
    [
        (np.zeros((3, 20, 3)), np.zeros((3, 33, 3)), "left hand"),
        (np.zeros((3, 21, 3)), np.zeros((4, 33, 3)), "frame counts"),
        (None, np.zeros((3, 31, 3)), "pose"),
        (np.array([["a"] * 3] * 21 * 3).reshape(3, 21, 3), None, "numeric"),
    ],
)
def test_raw_from_parts_rejects_bad_parts(left, pose, match):
    with pytest.raises(InputError, match=match):
        F.raw_from_parts(left, None, pose)


def test_raw_from_parts_needs_one_part():
    with pytest.raises(InputError, match="None"):
        F.raw_from_parts(None, None, None)


@pytest.mark.parametrize(
    "value, match",
    [
        (np.zeros((3, 224), np.float32), r"shape \(3, 224\)"),
        (np.zeros((3, 225, 1), np.float32), "shape"),
        (np.zeros(225, np.float32), "shape"),
        (np.zeros((0, 225), np.float32), "no frames"),
        (np.zeros((3, 225), np.int64), "dtype int64"),
        (np.array([["x"] * 225]), "dtype"),
    ],
)
def test_validate_raw_errors_name_the_source(value, match):
    with pytest.raises(InputError, match=match) as info:
        F.validate_raw(value, source="clip-42.npy")
    assert "clip-42.npy" in str(info.value)
    with pytest.raises(InputError):
        F.enrich(value)


def test_validate_raw_returns_the_array():
    raw = make_body(2, 0)
    assert F.validate_raw(raw) is raw


# Resampling -----------------------------------------------------------------------------------------
def test_resample_linear_ramp_is_exact():
    ramp = np.linspace(0.1, 0.9, 5, dtype=np.float32)[:, None] * np.ones((1, 225), np.float32)
    out = F.resample(ramp, 9)
    np.testing.assert_allclose(out[:, 0], np.linspace(0.1, 0.9, 9), atol=1e-6)
    assert out.shape == (9, 225) and out.dtype == np.float32
    np.testing.assert_array_equal(F.resample(ramp, 5), ramp)  # same length: unchanged


def test_resample_single_frame_repeats_it():
    raw = make_body(1, 11)
    out = F.resample(raw, 64)
    assert out.shape == (64, 225)
    np.testing.assert_array_equal(out, np.repeat(raw, 64, axis=0))


def test_resample_keeps_missing_parts_missing():
    raw = make_body(4, 12)
    raw[2:, F.LEFT_HAND] = 0  # the left hand disappears halfway
    out = F.resample(raw, 13)  # output t = 0, .25, ..., 3
    present = F.part_present(out)["left"]
    t = np.linspace(0, 3, 13)
    assert present.tolist() == (t < 1.5).tolist()  # presence of the nearest source frame
    # A present output never mixes in zeros: values stay inside the range of the source frames.
    left_out = out[present][:, F.LEFT_HAND]
    assert left_out.min() >= raw[:2, F.LEFT_HAND].min() - 1e-6
    assert left_out.max() <= raw[:2, F.LEFT_HAND].max() + 1e-6
    assert np.all(out[~present][:, F.LEFT_HAND] == 0)


def test_resample_rejects_bad_length():
    with pytest.raises(InputError, match="positive integer"):
        F.resample(make_body(3, 0), 0)


@HYP
@given(bodies, st.integers(1, 80))
def test_resample_then_enrich_is_finite_and_shaped(raw, n):
    out = F.resample(raw, n)
    assert out.shape == (n, 225)
    feat = F.enrich(out)
    assert np.isfinite(feat).all()


# prepare_clip(s) ------------------------------------------------------------------------------------
def test_prepare_clip_shapes_and_mask():
    raw = make_body(30, 13)
    raw[10:15] = 0  # nothing detected for a while
    feat, mask = F.prepare_clip(raw)
    assert feat.shape == (64, 469) and feat.dtype == np.float32
    assert mask.shape == (64,) and mask.dtype == bool
    assert 0 < (~mask).sum() < 20
    assert np.all(feat[~mask] == 0)


def test_prepare_clips_matches_prepare_clip():
    raws = [make_body(n, n) for n in (1, 7, 64, 100)]
    raws[1][3, F.RIGHT_HAND] = 0
    feats, masks = F.prepare_clips(raws, chunk=3)
    assert feats.shape == (4, 64, 469) and masks.shape == (4, 64)
    for raw, feat, mask in zip(raws, feats, masks):
        f1, m1 = F.prepare_clip(raw)
        np.testing.assert_array_equal(feat, f1)
        np.testing.assert_array_equal(mask, m1)
    empty_f, empty_m = F.prepare_clips([])
    assert empty_f.shape == (0, 64, 469) and empty_m.shape == (0, 64)
