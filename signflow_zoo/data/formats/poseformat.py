"""``.pose`` files (the pose-format library: ``pip install 'signflow-zoo[pose]'``) -> raw [F, 225].

A MediaPipe Holistic ``.pose`` file has the components ``POSE_LANDMARKS`` (33 points),
``FACE_LANDMARKS``, ``LEFT_HAND_LANDMARKS``, ``RIGHT_HAND_LANDMARKS`` (21 points each) and
``POSE_WORLD_LANDMARKS``. This reader takes the two hands and the pose (face and world landmarks are
ignored) into the raw layout: left hand 21x3, right hand 21x3, pose 33x3. pose-format stores x and y in
pixels (times the header's width and height) and z as MediaPipe gives it; x and y are divided back, so the
values are MediaPipe's normalized landmarks, as the browser sends them. A point that is masked or has
confidence 0 is missing (all zeros). In a file with several people, only the first person is read.
Other skeletons (OpenPose, AlphaPose, ...) are refused with the components they have and those missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from signflow_zoo.common.errors import DataError
from signflow_zoo.data.features import NUM_HAND_POINTS, NUM_POSE_POINTS, RAW_DIM
from signflow_zoo.data.clip import Clip
from signflow_zoo.data.formats.files import lost_points_to_zero

# raw layout order, with the number of points each component must have
HOLISTIC = (("LEFT_HAND_LANDMARKS", NUM_HAND_POINTS), ("RIGHT_HAND_LANDMARKS", NUM_HAND_POINTS),
            ("POSE_LANDMARKS", NUM_POSE_POINTS))
INSTALL_HINT = "reading .pose files needs the pose-format package: pip install 'signflow-zoo[pose]'"


def _pose_format():
    try:
        import pose_format
        from pose_format import pose_header
    except ImportError:
        raise DataError(INSTALL_HINT) from None
    return pose_format, pose_header


def read_pose_file(path: Path, where: str = "") -> np.ndarray:
    """One ``.pose`` file (MediaPipe Holistic; first person) -> raw [F, 225] float32 without NaN."""
    pose_format, _ = _pose_format()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found" + (f" (listed in {where})" if where else ""))
    try:
        pose = pose_format.Pose.read(path.read_bytes())
    except Exception as exc:  # the library raises struct, value and index errors for damaged files
        raise DataError(f"{path}: not a readable .pose file ({type(exc).__name__}: {str(exc)[:200]})") from None
    components = {c.name: c for c in pose.header.components}
    missing = [name for name, _ in HOLISTIC if name not in components]
    if missing:
        raise DataError(f"{path}: not a MediaPipe Holistic pose: it has the components {', '.join(components)}; "
                        f"missing {', '.join(missing)} (convert other skeletons, e.g. OpenPose, to MediaPipe "
                        "Holistic landmarks first)")
    offsets, start = {}, 0
    for c in pose.header.components:
        offsets[c.name] = start
        start += len(c.points)
    for name, count in HOLISTIC:
        if len(components[name].points) != count:
            raise DataError(f"{path}: component {name} has {len(components[name].points)} points, expected {count}")
    data = np.ma.getdata(pose.body.data)  # [frames, people, points, dims]
    hidden = np.ma.getmaskarray(pose.body.data)
    confidence = np.asarray(pose.body.confidence)
    if data.ndim != 4 or data.shape[0] == 0:
        raise DataError(f"{path}: has no frames")
    if data.shape[1] == 0:
        raise DataError(f"{path}: has no person in it")
    if data.shape[-1] < 2:
        raise DataError(f"{path}: points have {data.shape[-1]} coordinate(s), expected x, y[, z]")
    frames = data.shape[0]
    xyz = np.zeros((frames, data.shape[2], 3), np.float64)
    dims = min(3, data.shape[-1])
    xyz[..., :dims] = data[:, 0, :, :dims]
    lost = hidden[:, 0].any(axis=-1) | (confidence[:, 0] == 0)
    size = pose.header.dimensions
    for axis, extent in ((0, size.width), (1, size.height)):
        if extent and extent > 0:
            xyz[..., axis] /= extent
    xyz[lost] = np.nan  # -> missing below
    raw = np.concatenate([xyz[:, offsets[name]:offsets[name] + count].reshape(frames, -1)
                          for name, count in HOLISTIC], axis=1)
    assert raw.shape[1] == RAW_DIM
    return lost_points_to_zero(raw)


# Writing (fixtures for tests and docs) ---------------------------------------------------------------
_BODY = ["NOSE", "LEFT_EYE_INNER", "LEFT_EYE", "LEFT_EYE_OUTER", "RIGHT_EYE_INNER", "RIGHT_EYE",
         "RIGHT_EYE_OUTER", "LEFT_EAR", "RIGHT_EAR", "MOUTH_LEFT", "MOUTH_RIGHT", "LEFT_SHOULDER",
         "RIGHT_SHOULDER", "LEFT_ELBOW", "RIGHT_ELBOW", "LEFT_WRIST", "RIGHT_WRIST", "LEFT_PINKY", "RIGHT_PINKY",
         "LEFT_INDEX", "RIGHT_INDEX", "LEFT_THUMB", "RIGHT_THUMB", "LEFT_HIP", "RIGHT_HIP", "LEFT_KNEE",
         "RIGHT_KNEE", "LEFT_ANKLE", "RIGHT_ANKLE", "LEFT_HEEL", "RIGHT_HEEL", "LEFT_FOOT_INDEX",
         "RIGHT_FOOT_INDEX"]
_HAND = ["WRIST", "THUMB_CMC", "THUMB_MCP", "THUMB_IP", "THUMB_TIP", "INDEX_FINGER_MCP", "INDEX_FINGER_PIP",
         "INDEX_FINGER_DIP", "INDEX_FINGER_TIP", "MIDDLE_FINGER_MCP", "MIDDLE_FINGER_PIP", "MIDDLE_FINGER_DIP",
         "MIDDLE_FINGER_TIP", "RING_FINGER_MCP", "RING_FINGER_PIP", "RING_FINGER_DIP", "RING_FINGER_TIP",
         "PINKY_MCP", "PINKY_PIP", "PINKY_DIP", "PINKY_TIP"]
FACE_POINTS = 468


def holistic_pose(raw, fps: float = 25.0, width: int = 640, height: int = 480, people: int = 1):
    """A pose-format ``Pose`` with the Holistic components, as pose-format's own estimator lays them out
    (pixels; confidence 0 where a point is missing; face and world landmarks empty), from raw [F, 225].
    Extra people (``people`` > 1) are copies shifted sideways."""
    pose_format, ph = _pose_format()
    from pose_format.numpy import NumPyPoseBody

    def component(name, points):
        return ph.PoseHeaderComponent(name=name, points=points, limbs=[], colors=[(255, 0, 0)], point_format="XYZC")

    header = ph.PoseHeader(version=0.2, dimensions=ph.PoseHeaderDimensions(width=width, height=height, depth=1000),
                           components=[component("POSE_LANDMARKS", _BODY),
                                       component("FACE_LANDMARKS", [str(i) for i in range(FACE_POINTS)]),
                                       component("LEFT_HAND_LANDMARKS", _HAND),
                                       component("RIGHT_HAND_LANDMARKS", _HAND),
                                       component("POSE_WORLD_LANDMARKS", _BODY)])
    raw = np.asarray(raw, np.float32)
    frames = len(raw)
    pts = raw.reshape(frames, 75, 3)
    left, right, body = pts[:, :21], pts[:, 21:42], pts[:, 42:]
    face = np.zeros((frames, FACE_POINTS, 3), np.float32)
    person = np.concatenate([body, face, left, right, np.zeros_like(body)], axis=1) * np.array([width, height, 1])
    conf = np.concatenate([np.abs(body).sum(-1) > 0, np.zeros((frames, FACE_POINTS), bool),
                           np.abs(left).sum(-1) > 0, np.abs(right).sum(-1) > 0,
                           np.zeros((frames, 33), bool)], axis=1).astype(np.float32)
    data = np.stack([person + np.array([k * width, 0, 0]) for k in range(people)], axis=1).astype(np.float32)
    confidence = np.stack([conf] * people, axis=1)
    return pose_format.Pose(header, NumPyPoseBody(fps=fps, data=data, confidence=confidence))


def write_pose_file(path, raw, **kwargs) -> Path:
    path = Path(path)
    with path.open("wb") as fh:
        holistic_pose(raw, **kwargs).write(fh)
    return path


def write_pose_fixture(directory, clips: Sequence[Clip], class_names: Sequence[str]) -> Path:
    """Write clips as ``.pose`` files plus ``labels.csv`` (file,label,signer); returns the directory."""
    import csv

    from signflow_zoo.data.formats.recordings import LABELS_CSV, slug_of

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    with (root / LABELS_CSV).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "signer"])
        for i, clip in enumerate(clips):
            file = f"{i:05d}_{slug_of(clip.name or class_names[clip.label])}.pose"
            write_pose_file(root / file, clip.raw)
            writer.writerow([file, class_names[clip.label], clip.signer])
    return root
