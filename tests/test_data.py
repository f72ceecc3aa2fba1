"""Data sets, signer splits, spec strings, and the two on-disk formats (round trips and bad files)."""

import csv

import numpy as np
import pytest

from signflow_zoo import features as F
from signflow_zoo.data import (
    DataSplits,
    SignDataset,
    clips_to_dataset,
    load_data,
    load_lsfb_isol,
    load_signflow_recordings,
    split_by_signer,
    write_lsfb_fixture,
    write_signflow_fixture,
)
from signflow_zoo.errors import DataError
from signflow_zoo.synthetic import Clip, SyntheticSpec, generate

TINY = "synthetic:classes=3,signers=5,clips=1,seed=2,difficulty=0.8"


@pytest.fixture(scope="module")
def clips_and_names():
    return generate(SyntheticSpec(num_classes=3, num_signers=4, clips_per_signer_per_class=1, seed=5))


# SignDataset -----------------------------------------------------------------------------------------
def test_clips_to_dataset_shapes_and_dtypes(clips_and_names):
    clips, names = clips_and_names
    ds = clips_to_dataset(clips, names)
    assert len(ds) == len(clips) == 12
    assert ds.features.shape == (12, F.SEQ_LEN, F.FEATURE_DIM) and ds.features.dtype == np.float32
    assert ds.mask.shape == (12, F.SEQ_LEN) and ds.mask.dtype == bool
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [c.label for c in clips]
    assert ds.signers == [c.signer for c in clips] and ds.class_names == names and ds.num_classes == 3
    feat, mask = F.prepare_clip(clips[5].raw)
    np.testing.assert_array_equal(ds.features[5], feat)
    np.testing.assert_array_equal(ds.mask[5], mask)


def test_subset_and_fingerprint(clips_and_names):
    ds = clips_to_dataset(*clips_and_names)
    sub = ds.subset([3, 1])
    assert len(sub) == 2 and sub.signers == [ds.signers[3], ds.signers[1]]
    np.testing.assert_array_equal(sub.features[0], ds.features[3])
    assert len(ds.subset(ds.labels == 0)) == 4 and len(ds.subset([])) == 0

    assert ds.fingerprint() == clips_to_dataset(*clips_and_names).fingerprint()
    assert len(ds.fingerprint()) == 64
    changed = ds.subset(range(len(ds)))
    changed.features[0, 0, 0] += 1e-3
    assert changed.fingerprint() != ds.fingerprint()
    renamed = ds.subset(range(len(ds)))
    renamed.class_names[0] = "something-else"
    assert renamed.fingerprint() != ds.fingerprint()


def test_dataset_rejects_inconsistent_arrays():
    with pytest.raises(DataError, match="mask"):
        SignDataset(np.zeros((2, 64, 469), np.float32), np.zeros((2, 63), bool), np.zeros(2, np.int64),
                    ["a"], ["s", "t"])
    with pytest.raises(DataError, match="features"):
        SignDataset(np.zeros((2, 64, 468), np.float32), np.zeros((2, 64), bool), np.zeros(2, np.int64),
                    ["a"], ["s", "t"])


def test_clips_to_dataset_rejects_bad_labels_and_arrays(clips_and_names):
    clips, names = clips_and_names
    with pytest.raises(DataError, match="labels outside"):
        clips_to_dataset([Clip(clips[0].raw, 7, "s", "bad-label")], names)
    with pytest.raises(DataError, match="broken"):
        clips_to_dataset([Clip(np.zeros((4, 10), np.float32), 0, "s", "broken")], names)


# Splits --------------------------------------------------------------------------------------------------
def _clips_for(signers, per_signer=2):
    raw = np.ones((3, 225), np.float32)
    return [Clip(raw, 0, s, f"{s}-{i}") for s in signers for i in range(per_signer)]


def test_split_by_signer_is_disjoint_complete_and_seeded():
    clips = _clips_for([f"p{i}" for i in range(10)])
    train, val, test = split_by_signer(clips, val_fraction=0.2, test_fraction=0.2, seed=3)
    sets = [{c.signer for c in part} for part in (train, val, test)]
    assert [len(s) for s in sets] == [6, 2, 2]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert len(train) + len(val) + len(test) == len(clips)
    again = split_by_signer(clips, val_fraction=0.2, test_fraction=0.2, seed=3)
    assert [c.name for c in again[2]] == [c.name for c in test]
    other = [split_by_signer(clips, 0.2, 0.2, seed=s)[2] for s in range(6)]
    assert len({tuple(sorted({c.signer for c in part})) for part in other}) > 1


def test_split_with_too_few_signers_is_a_clear_error():
    with pytest.raises(DataError, match=r"at least 3 signers.*has 2: a, b"):
        split_by_signer(_clips_for(["a", "b"]))
    with pytest.raises(DataError, match="fractions"):
        split_by_signer(_clips_for(["a", "b", "c"]), val_fraction=0.6, test_fraction=0.5)
    train, val, test = split_by_signer(_clips_for(["a", "b"]), val_fraction=0, test_fraction=0.3)
    assert len(val) == 0 and {c.signer for c in test} | {c.signer for c in train} == {"a", "b"}


# load_data and spec strings ---------------------------------------------------------------------------
def test_load_data_synthetic_spec():
    splits = load_data(TINY, seed=1)
    assert isinstance(splits, DataSplits)
    assert splits.spec == "synthetic:classes=3,signers=5,clips=1,seed=2,difficulty=0.8"
    assert splits.class_names == splits.train.class_names and splits.num_classes == 3
    signers = [set(part.signers) for part in (splits.train, splits.val, splits.test)]
    assert [len(s) for s in signers] == [3, 1, 1]
    assert not (signers[0] & signers[1] or signers[0] & signers[2] or signers[1] & signers[2])
    assert len(splits.fingerprint) == 64
    assert load_data(TINY, seed=1).fingerprint == splits.fingerprint
    assert load_data(TINY, seed=2).fingerprint != splits.fingerprint  # another signer split


def test_load_data_seed_drives_the_default_generator_seed():
    a = load_data("synthetic:classes=2,signers=3,clips=1", seed=4)
    assert a.spec.endswith("seed=4,difficulty=1")


@pytest.mark.parametrize(
    "spec, why",
    [
        ("imagenet", "unknown data source 'imagenet'"),
        ("synthetic:colors=3", "unknown option 'colors=3'"),
        ("synthetic:classes=many", "needs an integer"),
        ("synthetic:classes", "unknown option"),
        ("synthetic:classes=0", "num_classes"),
        ("signflow:", "needs a path"),
        ("lsfb", "needs a path"),
    ],
)
def test_bad_specs_list_the_valid_forms(spec, why):
    with pytest.raises(DataError) as info:
        load_data(spec)
    message = str(info.value)
    assert why in message
    if "num_classes" not in why:
        assert "Valid forms" in message and "lsfb:PATH" in message and "signflow:PATH" in message


# The SignFlow recordings format ---------------------------------------------------------------------------
def test_signflow_round_trip(tmp_path, clips_and_names):
    clips, names = clips_and_names
    write_signflow_fixture(tmp_path / "rec", clips, names)
    loaded, loaded_names = load_signflow_recordings(tmp_path / "rec")
    assert loaded_names == sorted(names)
    assert len(loaded) == len(clips)
    for a, b in zip(clips, loaded):
        np.testing.assert_array_equal(a.raw, b.raw)
        assert names[a.label] == loaded_names[b.label] and a.signer == b.signer
    splits = load_data(f"signflow:{tmp_path / 'rec'}")
    assert splits.spec == f"signflow:{(tmp_path / 'rec').resolve()}"
    assert len(splits.train) + len(splits.val) + len(splits.test) == len(clips)


def test_signflow_without_signer_column_uses_one_signer_per_recording(tmp_path):
    np.save(tmp_path / "a.npy", np.full((5, 225), 0.5, np.float32))
    np.save(tmp_path / "b.npy", np.full((6, 225), 0.5, np.float64))
    (tmp_path / "labels.csv").write_text("file,label\na.npy,hello\nb.npy,bye\n")
    clips, names = load_signflow_recordings(tmp_path)
    assert names == ["bye", "hello"]
    assert [c.signer for c in clips] == ["a", "b"] and [c.label for c in clips] == [1, 0]
    assert clips[1].raw.dtype == np.float32


def _signflow_dir(tmp_path):
    root = tmp_path / "rec"
    root.mkdir()
    np.save(root / "good.npy", np.full((4, 225), 0.5, np.float32))
    return root


def _write_labels(root, file):
    (root / "labels.csv").write_text(f"file,label,signer\ngood.npy,hi,s1\n{file},hi,s2\n")


def _case_missing_file(root):
    _write_labels(root, "gone.npy")
    return root / "gone.npy"


def _case_wrong_shape(root):
    np.save(root / "bad.npy", np.zeros((4, 224), np.float32))
    _write_labels(root, "bad.npy")
    return root / "bad.npy"


def _case_three_dims(root):
    np.save(root / "bad.npy", np.zeros((4, 75, 3), np.float32))
    _write_labels(root, "bad.npy")
    return root / "bad.npy"


def _case_no_frames(root):
    np.save(root / "bad.npy", np.zeros((0, 225), np.float32))
    _write_labels(root, "bad.npy")
    return root / "bad.npy"


def _case_strings(root):
    np.save(root / "bad.npy", np.array([["x"] * 225] * 3))
    _write_labels(root, "bad.npy")
    return root / "bad.npy"


def _case_pickled_objects(root):
    np.save(root / "bad.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    _write_labels(root, "bad.npy")
    return root / "bad.npy"


def _case_not_npy(root):
    (root / "bad.npy").write_bytes(b"this is not a numpy file at all" * 10)
    _write_labels(root, "bad.npy")
    return root / "bad.npy"


def _case_truncated(root):
    np.save(root / "full.npy", np.zeros((50, 225), np.float32))
    (root / "bad.npy").write_bytes((root / "full.npy").read_bytes()[:300])
    _write_labels(root, "bad.npy")
    return root / "bad.npy"


def _case_no_labels_csv(root):
    return root / "labels.csv"


def _case_csv_without_label_column(root):
    (root / "labels.csv").write_text("file,sign\ngood.npy,hi\n")
    return root / "labels.csv"


def _case_empty_csv(root):
    (root / "labels.csv").write_text("file,label\n")
    return root / "labels.csv"


@pytest.mark.parametrize(
    "make_case, words",
    [
        (_case_missing_file, "not found"),
        (_case_wrong_shape, "shape (4, 224)"),
        (_case_three_dims, "shape (4, 75, 3)"),
        (_case_no_frames, "no frames"),
        (_case_strings, "numeric"),
        (_case_pickled_objects, "not a valid .npy"),
        (_case_not_npy, "no NumPy header"),
        (_case_truncated, ".npy"),
        (_case_no_labels_csv, "not found"),
        (_case_csv_without_label_column, "missing column(s) label"),
        (_case_empty_csv, "no rows"),
    ],
)
def test_signflow_bad_files_name_the_file(tmp_path, make_case, words):
    root = _signflow_dir(tmp_path)
    culprit = make_case(root)
    with pytest.raises(DataError) as info:
        load_signflow_recordings(root)
    assert str(culprit) in str(info.value)
    assert words in str(info.value)


def test_signflow_missing_directory(tmp_path):
    with pytest.raises(DataError, match="directory not found") as info:
        load_signflow_recordings(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)
    with pytest.raises(DataError, match="nowhere"):
        load_data(f"signflow:{tmp_path / 'nowhere'}")


# The LSFB-ISOL format ------------------------------------------------------------------------------------
def test_lsfb_round_trip(tmp_path, clips_and_names):
    clips, names = clips_and_names
    root = write_lsfb_fixture(tmp_path / "lsfb", clips, names)
    with open(root / "instances.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["id", "sign", "signer", "start", "end"]
    assert (root / "poses" / "pose" / f"{rows[0]['id']}.npy").exists()
    loaded, loaded_names = load_lsfb_isol(root)
    assert loaded_names == sorted(names) and len(loaded) == len(clips)
    for a, b in zip(clips, loaded):
        np.testing.assert_array_equal(a.raw, b.raw)
        assert names[a.label] == loaded_names[b.label] and a.signer == b.signer
    splits = load_data(f"lsfb:{root}")
    assert splits.num_classes == 3


def test_lsfb_30_point_pose_visibility_and_face(tmp_path):
    root = tmp_path / "lsfb"
    for part in ("left_hand", "right_hand", "pose", "face"):
        (root / "poses" / part).mkdir(parents=True)
    rng = np.random.default_rng(0)
    left = rng.uniform(0.1, 0.9, (6, 21, 3))
    left[2] = np.nan  # LSFB marks a lost hand with NaN
    np.save(root / "poses" / "left_hand" / "7.npy", left)
    np.save(root / "poses" / "right_hand" / "7.npy", rng.uniform(0.1, 0.9, (6, 21, 4)))
    np.save(root / "poses" / "pose" / "7.npy", rng.uniform(0.1, 0.9, (6, 30, 3)).astype(np.float16))
    np.save(root / "poses" / "face" / "7.npy", rng.uniform(0.1, 0.9, (6, 468, 3)))
    (root / "instances.csv").write_text("id,sign,signer,start,end\n7,BONJOUR,CLSFBI0103,120,240\n")
    (clip,), names = load_lsfb_isol(root)
    assert names == ["BONJOUR"] and clip.signer == "CLSFBI0103" and clip.name == "7"
    assert clip.raw.shape == (6, 225) and clip.raw.dtype == np.float32
    assert np.all(clip.raw[:, 216:] == 0)  # pose padded from 30 to 33 points
    present = F.part_present(clip.raw)
    assert present["left"].tolist() == [True, True, False, True, True, True]
    feat, mask = F.prepare_clip(clip.raw)
    assert np.isfinite(feat).all() and mask.all()


def _lsfb_dir(tmp_path):
    root = tmp_path / "lsfb"
    clip = Clip(np.full((4, 225), 0.5, np.float32), 0, "s1", "x")
    write_lsfb_fixture(root, [clip, clip], ["HELLO"])
    ident = "s1_00001"
    return root, ident


@pytest.mark.parametrize(
    "damage, words",
    [
        ("missing_pose", "not found"),
        ("hand_shape", "shape (4, 20, 3)"),
        ("frame_count", "frame count"),
        ("corrupt", "not a valid .npy"),
        ("strings", "numeric"),
        ("no_frames", "no frames"),
        ("no_csv", "not found"),
        ("csv_columns", "missing column(s) signer"),
    ],
)
def test_lsfb_bad_files_name_the_file(tmp_path, damage, words):
    root, ident = _lsfb_dir(tmp_path)
    pose = root / "poses" / "pose" / f"{ident}.npy"
    right = root / "poses" / "right_hand" / f"{ident}.npy"
    table = root / "instances.csv"
    culprit = {"missing_pose": pose, "hand_shape": right, "frame_count": right, "corrupt": pose,
               "strings": right, "no_frames": pose, "no_csv": table, "csv_columns": table}[damage]
    if damage == "missing_pose":
        pose.unlink()
    elif damage == "hand_shape":
        np.save(right, np.zeros((4, 20, 3), np.float32))
    elif damage == "frame_count":
        np.save(right, np.full((5, 21, 3), 0.5, np.float32))
    elif damage == "corrupt":
        pose.write_bytes(b"\x93NUMPY garbage")
    elif damage == "strings":
        np.save(right, np.full((4, 21, 3), "a"))
    elif damage == "no_frames":
        np.save(pose, np.zeros((0, 33, 3), np.float32))
    elif damage == "no_csv":
        (root / "instances.csv").unlink()
    elif damage == "csv_columns":
        (root / "instances.csv").write_text("id,sign\ns1_00000,HELLO\n")
    with pytest.raises(DataError) as info:
        load_lsfb_isol(root)
    assert str(culprit) in str(info.value)
    assert words in str(info.value)


def test_lsfb_missing_directory(tmp_path):
    with pytest.raises(DataError, match="LSFB-ISOL directory not found"):
        load_lsfb_isol(tmp_path / "nowhere")
