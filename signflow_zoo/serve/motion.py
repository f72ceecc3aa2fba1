"""What the streaming state machine measures on raw landmark rows: hand motion energy and hand visibility,
in the units of the original SignFlow pipeline.

**Units.** The original (commit 118fad0, the version whose model reads 469 features) measured motion on
the output of its per-frame ``normalize_landmarks`` (``backend/app/ml/features.py``): a part that was not
detected is zero-filled first; then every point minus the hip midpoint (pose points 23/24), divided by the
body scale max(shoulder width, hip width, torso height, 1e-3) -- widths are the 3-D (x, y, z) distances
between pose points 11/12 and 23/24, the torso height the distance between their midpoints, all read on
the zero-filled pose (a missing hip counts as the origin, a missing pose gives the 1e-3 floor) -- and the
result clipped to +-5 body scales. This module computes the same, per frame (:func:`body_reference`,
:func:`normalized_hands`). The 0.005 / 0.003 thresholds of
:class:`~signflow_zoo.serve.pipeline.PipelineConfig` are meant in these units: hand movement in body
sizes, so the same sign gives the same motion whatever the signer's size or distance to the camera.

**Motion energy** of a frame = mean |delta| over the 126 normalized hand values since the previous frame,
as the original's ``_compute_motion_energy``. A hand that was not detected is zero-filled before
normalization, so in the original it sits at minus the hip centre over the body scale and moves when they
change. With ``ignore_tracking_jumps`` (the pipeline's default) two things differ: a hand counts only when
it was detected in both frames (one that appears or vanishes, or that stays lost, adds nothing); and when
the body reference (which of pose points 11, 12, 23, 24 were detected) differs between the two frames, both
frames are normalized with one reference -- that of the frame with more of those points detected, the
previous one on a tie -- so a shoulder or hip that tracking loses or finds does not rescale or re-centre the
hands. The original read such tracking events as jumps of the whole hand, so a hand lost at rest started a
recording, and a flickering hand kept one from ever ending; and a hand it had lost moved with every change
of the hip centre or the body scale (pose jitter, a step of the signer).

**Visibility** of a frame = the fraction of the 42 hand points with a coordinate of magnitude > 1e-6, read
on the raw (not normalized) points, as the original's ``_compute_hand_visibility``.
"""

from __future__ import annotations

import math

import numpy as np

from signflow_zoo.data.features import (
    NUM_HAND_POINTS,
    POSE,
    POSE_LEFT_HIP,
    POSE_LEFT_SHOULDER,
    POSE_RIGHT_HIP,
    POSE_RIGHT_SHOULDER,
    part_present,
    validate_raw,
)

HAND_VALUES = 2 * NUM_HAND_POINTS * 3  # 126: left hand then right hand, x y z per point
REFERENCE_POINTS = (POSE_LEFT_SHOULDER, POSE_RIGHT_SHOULDER, POSE_LEFT_HIP, POSE_RIGHT_HIP)  # 11, 12, 23, 24
MIN_BODY_SCALE = 1e-3  # the original's floor on the body scale (reached when no pose was detected)
CLIP_BODY_SCALES = 5.0  # normalized values are clipped to +-5, as the original
VISIBLE_EPS = 1e-6  # a point with every |coordinate| at or below this counts as not detected
_CHUNK = 4096  # frames per step when a whole clip is measured: bounded temporaries on any clip length
_REF_COLS = [POSE.start + 3 * p + k for p in REFERENCE_POINTS for k in range(3)]  # 12 columns of the raw row
_SHOULDERS = slice(POSE.start + 3 * POSE_LEFT_SHOULDER, POSE.start + 3 * POSE_RIGHT_SHOULDER + 3)
_HIPS = slice(POSE.start + 3 * POSE_LEFT_HIP, POSE.start + 3 * POSE_RIGHT_HIP + 3)


def _finite(raw: np.ndarray) -> np.ndarray:
    arr = np.asarray(raw, dtype=np.float64)
    return np.where(np.isfinite(arr), arr, 0.0)


def _reference_points(arr: np.ndarray) -> tuple[np.ndarray, ...]:
    """[..., 225] (finite) -> left shoulder, right shoulder, left hip, right hip, each [..., 3]."""
    ref = arr[..., _REF_COLS].reshape(*arr.shape[:-1], 4, 3)
    return tuple(ref[..., i, :] for i in range(4))


def body_reference(raw) -> tuple[np.ndarray, np.ndarray]:
    """[..., 225] -> (centre [..., 3], scale [...]): the original's hip midpoint and body scale per frame.

    Centre = midpoint of pose points 23/24; scale = max(|p11 - p12|, |p23 - p24|, |mid(11, 12) -
    mid(23, 24)|, 1e-3), 3-D distances on the zero-filled points (as ``_resolve_body_scale`` at 118fad0).
    """
    ls, rs, lh, rh = _reference_points(_finite(raw))
    centre = 0.5 * (lh + rh)
    scale = np.maximum.reduce([np.linalg.norm(ls - rs, axis=-1), np.linalg.norm(lh - rh, axis=-1),
                               np.linalg.norm(0.5 * (ls + rs) - centre, axis=-1),
                               np.full(centre.shape[:-1], MIN_BODY_SCALE)])
    return centre, scale


def reference_seen(raw) -> np.ndarray:
    """[..., 225] -> [..., 4] bool: which of pose points 11, 12, 23, 24 were detected (a non-zero coordinate)."""
    arr = _finite(raw)
    return (arr[..., _REF_COLS].reshape(*arr.shape[:-1], 4, 3) != 0).any(axis=-1)


def _normalize(hands: np.ndarray, centre: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """hands [..., 42, 3], centre [..., 3], scale [...] -> clip((hands - centre) / scale, +-5)."""
    out = (hands - centre[..., None, :]) / scale[..., None, None]
    return np.clip(out, -CLIP_BODY_SCALES, CLIP_BODY_SCALES)


def _hands(arr: np.ndarray) -> np.ndarray:
    return arr[..., :HAND_VALUES].reshape(*arr.shape[:-1], 2 * NUM_HAND_POINTS, 3)


def normalized_hands(raw) -> np.ndarray:
    """[..., 225] -> the 126 hand values as the original's ``normalize_landmarks`` gives them (zero-filled,
    minus the hip centre, over the body scale, clipped to +-5)."""
    arr = _finite(raw)
    centre, scale = body_reference(arr)
    return _normalize(_hands(arr), centre, scale).reshape(*arr.shape[:-1], HAND_VALUES)


def pair_motion(prev, cur, ignore_tracking_jumps: bool = True) -> np.ndarray:
    """Motion energy between rows ``prev`` and ``cur`` ([..., 225] each, same shape) -> [...]."""
    prev, cur = _finite(prev), _finite(cur)
    (c0, s0), (c1, s1) = body_reference(prev), body_reference(cur)
    if ignore_tracking_jumps:
        r0, r1 = reference_seen(prev), reference_seen(cur)
        changed = (r0 != r1).any(axis=-1)
        use_prev = changed & (r0.sum(axis=-1) >= r1.sum(axis=-1))  # one reference for both frames
        use_cur = changed & ~use_prev
        c0, c1 = np.where(use_cur[..., None], c1, c0), np.where(use_prev[..., None], c0, c1)
        s0, s1 = np.where(use_cur, s1, s0), np.where(use_prev, s0, s1)
    delta = np.abs(_normalize(_hands(cur), c1, s1) - _normalize(_hands(prev), c0, s0))
    per_hand = delta.reshape(*delta.shape[:-2], 2, NUM_HAND_POINTS * 3).sum(axis=-1)
    if ignore_tracking_jumps:
        was, now = part_present(prev), part_present(cur)
        both = np.stack([was["left"] & now["left"], was["right"] & now["right"]], axis=-1)
        per_hand = np.where(both, per_hand, 0.0)  # a hand counts only when detected in both frames
    return per_hand.sum(axis=-1) / HAND_VALUES


class FrameHands:
    """One finite raw row's hands, body reference and what was detected: what :meth:`motion_to` needs,
    computed once per frame. The streaming path (one frame at a time); :func:`pair_motion` is the same measure
    over arrays of frames."""

    __slots__ = ("hands", "present", "seen", "count", "centre", "scale", "normalized")

    def __init__(self, row: np.ndarray):
        row = np.asarray(row, dtype=np.float64)
        self.hands = row[:HAND_VALUES].reshape(2 * NUM_HAND_POINTS, 3)
        self.present = self.hands.reshape(2, -1).any(axis=1)  # left hand, right hand
        # pose points 11, 12 and 23, 24 as Python floats: 12 numbers are cheaper in plain arithmetic than in
        # numpy calls (this runs once per streamed frame)
        sh, hp = row[_SHOULDERS].tolist(), row[_HIPS].tolist()
        ls, rs, lh, rh = sh[:3], sh[3:], hp[:3], hp[3:]
        self.seen = (any(ls), any(rs), any(lh), any(rh))
        self.count = sum(self.seen)
        centre = [0.5 * (a + b) for a, b in zip(lh, rh)]
        mid_sh = [0.5 * (a + b) for a, b in zip(ls, rs)]
        self.centre = np.array(centre)
        self.scale = max(_dist(ls, rs), _dist(lh, rh), _dist(mid_sh, centre), MIN_BODY_SCALE)
        self.normalized = self.normalize(self.hands)

    def normalize(self, hands: np.ndarray) -> np.ndarray:
        """Hand points [42, 3] in this frame's reference (minus its hip centre, over its body scale, clipped)."""
        out = (hands - self.centre) / self.scale
        np.minimum(out, CLIP_BODY_SCALES, out=out)
        return np.maximum(out, -CLIP_BODY_SCALES, out=out)

    def motion_to(self, cur: "FrameHands", ignore_tracking_jumps: bool = True) -> float:
        """Motion energy from this frame to ``cur`` (see the module docstring)."""
        if not ignore_tracking_jumps:
            return float(np.abs(cur.normalized - self.normalized).sum()) / HAND_VALUES
        if self.seen == cur.seen:
            delta = np.abs(cur.normalized - self.normalized)
        else:  # a reference point was lost or found: both frames in one reference
            ref = self if self.count >= cur.count else cur
            delta = np.abs(ref.normalize(cur.hands) - ref.normalize(self.hands))
        per_hand = delta.reshape(2, NUM_HAND_POINTS * 3).sum(axis=1)
        return float(per_hand[self.present & cur.present].sum()) / HAND_VALUES


def _dist(a: list[float], b: list[float]) -> float:
    return math.sqrt((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 + (a[2] - b[2]) ** 2)


def visibility(raw) -> np.ndarray:
    """[..., 225] -> fraction of the 42 hand points that were detected, per frame (0..1)."""
    arr = np.asarray(raw)
    pts = arr[..., :HAND_VALUES].reshape(*arr.shape[:-1], 2 * NUM_HAND_POINTS, 3)
    seen = (np.isfinite(pts) & (np.abs(pts) > VISIBLE_EPS)).any(axis=-1)
    return seen.sum(axis=-1) / (2 * NUM_HAND_POINTS)


def motion_profile(raw, ignore_tracking_jumps: bool = True) -> np.ndarray:
    """Per-frame motion energy of a clip [F, 225] -> [F] float64 (first frame 0), as the stream measures it.

    Works through the clip in chunks, so a long clip costs no whole-clip float64 copy.
    """
    arr = validate_raw(raw, "motion_profile input")
    out = np.zeros(len(arr))
    for start in range(1, len(arr), _CHUNK):
        stop = min(start + _CHUNK, len(arr))
        out[start:stop] = pair_motion(arr[start - 1 : stop - 1], arr[start:stop], ignore_tracking_jumps)
    return out


def clip_quality(raw, ignore_tracking_jumps: bool = True) -> tuple[float, float, float]:
    """(mean visibility, mean motion energy, last frame's motion energy) of a whole clip, in chunks."""
    arr = validate_raw(raw, "clip")
    vis = 0.0
    for start in range(0, len(arr), _CHUNK):
        vis += float(visibility(arr[start : start + _CHUNK]).sum())
    motion = motion_profile(arr, ignore_tracking_jumps)
    return vis / len(arr), float(motion.mean()), float(motion[-1])


__all__ = ["FrameHands", "body_reference", "normalized_hands", "reference_seen", "pair_motion", "visibility",
           "motion_profile", "clip_quality", "HAND_VALUES", "REFERENCE_POINTS", "MIN_BODY_SCALE", "CLIP_BODY_SCALES",
           "VISIBLE_EPS"]
