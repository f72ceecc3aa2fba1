""".pose files (pose-format): Holistic components -> raw [F, 225], missing points, first person, other
skeletons refused, pose:DIR end to end, and `signflow-zoo predict clip.pose`. Fixtures are written with
pose-format itself."""

import json

import numpy as np
import pytest

pose_format = pytest.importorskip("pose_format", reason="pose-format is an optional extra: pip install '.[pose]'")

from signflow_zoo.data import features as F  # noqa: E402
from signflow_zoo.data.loading import load_data, read_clips, write_pose_fixture  # noqa: E402
from signflow_zoo.common.errors import DataError  # noqa: E402
from signflow_zoo.data.formats.poseformat import holistic_pose, read_pose_file, write_pose_file  # noqa: E402
from signflow_zoo.data.synthetic import SyntheticSpec, generate  # noqa: E402


@pytest.fixture(scope="module")
def clips_and_names():
    return generate(SyntheticSpec(num_classes=3, num_signers=5, clips_per_signer_per_class=1, seed=7))


def _same(raw, expected):
    """Equal up to the float32 round trip through pixels (x * width / width)."""
    np.testing.assert_allclose(raw, expected, rtol=1e-6, atol=1e-7)
    assert np.array_equal(raw == 0, expected == 0)  # missing stays missing, present stays present


def test_holistic_file_reads_back_as_the_raw_layout(tmp_path, clips_and_names):
    clips, _ = clips_and_names
    path = write_pose_file(tmp_path / "clip.pose", clips[0].raw, width=1280, height=720)
    pose = pose_format.Pose.read(path.read_bytes())  # really the library's format
    assert [c.name for c in pose.header.components] == ["POSE_LANDMARKS", "FACE_LANDMARKS", "LEFT_HAND_LANDMARKS",
                                                        "RIGHT_HAND_LANDMARKS", "POSE_WORLD_LANDMARKS"]
    assert pose.body.data.shape[:2] == (len(clips[0].raw), 1)
    assert np.ma.getdata(pose.body.data)[:, 0, 0, 0].max() > 1  # stored in pixels
    raw = read_pose_file(path)
    assert raw.dtype == np.float32 and raw.shape == clips[0].raw.shape
    _same(raw, clips[0].raw)
    assert (F.part_present(raw)["left"] == F.part_present(clips[0].raw)["left"]).all()


def test_masked_or_zero_confidence_points_are_missing(tmp_path, clips_and_names):
    clips, _ = clips_and_names
    pose = holistic_pose(clips[1].raw)
    conf = pose.body.confidence
    conf[3, 0, 33 + 468 + 21:33 + 468 + 42] = 0  # frame 3: right hand not detected
    conf[5, 0, 0] = 0  # frame 5: the nose alone (the file keeps confidence; the library masks from it)
    pose.body.data[6, 0, 11] = np.nan  # frame 6: a NaN shoulder
    with (tmp_path / "c.pose").open("wb") as fh:
        pose.write(fh)
    raw = read_pose_file(tmp_path / "c.pose")
    assert np.isfinite(raw).all()
    assert not raw[3, 63:126].any() and clips[1].raw[3, 63:126].any()
    assert not raw[5, 126:129].any() and not raw[6, 126 + 33:126 + 36].any()
    _same(np.delete(raw, [3, 5, 6], axis=0), np.delete(clips[1].raw, [3, 5, 6], axis=0))


def test_first_person_of_several_is_read(tmp_path, clips_and_names):
    clips, _ = clips_and_names
    path = write_pose_file(tmp_path / "two.pose", clips[2].raw, people=2)
    assert pose_format.Pose.read(path.read_bytes()).body.data.shape[1] == 2
    _same(read_pose_file(path), clips[2].raw)


def test_other_skeletons_are_refused_with_the_components_they_have(tmp_path):
    from pose_format.numpy import NumPyPoseBody
    from pose_format.pose_header import PoseHeader, PoseHeaderComponent, PoseHeaderDimensions

    comps = [PoseHeaderComponent(name, [str(i) for i in range(n)], [], [(255, 0, 0)], "XYC")
             for name, n in (("pose_keypoints_2d", 25), ("hand_left_keypoints_2d", 21),
                             ("hand_right_keypoints_2d", 21))]
    header = PoseHeader(0.2, PoseHeaderDimensions(640, 480, 0), comps)
    body = NumPyPoseBody(fps=25, data=np.ones((4, 1, 67, 2), np.float32), confidence=np.ones((4, 1, 67), np.float32))
    with (tmp_path / "openpose.pose").open("wb") as fh:
        pose_format.Pose(header, body).write(fh)
    with pytest.raises(DataError) as info:
        read_pose_file(tmp_path / "openpose.pose")
    message = str(info.value)
    assert "pose_keypoints_2d, hand_left_keypoints_2d, hand_right_keypoints_2d" in message
    assert "missing LEFT_HAND_LANDMARKS, RIGHT_HAND_LANDMARKS, POSE_LANDMARKS" in message
    assert str(tmp_path / "openpose.pose") in message


def test_damaged_and_missing_files_are_named(tmp_path, clips_and_names):
    path = write_pose_file(tmp_path / "c.pose", clips_and_names[0][0].raw)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"c.pose: not a readable .pose file"):
        read_pose_file(path)
    with pytest.raises(DataError, match="gone.pose: file not found"):
        read_pose_file(tmp_path / "gone.pose")


def test_without_pose_format_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pose_format(name, *a, **k):
        if name == "pose_format" or name.startswith("pose_format."):
            raise ImportError("No module named 'pose_format'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pose_format)
    with pytest.raises(DataError, match=r"pip install 'signflow-zoo\[pose\]'"):
        read_pose_file(tmp_path / "x.pose")


def test_pose_folder_end_to_end(tmp_path, clips_and_names):
    clips, names = clips_and_names
    root = write_pose_fixture(tmp_path / "poses", clips, names)
    splits = load_data(f"pose:{root}", seed=1)
    assert splits.spec == f"pose:{root.resolve()}" and splits.class_names == sorted(names)
    assert splits.split == "signer-split(seed=1, val=0.15, test=0.15)"
    assert len(splits.train) + len(splits.val) + len(splits.test) == len(clips)
    assert np.isfinite(splits.train.features).all()
    every = read_clips(root)
    assert [c.label for c in every] == [names[c.label] for c in clips]
    _same(every[4].raw, clips[4].raw)


@pytest.mark.parametrize("entry, words", [("../x.pose", "leads outside the data folder"),
                                          ("clip.npy", "is not a .pose file")])
def test_pose_labels_csv_entries_are_checked(tmp_path, entry, words):
    root = tmp_path / "poses"
    root.mkdir()
    (root / "labels.csv").write_text(f"file,label\n{entry},hello\n")
    with pytest.raises(DataError) as info:
        load_data(f"pose:{root}")
    assert f"{root / 'labels.csv'}, line 2: entry {entry!r}" in str(info.value) and words in str(info.value)


@pytest.mark.slow
def test_cli_predict_a_pose_file(tmp_path, clips_and_names, tiny_artifacts, capsys):
    from signflow_zoo.cli.commands import main

    clips, names = clips_and_names
    path = write_pose_file(tmp_path / "hello.pose", clips[0].raw)
    assert main(["predict", str(path), "--model", str(tiny_artifacts.onnx), "--format", "json"]) == 0
    (pred,) = json.loads(capsys.readouterr().out)["predictions"]
    assert pred["clip"] == "hello" and pred["frames"] == len(clips[0].raw) and pred["true_label"] is None
    assert pred["candidate"] in tiny_artifacts.labels
    root = write_pose_fixture(tmp_path / "folder", clips[:3], names)
    assert main(["predict", str(root), "--model", str(tiny_artifacts.onnx)]) == 0
    assert capsys.readouterr().out.count("[true: ") == 3
