"""What the streaming state machine measures on raw landmark rows: hand motion energy and hand visibility,
in the units of the original SignFlow pipeline.

**Units.** The original measured motion on the output of its per-frame ``normalize_landmarks``: in the
version whose model reads 469 features, every point minus the hip midpoint (pose points 23/24, a part that
was not detected being zero-filled first), with no scaling. (A later version, whose model reads 493
features, also divides by max(shoulder width, hip width, torso height); its thresholds stayed 0.005.)
The 0.005 / 0.003 thresholds of :class:`~signflow_zoo.serve.pipeline.PipelineConfig` are meant in these units.

**Motion energy** of a frame = mean |delta| over the 126 hand values since the previous frame. A hand
that was not detected is zero-filled before centring, so it sits at minus the hip centre and moves
with it, as in the original. With ``ignore_tracking_jumps`` (the pipeline's default) one thing differs:
a hand that appears or vanishes between the two frames adds nothing, and the hip centre is subtracted
only when the hips are detected in both frames. The original read such a tracking event as a jump of
the whole hand to or from minus the hip centre, so a hand lost at rest started a recording, and a
flickering hand kept one from ever ending.

**Visibility** of a frame = the fraction of the 42 hand points with a coordinate of magnitude > 1e-6, as
the original computes it.
"""

from __future__ import annotations

import numpy as np

from signflow_zoo.data.features import NUM_HAND_POINTS, POSE, POSE_LEFT_HIP, POSE_RIGHT_HIP, part_present, validate_raw

HAND_VALUES = 2 * NUM_HAND_POINTS * 3  # 126: left hand then right hand, x y z per point
_LEFT_HIP = slice(POSE.start + 3 * POSE_LEFT_HIP, POSE.start + 3 * POSE_LEFT_HIP + 3)
_RIGHT_HIP = slice(POSE.start + 3 * POSE_RIGHT_HIP, POSE.start + 3 * POSE_RIGHT_HIP + 3)
_HIPS = slice(_LEFT_HIP.start, _RIGHT_HIP.stop)  # pose points 23 and 24: neighbours in the row
VISIBLE_EPS = 1e-6  # a point with every |coordinate| at or below this counts as not detected
_CHUNK = 4096  # frames per step when a whole clip is measured: bounded temporaries on any clip length


def _finite(raw: np.ndarray) -> np.ndarray:
    arr = np.asarray(raw, dtype=np.float64)
    return np.where(np.isfinite(arr), arr, 0.0)


def hip_centre(raw) -> np.ndarray:
    """[..., 225] -> the hip midpoint [..., 3] (a missing hip counts as the origin, as the original)."""
    arr = np.asarray(raw)
    return 0.5 * (_finite(arr[..., _LEFT_HIP]) + _finite(arr[..., _RIGHT_HIP]))


def centred_hands(raw) -> np.ndarray:
    """[..., 225] -> the 126 hand values minus the hip centre: the original's normalised hand coordinates."""
    arr = _finite(raw)
    hands = arr[..., :HAND_VALUES].reshape(*arr.shape[:-1], 2 * NUM_HAND_POINTS, 3)
    return (hands - hip_centre(arr)[..., None, :]).reshape(*arr.shape[:-1], HAND_VALUES)


def pair_motion(prev, cur, ignore_tracking_jumps: bool = True) -> np.ndarray:
    """Motion energy between rows ``prev`` and ``cur`` ([..., 225] each, same shape) -> [...]."""
    prev, cur = _finite(prev), _finite(cur)
    if not ignore_tracking_jumps:
        return np.abs(centred_hands(cur) - centred_hands(prev)).sum(axis=-1) / HAND_VALUES
    was, now = part_present(prev), part_present(cur)
    hips = _hips_present(prev) & _hips_present(cur)
    shift = np.where(hips[..., None], hip_centre(cur) - hip_centre(prev), 0.0)
    total = np.zeros(cur.shape[:-1])
    for side, cols in (("left", slice(0, 63)), ("right", slice(63, 126))):
        delta = (cur[..., cols] - prev[..., cols]).reshape(*cur.shape[:-1], NUM_HAND_POINTS, 3) - shift[..., None, :]
        moved = np.abs(delta).sum(axis=(-2, -1))  # absent in both: the zero-filled points move by -shift
        total += np.where(was[side] == now[side], moved, 0.0)
    return total / HAND_VALUES


class FrameHands:
    """One finite raw row's hands, hip centre and what was detected: what :meth:`motion_to` needs, computed
    once per frame. The streaming path (one frame at a time); :func:`pair_motion` is the same measure over
    arrays of frames."""

    __slots__ = ("hands", "present", "hips", "centre")

    def __init__(self, row: np.ndarray):
        self.hands = row[:HAND_VALUES].astype(np.float64).reshape(2, NUM_HAND_POINTS, 3)
        present = part_present(row)
        self.present = np.array([present["left"], present["right"]])
        hips = row[_HIPS].astype(np.float64).reshape(2, 3)  # points 23 and 24 are neighbours in the row
        self.hips = bool(hips[0].any() and hips[1].any())
        self.centre = 0.5 * (hips[0] + hips[1])

    def motion_to(self, cur: "FrameHands", ignore_tracking_jumps: bool = True) -> float:
        """Motion energy from this frame to ``cur`` (see the module docstring)."""
        if not ignore_tracking_jumps:
            delta = (cur.hands - cur.centre) - (self.hands - self.centre)
            return float(np.abs(delta).sum()) / HAND_VALUES
        shift = cur.centre - self.centre if self.hips and cur.hips else 0.0
        per_hand = np.abs(cur.hands - self.hands - shift).sum(axis=(1, 2))
        return float(per_hand[self.present == cur.present].sum()) / HAND_VALUES


def _hips_present(arr: np.ndarray) -> np.ndarray:
    return (arr[..., _LEFT_HIP] != 0).any(axis=-1) & (arr[..., _RIGHT_HIP] != 0).any(axis=-1)


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


__all__ = ["FrameHands", "centred_hands", "hip_centre", "pair_motion", "visibility", "motion_profile", "clip_quality",
           "HAND_VALUES", "VISIBLE_EPS"]
