"""MediaPipe Holistic landmarks -> the 469 per-frame features SignTransformer reads.

Raw layout, one row per frame (225 values): left hand 21x3 (cols 0..62), right hand 21x3 (63..125),
pose 33x3 (126..224), each point x, y, z; a part that was not detected is zero-filled.

Enriched layout (469 values), as in the original SignFlow pipeline:

========================  =====  ==============================================================
block                     dims   columns
========================  =====  ==============================================================
coordinates               225    0..224    centred on the hips (shoulders as fallback), / shoulder width
velocities                225    225..449  frame-to-frame difference of the coordinates
inter-hand distances      5      450..454  wrist, thumb/index/middle/pinky tip pairs
joint angles              4      455..458  left/right elbow, left/right wrist (radians)
hand shape                10     459..468  per hand: mean wrist-to-tip distance, then 4 distances
========================  =====  ==============================================================

Unlike the original, a point that is missing in a frame stays exactly 0 after re-centring, and every
derived value that touches a missing point is 0. The original turned zero-filled hands into
``-centre / width`` and then guessed padding from ``sum |x| <= 1e-6``, which never fired; here the mask
is explicit (:func:`frame_mask`). Everything is vectorized over frames (and over clips in
:func:`prepare_clips`), computed in float64 and returned as float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from signflow_zoo.common.errors import InputError
from signflow_zoo.common.tensors import FEATURE_DIM  # defined with the input check, below this layer

# Sizes --------------------------------------------------------------------------------------------
RAW_DIM = 225
SEQ_LEN = 64
FEATURE_VERSION = "signflow-469-v1"

NUM_HAND_POINTS = 21
NUM_POSE_POINTS = 33
NUM_POINTS = 2 * NUM_HAND_POINTS + NUM_POSE_POINTS  # 75 points of 3 coordinates

# Raw layout (columns of the [F, 225] block) -------------------------------------------------------
LEFT_HAND = slice(0, 63)
RIGHT_HAND = slice(63, 126)
POSE = slice(126, 225)
PARTS: dict[str, slice] = {"left": LEFT_HAND, "right": RIGHT_HAND, "pose": POSE}
# The same parts as point ranges of the [F, 75, 3] view.
LEFT_POINTS = slice(0, 21)
RIGHT_POINTS = slice(21, 42)
POSE_POINTS = slice(42, 75)

# MediaPipe landmark ids ---------------------------------------------------------------------------
HAND_WRIST, THUMB_TIP, INDEX_TIP, MIDDLE_TIP, RING_TIP, PINKY_TIP = 0, 4, 8, 12, 16, 20
POSE_LEFT_SHOULDER, POSE_RIGHT_SHOULDER = 11, 12
POSE_LEFT_ELBOW, POSE_RIGHT_ELBOW = 13, 14
POSE_LEFT_WRIST, POSE_RIGHT_WRIST = 15, 16
POSE_LEFT_HIP, POSE_RIGHT_HIP = 23, 24

# Enriched layout ----------------------------------------------------------------------------------
COORDS = slice(0, 225)
VELOCITIES = slice(225, 450)
DISTANCES = slice(450, 455)
ANGLES = slice(455, 459)
SHAPE = slice(459, 469)

CLIP_VALUE = 5.0  # normalized coordinates are clipped to +-CLIP_VALUE shoulder widths
MIN_SHOULDER_WIDTH = 1e-3  # narrower shoulders are treated as not measured (would blow values up)

_DISTANCE_POINTS = [HAND_WRIST, THUMB_TIP, INDEX_TIP, MIDDLE_TIP, PINKY_TIP]
_SHAPE_TIPS = [INDEX_TIP, MIDDLE_TIP, RING_TIP, PINKY_TIP]
_EPS = 1e-9


# Validation and assembly --------------------------------------------------------------------------
def validate_raw(raw, source: str = "input") -> np.ndarray:
    """Check that ``raw`` is a [frames, 225] float array with at least one frame; return it as an array.

    ``source`` names where the array came from, so the message can point at it.
    """
    try:
        arr = np.asarray(raw)
    except (TypeError, ValueError) as exc:  # ragged nested lists and the like
        raise InputError(f"{source}: cannot be read as an array of shape [frames, {RAW_DIM}]: {exc}") from None
    if arr.dtype.kind != "f":
        raise InputError(
            f"{source}: expected a float array of shape [frames, {RAW_DIM}], got dtype {arr.dtype}"
        )
    if arr.ndim != 2 or arr.shape[1] != RAW_DIM:
        raise InputError(
            f"{source}: expected shape [frames, {RAW_DIM}] (left hand 63, right hand 63, pose 99 values "
            f"per frame), got shape {tuple(arr.shape)}"
        )
    if arr.shape[0] == 0:
        raise InputError(f"{source}: has no frames (shape {tuple(arr.shape)})")
    return arr


def _part_array(part, name: str, points: Sequence[int]) -> np.ndarray | None:
    if part is None:
        return None
    arr = np.asarray(part)
    if arr.dtype.kind not in "fiu":
        raise InputError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim != 3 or arr.shape[1] not in points or arr.shape[2] not in (3, 4):
        want = " or ".join(f"[frames, {p}, 3]" for p in points)
        raise InputError(f"{name}: expected shape {want}, got shape {tuple(arr.shape)}")
    return arr[:, :, :3].astype(np.float32)  # a 4th column is MediaPipe's visibility: dropped


def raw_from_parts(left, right, pose) -> np.ndarray:
    """Assemble the [F, 225] raw block from per-part landmark arrays.

    ``left``/``right``: [F, 21, 3] or None (hand never detected); ``pose``: [F, 33, 3], or [F, 30, 3] as
    some LSFB releases store it (zero-padded to 33), or None. Missing parts are zero-filled.
    """
    parts = {
        "left": _part_array(left, "left hand", [NUM_HAND_POINTS]),
        "right": _part_array(right, "right hand", [NUM_HAND_POINTS]),
        "pose": _part_array(pose, "pose", [NUM_POSE_POINTS, 30]),
    }
    lengths = {name: arr.shape[0] for name, arr in parts.items() if arr is not None}
    if not lengths:
        raise InputError("raw_from_parts: every part is None; at least one is needed to know the frame count")
    if len(set(lengths.values())) > 1:
        raise InputError(f"raw_from_parts: parts have different frame counts: {lengths}")
    frames = next(iter(lengths.values()))
    raw = np.zeros((frames, RAW_DIM), dtype=np.float32)
    for name, arr in parts.items():
        if arr is None:
            continue
        flat = arr.reshape(frames, -1)
        start = PARTS[name].start
        raw[:, start : start + flat.shape[1]] = flat  # a 30-point pose leaves the last 3 points at 0
    return raw


# Presence -----------------------------------------------------------------------------------------
def part_present(raw) -> dict[str, np.ndarray]:
    """Per frame, whether each part was detected: a part is missing when all its values are 0 or non-finite.

    Works on [F, 225] and on batches [..., F, 225]; each value is a bool array of the leading shape.
    """
    arr = np.asarray(raw)
    seen = np.isfinite(arr) & (arr != 0)
    return {name: seen[..., cols].any(axis=-1) for name, cols in PARTS.items()}


def frame_mask(raw) -> np.ndarray:
    """Per frame, True when anything was detected (any part present); False marks padding/empty frames."""
    present = part_present(raw)
    return present["left"] | present["right"] | present["pose"]


def _points(raw: np.ndarray, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """[..., 225] -> (points [..., 75, 3] with unusable points zeroed, usable [..., 75]).

    A point is usable when all three coordinates are finite and not all zero: per point rather than per
    part, so that the 3 zero-padded points of a 30-point pose also stay missing.
    """
    pts = np.asarray(raw, dtype=dtype).reshape(*raw.shape[:-1], NUM_POINTS, 3)
    x, y, z = pts[..., 0], pts[..., 1], pts[..., 2]  # explicit: reductions over a length-3 axis are slow
    usable = np.isfinite(x) & np.isfinite(y) & np.isfinite(z) & ((x != 0) | (y != 0) | (z != 0))
    return np.where(usable[..., None], pts, 0.0).astype(dtype, copy=False), usable


# Enrichment ---------------------------------------------------------------------------------------
def _fill_gaps(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Fill frames where ``ok`` is False by linear interpolation between the nearest ok frames (constant
    at the ends); clips with no ok frame get 0. ``values`` [N, T, 3], ``ok`` [N, T]."""
    n, t = ok.shape
    idx = np.arange(t)
    prev = np.maximum.accumulate(np.where(ok, idx, -1), axis=1)
    nxt = np.minimum.accumulate(np.where(ok, idx, t)[:, ::-1], axis=1)[:, ::-1]
    has_prev, has_next = prev >= 0, nxt < t
    p, q = np.clip(prev, 0, t - 1), np.clip(nxt, 0, t - 1)
    gap = np.maximum(nxt - prev, 1)
    w = np.where(has_prev & has_next, (idx - prev) / gap, np.where(has_prev, 0.0, 1.0))
    vp = np.take_along_axis(values, p[..., None], axis=1)
    vq = np.take_along_axis(values, q[..., None], axis=1)
    filled = vp * (1.0 - w[..., None]) + vq * w[..., None]
    return np.where(ok.any(axis=1)[:, None, None], filled, 0.0)  # type: ignore[index]  # an array with axis=


def _body_frame(pose: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame centre [N, T, 3] and per-clip scale [N] from pose points [N, T, 33, 3].

    Centre: hip midpoint; where the hips are missing, the shoulder midpoint (shifted by the clip's mean
    shoulder->hip offset when the hips are seen in other frames, so the centre does not jump); frames
    without either are interpolated from neighbouring frames. Scale: the clip's median shoulder width
    (a body does not change size within a clip; the median ignores jittery frames), 1 when unmeasured.
    """
    hip_ok = ok[..., POSE_LEFT_HIP] & ok[..., POSE_RIGHT_HIP]
    sh_ok = ok[..., POSE_LEFT_SHOULDER] & ok[..., POSE_RIGHT_SHOULDER]
    hip_mid = 0.5 * (pose[..., POSE_LEFT_HIP, :] + pose[..., POSE_RIGHT_HIP, :])
    sh_mid = 0.5 * (pose[..., POSE_LEFT_SHOULDER, :] + pose[..., POSE_RIGHT_SHOULDER, :])

    both = hip_ok & sh_ok
    count = both.sum(axis=1)
    offset_sum = np.where(both[..., None], hip_mid - sh_mid, 0.0).sum(axis=1)
    offset = offset_sum / np.maximum(count, 1)[:, None]  # zero when no frame shows both
    centre = np.where(hip_ok[..., None], hip_mid, sh_mid + offset[:, None, :])
    centre = _fill_gaps(centre, hip_ok | sh_ok)

    width = np.linalg.norm(pose[..., POSE_LEFT_SHOULDER, :] - pose[..., POSE_RIGHT_SHOULDER, :], axis=-1)
    width_ok = sh_ok & (width > MIN_SHOULDER_WIDTH)
    widths = np.where(width_ok, width, np.nan)
    widths[~width_ok.any(axis=1)] = 1.0  # no measurable shoulders: leave the scale alone
    return centre, np.nanmedian(widths, axis=1)


def _angle(a: np.ndarray, b: np.ndarray, c: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Angle at ``b`` between b->a and b->c, radians; 0 where a point is missing or a limb has no length.

    arctan2(|u x v|, u.v) rather than arccos: accurate near 0 and pi.
    """
    u, v = a - b, c - b
    cross = np.linalg.norm(np.cross(u, v), axis=-1)
    dot = (u * v).sum(axis=-1)
    ok = ok & (np.linalg.norm(u, axis=-1) > 1e-6) & (np.linalg.norm(v, axis=-1) > 1e-6)
    return np.where(ok, np.arctan2(cross, dot), 0.0)


def _enrich_batch(raw: np.ndarray) -> np.ndarray:
    """[N, T, 225] -> [N, T, 469] float32."""
    n, t = raw.shape[:2]
    with np.errstate(all="ignore"):
        pts, ok = _points(raw)
        pose, pose_ok = pts[:, :, POSE_POINTS], ok[:, :, POSE_POINTS]
        centre, scale = _body_frame(pose, pose_ok)
        # In-place steps and mask products (pts is already 0 and finite where unusable): this block
        # dominates the cost of a data set, and temporaries of [N, T, 75, 3] are what make it slow.
        coords = pts - centre[:, :, None, :]
        coords /= scale[:, None, None, None]
        np.clip(coords, -CLIP_VALUE, CLIP_VALUE, out=coords)
        coords *= ok[..., None]

        moved = np.zeros_like(ok)
        moved[:, 1:] = ok[:, 1:] & ok[:, :-1]
        velocity = np.diff(coords, axis=1, prepend=coords[:, :1])
        velocity *= moved[..., None]

        left, left_ok = coords[:, :, LEFT_POINTS], ok[:, :, LEFT_POINTS]
        right, right_ok = coords[:, :, RIGHT_POINTS], ok[:, :, RIGHT_POINTS]
        pose_c = coords[:, :, POSE_POINTS]

        pair_ok = left_ok[..., _DISTANCE_POINTS] & right_ok[..., _DISTANCE_POINTS]
        gaps = np.linalg.norm(left[:, :, _DISTANCE_POINTS] - right[:, :, _DISTANCE_POINTS], axis=-1)
        distances = np.where(pair_ok, gaps, 0.0)

        def p(i):  # pose point i: coordinates, usable
            return pose_c[:, :, i], pose_ok[:, :, i]

        (ls, ls_ok), (rs, rs_ok) = p(POSE_LEFT_SHOULDER), p(POSE_RIGHT_SHOULDER)
        (le, le_ok), (re, re_ok) = p(POSE_LEFT_ELBOW), p(POSE_RIGHT_ELBOW)
        (lw, lw_ok), (rw, rw_ok) = p(POSE_LEFT_WRIST), p(POSE_RIGHT_WRIST)
        angles = np.stack(
            [
                _angle(ls, le, lw, ls_ok & le_ok & lw_ok),
                _angle(rs, re, rw, rs_ok & re_ok & rw_ok),
                _angle(le, left[:, :, HAND_WRIST], left[:, :, MIDDLE_TIP],
                       le_ok & left_ok[:, :, HAND_WRIST] & left_ok[:, :, MIDDLE_TIP]),
                _angle(re, right[:, :, HAND_WRIST], right[:, :, MIDDLE_TIP],
                       re_ok & right_ok[:, :, HAND_WRIST] & right_ok[:, :, MIDDLE_TIP]),
            ],
            axis=-1,
        )

        shape = []
        for hand, hand_ok in ((left, left_ok), (right, right_ok)):
            tip_ok = hand_ok[..., _SHAPE_TIPS] & hand_ok[..., HAND_WRIST, None]
            reach = np.linalg.norm(hand[:, :, _SHAPE_TIPS] - hand[:, :, HAND_WRIST, None], axis=-1)
            reach = np.where(tip_ok, reach, 0.0)
            mean = reach.sum(axis=-1) / np.maximum(tip_ok.sum(axis=-1), 1)
            shape += [mean[..., None], reach]

        out = np.concatenate(
            [coords.reshape(n, t, RAW_DIM), velocity.reshape(n, t, RAW_DIM), distances, angles]
            + shape,
            axis=-1,
        )
        # Finite by construction; the guard covers float64 inputs near overflow.
        out = np.where(np.isfinite(out), out, 0.0)
    return out.astype(np.float32)


def enrich(raw) -> np.ndarray:
    """Raw landmarks [F, 225] -> features [F, 469] float32 (a batch [N, F, 225] -> [N, F, 469] too).

    Always finite: NaN/inf points count as missing; coordinates are clipped to +-5 shoulder widths.
    """
    arr = np.asarray(raw)
    if arr.ndim == 3:
        if arr.shape[1] == 0:
            raise InputError(f"enrich input: batch has no frames (shape {tuple(arr.shape)})")
        validate_raw(arr.reshape(-1, *arr.shape[2:]), "enrich input")
        return _enrich_batch(arr)
    arr = validate_raw(arr, "enrich input")
    return _enrich_batch(arr[None])[0]


# Resampling ---------------------------------------------------------------------------------------
def _check_length(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"resample: the target length must be a positive integer, got {n!r}")
    return int(n)


def _resample_many(arrays: Sequence[np.ndarray], n: int) -> np.ndarray:
    """Validated [F_i, 225] clips -> [N, n, 225] float32, all clips in one vectorized pass.

    The clips are concatenated and every output frame gathers from global frame indices, so the cost
    is a handful of array operations whatever the number of clips.
    """
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pts, ok = _points(np.concatenate(arrays, axis=0), np.float32)
    steps = np.arange(n) / max(n - 1, 1)
    t = (lengths[:, None] - 1) * steps[None, :]  # [N, n] positions in each clip, exact at both ends
    lo = np.floor(t).astype(np.int64)
    frac = t - lo
    hi = np.minimum(lo + 1, lengths[:, None] - 1)
    nearest = np.where(frac < 0.5, lo, hi) + starts[:, None]
    lo, hi = lo + starts[:, None], hi + starts[:, None]
    w = frac[..., None, None].astype(np.float32)
    ok_lo, ok_hi = ok[lo][..., None], ok[hi][..., None]
    lerp = pts[lo] * (1.0 - w) + pts[hi] * w
    value = np.where(ok_lo & ok_hi, lerp, np.where(ok_lo, pts[lo], pts[hi]))
    out = np.where(ok[nearest][..., None], value, 0.0)
    return out.reshape(len(arrays), n, RAW_DIM).astype(np.float32)


def resample(raw, n: int = SEQ_LEN) -> np.ndarray:
    """Linearly resample a clip to ``n`` frames -> [n, 225] float32.

    Presence is taken from the nearest source frame, so a hand missing there stays missing (all zeros)
    instead of being interpolated halfway from zero; a present point whose neighbour frame lacks it
    takes its own value. Non-finite points count as missing and come out as zeros.
    """
    arr = validate_raw(raw, "resample input")
    return _resample_many([arr], _check_length(n))[0]


def prepare_clip(raw, seq_len: int = SEQ_LEN) -> tuple[np.ndarray, np.ndarray]:
    """One clip of any length -> (features [seq_len, 469] float32, mask [seq_len] bool, True = valid)."""
    fixed = resample(raw, seq_len)
    return enrich(fixed), frame_mask(fixed)


def prepare_clips(
    raws: Sequence, seq_len: int = SEQ_LEN, chunk: int = 32, sources: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Many clips -> (features [N, seq_len, 469] float32, mask [N, seq_len] bool); the same values as
    :func:`prepare_clip` per clip, computed batched. Enrichment runs in chunks small enough for the
    float64 temporaries to stay in cache (measured fastest around 32 clips)."""
    seq_len = _check_length(seq_len)
    names = sources if sources is not None else [f"clip {i}" for i in range(len(raws))]
    arrays = [validate_raw(r, name) for r, name in zip(raws, names, strict=True)]
    if not arrays:
        return np.zeros((0, seq_len, FEATURE_DIM), np.float32), np.zeros((0, seq_len), bool)
    features = np.empty((len(arrays), seq_len, FEATURE_DIM), dtype=np.float32)
    masks = np.empty((len(arrays), seq_len), dtype=bool)
    for start in range(0, len(arrays), chunk):
        fixed = _resample_many(arrays[start : start + chunk], seq_len)
        features[start : start + chunk] = _enrich_batch(fixed)
        masks[start : start + chunk] = frame_mask(fixed)
    return features, masks
