"""The browser's per-frame landmark payload: strict validation into one raw row, and back.

The payload, as SignFlow's frontend sends it once per video frame::

    {"hands": {"left": [[x, y, z]] * 21 or null, "right": [[x, y, z]] * 21 or null},
     "pose": [[x, y, z]] * 33 or null,
     "metadata": {"averageConfidence": 0..1, "leftHandVisible": bool, "rightHandVisible": bool}}

:func:`parse_payload` turns it into the raw row the features read ([225] float32: left hand, right hand,
pose; a part that is null or an empty list is zero-filled, as MediaPipe's "not detected") plus
:class:`FrameInfo`. Anything else raises :class:`~signflow_zoo.common.errors.PayloadError` naming the field,
e.g. ``hands.left[3]`` (a point that is not [x, y, z]) or ``pose[7][2]`` (a value that is not a finite
number). It never raises anything else, and it reads nothing into the caller's state before the whole
frame is known to be good, so a bad frame can be dropped without corrupting a stream.

Rules: ``hands`` (an object with ``left`` and ``right``) and ``pose`` are required keys; ``metadata`` and
each of its keys are optional (null = unknown). Coordinates are ints or floats (not bools, not strings),
finite, within +-``MAX_ABS_COORD``: MediaPipe's normalized coordinates sit near 0..1, and a value of 1e30
is a broken client, not a landmark (it would also overflow float32). Unknown keys are ignored, so a
frontend may add fields (e.g. ``face``, ``timestamp``) without breaking older servers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

from signflow_zoo.common.errors import PayloadError
from signflow_zoo.data.features import NUM_HAND_POINTS, NUM_POSE_POINTS, RAW_DIM, part_present

MAX_ABS_COORD = 1e4
_PARTS = (("hands.left", NUM_HAND_POINTS, 0), ("hands.right", NUM_HAND_POINTS, 63), ("pose", NUM_POSE_POINTS, 126))


@dataclass(frozen=True)
class FrameInfo:
    """What a frame says about tracking quality, next to its landmarks."""

    left_visible: bool  # left hand landmarks present (and not flagged invisible by the frontend)
    right_visible: bool
    pose_visible: bool
    confidence: float | None = None  # metadata.averageConfidence, None when not sent

    @property
    def hand_visible(self) -> bool:
        return self.left_visible or self.right_visible


def _kind(value: Any) -> str:
    """A short name for a value's type, for messages (never its repr: a junk payload can be huge)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    return f"a {type(value).__name__}"


def _is_number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, (bool, np.bool_))


def _check_value(v: Any, field: str) -> None:
    """Slow path for one coordinate that is not a plain float: say exactly what is wrong with it."""
    if not _is_number(v):
        raise PayloadError(field, f"expected a number, got {_kind(v)}")
    try:
        f = float(v)
    except (OverflowError, ValueError, TypeError):
        raise PayloadError(field, "number out of range") from None
    if not math.isfinite(f):
        raise PayloadError(field, f"expected a finite number, got {f}")
    if abs(f) > MAX_ABS_COORD:
        raise PayloadError(field, f"coordinate {f:.3g} is outside +-{MAX_ABS_COORD:g}")


def _points(value: Any, field: str, n: int) -> np.ndarray | None:
    """A part's points -> [n, 3] float64, or None when the part was not detected (null or [])."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fiu" or value.shape != (n, 3):
            raise PayloadError(field, f"expected an array of shape ({n}, 3), got dtype {value.dtype} "
                                      f"shape {value.shape}")
        arr = value.astype(np.float64)
    else:
        if not isinstance(value, (list, tuple)):
            raise PayloadError(field, f"expected a list of {n} [x, y, z] points or null, got {_kind(value)}")
        if len(value) == 0:
            return None
        if len(value) != n:
            raise PayloadError(field, f"expected {n} [x, y, z] points, got {len(value)}")
        for i, p in enumerate(value):
            if not isinstance(p, (list, tuple)) or len(p) != 3:
                raise PayloadError(f"{field}[{i}]", f"expected a point [x, y, z], got {_kind(p)}")
            x, y, z = p
            if type(x) is not float or type(y) is not float or type(z) is not float:
                for j, v in enumerate(p):
                    if type(v) is not float:
                        _check_value(v, f"{field}[{i}][{j}]")
        arr = np.array(value, dtype=np.float64)
    bad = ~(np.abs(arr) <= MAX_ABS_COORD)  # NaN compares False: caught here too
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        v = float(arr[i, j])
        what = f"expected a finite number, got {v}" if not math.isfinite(v) else \
            f"coordinate {v:.3g} is outside +-{MAX_ABS_COORD:g}"
        raise PayloadError(f"{field}[{i}][{j}]", what)
    return arr


def _flag(meta: Mapping, key: str) -> bool | None:
    v = meta.get(key)
    if v is None:
        return None
    if not isinstance(v, (bool, np.bool_)):
        raise PayloadError(f"metadata.{key}", f"expected true, false or null, got {_kind(v)}")
    return bool(v)


def parse_payload(payload: Any) -> tuple[np.ndarray, FrameInfo]:
    """One frame payload -> (raw row [225] float32, :class:`FrameInfo`); :class:`PayloadError` if malformed."""
    if not isinstance(payload, Mapping):
        raise PayloadError("<frame>", f"expected an object with keys hands, pose, metadata, got {_kind(payload)}")
    if "hands" not in payload:
        raise PayloadError("hands", "missing (expected {\"left\": points or null, \"right\": points or null})")
    hands = payload["hands"]
    if not isinstance(hands, Mapping):
        raise PayloadError("hands", f"expected an object with keys left and right, got {_kind(hands)}")
    for side in ("left", "right"):
        if side not in hands:
            raise PayloadError(f"hands.{side}", "missing (send null when the hand is not detected)")
    if "pose" not in payload:
        raise PayloadError("pose", "missing (send null when the pose is not detected)")
    meta = payload.get("metadata")
    if meta is not None and not isinstance(meta, Mapping):
        raise PayloadError("metadata", f"expected an object or null, got {_kind(meta)}")
    meta = meta or {}

    values = (hands["left"], hands["right"], payload["pose"])
    row = np.zeros(RAW_DIM, dtype=np.float32)
    for (field, n, start), value in zip(_PARTS, values):
        pts = _points(value, field, n)
        if pts is not None:
            row[start : start + 3 * n] = pts.reshape(-1)
    present = part_present(row)  # all zeros = not detected

    confidence = meta.get("averageConfidence")
    if confidence is not None:
        field = "metadata.averageConfidence"
        if not _is_number(confidence):
            raise PayloadError(field, f"expected a number in 0..1 or null, got {_kind(confidence)}")
        try:
            confidence = float(confidence)
        except (OverflowError, ValueError, TypeError):
            raise PayloadError(field, "number out of range") from None
        if not 0.0 <= confidence <= 1.0:  # also rejects NaN
            raise PayloadError(field, f"expected a number in 0..1, got {confidence}")
    left_flag, right_flag = _flag(meta, "leftHandVisible"), _flag(meta, "rightHandVisible")
    info = FrameInfo(
        left_visible=bool(present["left"]) and left_flag is not False,
        right_visible=bool(present["right"]) and right_flag is not False,
        pose_visible=bool(present["pose"]),
        confidence=confidence,
    )
    return row, info


def payload_from_raw(row, confidence: float | None = None) -> dict[str, Any]:
    """The payload the frontend would send for one raw row [225] (a part that is all zeros -> null).

    The inverse of :func:`parse_payload` for valid rows: used to replay recordings as a live stream.
    """
    row = np.asarray(row, dtype=np.float32).reshape(RAW_DIM)
    present = part_present(row)
    parts = []
    for (_, n, start), name in zip(_PARTS, ("left", "right", "pose")):
        parts.append(row[start : start + 3 * n].reshape(n, 3).tolist() if present[name] else None)
    meta: dict[str, Any] = {"leftHandVisible": parts[0] is not None, "rightHandVisible": parts[1] is not None}
    if confidence is not None:
        meta["averageConfidence"] = float(confidence)
    return {"hands": {"left": parts[0], "right": parts[1]}, "pose": parts[2], "metadata": meta}


__all__ = ["FrameInfo", "parse_payload", "payload_from_raw", "MAX_ABS_COORD"]
