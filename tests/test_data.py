"""Data sets, splits (signer and official), spec strings, and the on-disk formats: SignFlow recordings
(labels.csv or slug-named files), LSFB-ISOL as lsfb-dataset lays it out; round trips, NaN frames, bad files,
paths that leave their folder, and the training split held in memory or read from disk."""

import csv
import json
import os
import re

import numpy as np
import pytest

from signflow_zoo.data import features as F
from signflow_zoo.data.loading import (
    SPEC_FORMS,
    ClipFileDataset,
    DataSplits,
    SignDataset,
    clips_to_dataset,
    load_clips,
    load_data,
    load_lsfb_isol,
    load_signflow_recordings,
    read_clips,
    split_by_signer,
    write_lsfb_fixture,
    write_signflow_fixture,
)
from signflow_zoo.common.errors import DataError
from signflow_zoo.data.synthetic import Clip, SyntheticSpec, generate

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
        SignDataset(np.zeros((2, 64, F.FEATURE_DIM), np.float32), np.zeros((2, 63), bool), np.zeros(2, np.int64),
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


def _case_no_labels_csv(root):  # then the file names must carry the sign: good.npy does not
    return root / "good.npy"


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
        (_case_no_labels_csv, "without labels.csv a recording must be named <sign>_<12 hex digits>.npy"),
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
    root = write_lsfb_fixture(tmp_path / "lsfb", clips, names, official_splits=False)
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
    assert splits.num_classes == 3 and splits.split == "signer-split(seed=0, val=0.15, test=0.15)"


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
    assert np.isfinite(clip.raw).all() and np.all(clip.raw[2, :63] == 0)  # NaN hand -> missing (zeros)
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


# SignFlow's own layout: the sign's slug in the file name --------------------------------------------------
def test_slug_named_recordings_take_their_label_from_the_file_name(tmp_path, clips_and_names):
    clips, names = clips_and_names
    root = write_signflow_fixture(tmp_path / "rec", clips, names, labels_csv=False)
    assert not (root / "labels.csv").exists()
    files = sorted(root.glob("*.npy"))
    assert len(files) == len(clips) and all(re.fullmatch(r".+_[0-9a-f]{12}\.npy", f.name) for f in files)
    loaded, loaded_names = load_signflow_recordings(root)
    assert loaded_names == sorted(names)
    for clip in loaded:
        original = clips[int(clip.name[-12:], 16) - 1]  # the fixture's hex part is the clip's index + 1
        np.testing.assert_array_equal(clip.raw, original.raw)
        assert loaded_names[clip.label] == names[original.label] and clip.signer == clip.name
    splits = load_data(f"signflow:{root}")
    assert len(splits.train) + len(splits.val) + len(splits.test) == len(clips)


def test_slug_is_everything_before_the_last_hex_part(tmp_path):
    for name in ("bonjour_madame_0123456789ab.npy", "Ça-va__3f2a9c0d1e4b.npy", "merci_ffffffffffff.npy"):
        np.save(tmp_path / name, np.full((4, 225), 0.5, np.float32))
    clips, names = load_signflow_recordings(tmp_path)
    assert names == ["bonjour_madame", "merci", "Ça-va_"]
    assert [names[c.label] for c in clips] == ["bonjour_madame", "merci", "Ça-va_"]  # files in name order


def test_an_empty_recordings_folder_says_what_it_expects(tmp_path):
    with pytest.raises(DataError, match=r"no labels.csv and no recordings named <sign>_<12 hex digits>.npy"):
        load_signflow_recordings(tmp_path)


# LSFB-ISOL as lsfb-dataset 2.x lays it out -----------------------------------------------------------------
@pytest.fixture(scope="module")
def six_signers():
    """Three signs by six signers: with folds by signer, every official part gets someone."""
    return generate(SyntheticSpec(num_classes=3, num_signers=6, clips_per_signer_per_class=1, seed=5))


def test_lsfb_fixture_has_the_library_layout(tmp_path, six_signers):
    clips, names = six_signers
    root = write_lsfb_fixture(tmp_path / "lsfb", clips, names)
    rows = list(csv.DictReader((root / "instances.csv").open()))
    assert list(rows[0]) == ["id", "sign", "signer", "start", "end"] and len(rows) == len(clips)
    table = list(csv.DictReader((root / "metadata" / "sign_to_index.csv").open()))
    assert [(r["sign"], int(r["class"])) for r in table] == [(n, i) for i, n in enumerate(names)]
    split = {p.stem: json.loads(p.read_text()) for p in (root / "metadata" / "splits").glob("*.json")}
    assert sorted(split) == ["all", "fold_0", "fold_1", "fold_2", "fold_3", "fold_4", "test", "train"]
    assert all(isinstance(ids, list) and all(isinstance(i, str) for i in ids) for ids in split.values())
    assert set(split["train"]) == set(split["fold_2"] + split["fold_3"] + split["fold_4"])
    assert set(split["test"]) == set(split["fold_0"] + split["fold_1"]) and len(split["all"]) == len(clips)
    ident = rows[0]["id"]
    shapes = {part: np.load(root / "poses" / part / f"{ident}.npy").shape for part in ("left_hand", "right_hand",
                                                                                          "pose", "face")}
    frames = len(clips[0].raw)
    assert shapes == {"left_hand": (frames, 21, 3), "right_hand": (frames, 21, 3), "pose": (frames, 33, 3),
                      "face": (frames, 468, 3)}
    lost = F.part_present(clips[0].raw)["left"]
    left = np.load(root / "poses" / "left_hand" / f"{ident}.npy")
    assert (~lost).any() and np.isnan(left[~lost]).all() and np.isfinite(left[lost]).all()  # NaN where undetected


def test_lsfb_official_split_is_used_and_recorded(tmp_path, six_signers):
    clips, names = six_signers
    root = write_lsfb_fixture(tmp_path / "lsfb", clips, names)
    splits = load_data(f"lsfb:{root}", seed=3)
    assert splits.split == "lsfb-official:train/test, val=fold_4"
    signers = [set(part.signers) for part in (splits.train, splits.val, splits.test)]
    assert signers == [{"signer-02", "signer-03"}, {"signer-04"}, {"signer-00", "signer-01", "signer-05"}]
    assert load_data(f"lsfb:{root}", seed=0).fingerprint == splits.fingerprint  # the official split has no seed

    (root / "metadata" / "splits" / "fold_4.json").unlink()  # no validation fold: held-out signers of train
    other = load_data(f"lsfb:{root}", seed=3)
    assert other.split == "lsfb-official:train/test, val=signer-split(seed=3, val=0.15)"
    assert set(other.train.signers) | set(other.val.signers) == {"signer-02", "signer-03", "signer-04"}
    assert not set(other.train.signers) & set(other.val.signers) and set(other.test.signers) == signers[2]
    assert other.fingerprint != splits.fingerprint  # the split is part of the fingerprint

    for f in (root / "metadata" / "splits").glob("*.json"):
        f.unlink()
    assert load_data(f"lsfb:{root}", seed=3).split == "signer-split(seed=3, val=0.15, test=0.15)"


def test_lsfb_class_indices_follow_sign_to_index(tmp_path, six_signers):
    clips, names = six_signers
    root = write_lsfb_fixture(tmp_path / "lsfb", clips, names)
    table = list(reversed(names))
    (root / "metadata" / "sign_to_index.csv").write_text("sign,class\n" + "".join(
        f"{n},{i}\n" for i, n in enumerate(table)))
    loaded, loaded_names, _ = load_clips(f"lsfb:{root}")
    assert loaded_names == table
    assert [loaded_names[c.label] for c in loaded] == [names[c.label] for c in clips]
    splits = load_data(f"lsfb:{root}")
    assert splits.class_names == table and splits.test.class_names == table


def test_lsfb_labels_option_keeps_the_first_classes(tmp_path, six_signers):
    clips, names = six_signers
    root = write_lsfb_fixture(tmp_path / "lsfb", clips, names)
    splits = load_data(f"lsfb:{root}?labels=2")
    assert splits.class_names == names[:2] and splits.spec == f"lsfb:{root.resolve()}?labels=2"
    kept = sum(c.label < 2 for c in clips)
    assert len(splits.train) + len(splits.val) + len(splits.test) == kept
    assert splits.fingerprint != load_data(f"lsfb:{root}").fingerprint
    with pytest.raises(DataError, match="option labels needs a positive integer"):
        load_data(f"lsfb:{root}?labels=0")
    with pytest.raises(DataError, match=r"unknown option 'colour=red' \(options: labels, poses\)"):
        load_data(f"lsfb:{root}?colour=red")


def test_lsfb_reads_poses_raw_when_asked_or_when_that_is_all_there_is(tmp_path, six_signers):
    clips, names = six_signers
    root = write_lsfb_fixture(tmp_path / "lsfb", clips, names, poses="poses_raw")
    assert not (root / "poses").exists()
    only_raw = load_clips(f"lsfb:{root}")[0]
    for a, b in zip(clips, only_raw):
        np.testing.assert_array_equal(a.raw, b.raw)
    doubled = [Clip(c.raw * 2, c.label, c.signer, c.name) for c in clips]
    write_lsfb_fixture(root, doubled, names, poses="poses")  # both folders now: poses/ wins unless asked
    np.testing.assert_array_equal(load_clips(f"lsfb:{root}")[0][0].raw, doubled[0].raw)
    np.testing.assert_array_equal(load_clips(f"lsfb:{root}?poses=poses_raw")[0][0].raw, clips[0].raw)
    with pytest.raises(DataError, match="poses='elsewhere'"):
        load_data(f"lsfb:{root}?poses=elsewhere")


def test_lsfb_nan_frames_are_missing_points_never_nan_features(tmp_path, six_signers):
    clips, names = six_signers
    root = write_lsfb_fixture(tmp_path / "lsfb", clips, names, pose_points=30)
    ident = next(csv.DictReader((root / "instances.csv").open()))["id"]
    files = {part: root / "poses" / part / f"{ident}.npy" for part in ("left_hand", "right_hand", "pose")}
    right = np.load(files["right_hand"])
    seen = 1 + next(f for f in range(len(right) - 1) if np.isfinite(right[1 + f]).all())
    right[seen, 5, 2] = np.nan  # one coordinate of one point: that point is lost, the rest of the hand stays
    np.save(files["right_hand"], right)
    for part, path in files.items():  # frame 0: nothing detected at all
        arr = np.load(path)
        arr[0] = np.nan
        np.save(path, arr)
    loaded = load_clips(f"lsfb:{root}")[0]
    assert all(np.isfinite(c.raw).all() for c in loaded)
    assert np.all(loaded[0].raw[seen, 63 + 15:63 + 18] == 0) and np.count_nonzero(loaded[0].raw[seen, 63:126]) == 60
    assert not loaded[0].raw[0].any()
    for a, b in zip(clips[1:], loaded[1:]):  # a lost hand: NaN on disk, zeros again when read
        np.testing.assert_array_equal(a.raw[:, :216], b.raw[:, :216])
        assert not b.raw[:, 216:].any()  # the 30-point pose, zero-padded to 33
    features, mask = F.prepare_clip(loaded[0].raw)
    assert not mask[0] and mask[1:].any() and not features[0].any() and np.isfinite(features).all()
    splits = load_data(f"lsfb:{root}")
    assert all(np.isfinite(part.features).all() for part in (splits.train, splits.val, splits.test))


@pytest.mark.parametrize(
    "damage, words",
    [
        ("train_without_test", "test.json: not found, but train.json is"),
        ("overlap", "must not overlap"),
        ("not_a_list", "expected a JSON list of instance ids"),
        ("sign_not_in_table", "is not in"),
        ("class_gap", "without gaps"),
        ("duplicate_id", "appears twice"),
    ],
)
def test_lsfb_bad_metadata_is_named(tmp_path, six_signers, damage, words):
    clips, names = six_signers
    root = write_lsfb_fixture(tmp_path / "lsfb", clips, names)
    meta = root / "metadata"
    first = json.loads((meta / "splits" / "train.json").read_text())[0]
    if damage == "train_without_test":
        (meta / "splits" / "test.json").unlink()
    elif damage == "overlap":
        (meta / "splits" / "test.json").write_text(json.dumps([first]))
    elif damage == "not_a_list":
        (meta / "splits" / "train.json").write_text('{"ids": 3}')
    elif damage == "sign_not_in_table":
        (meta / "sign_to_index.csv").write_text(f"sign,class\n{names[0]},0\n{names[1]},1\n")
    elif damage == "class_gap":
        (meta / "sign_to_index.csv").write_text(f"sign,class\n{names[0]},0\n{names[1]},1\n{names[2]},5\n")
    elif damage == "duplicate_id":
        with (root / "instances.csv").open("a") as fh:
            fh.write(f"{first},{names[0]},signer-02,0,10\n")
    with pytest.raises(DataError, match=re.escape(words)):
        load_data(f"lsfb:{root}")


# Paths stay inside their data folder ----------------------------------------------------------------------
def _outside(tmp_path):
    victim = tmp_path / "outside"
    victim.mkdir()
    np.save(victim / "secret.npy", np.full((4, 225), 0.5, np.float32))
    return victim


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink_file", "symlink_dir"])
def test_labels_csv_entries_leaving_the_folder_are_refused(tmp_path, how):
    victim = _outside(tmp_path)
    root = _signflow_dir(tmp_path)
    entry = {"dotdot": "../outside/secret.npy", "absolute": str(victim / "secret.npy"),
             "symlink_file": "link.npy", "symlink_dir": "sub/secret.npy"}[how]
    if how == "symlink_file":
        os.symlink(victim / "secret.npy", root / "link.npy")
    if how == "symlink_dir":
        os.symlink(victim, root / "sub")
    _write_labels(root, entry)
    with pytest.raises(DataError) as info:
        load_signflow_recordings(root)
    message = str(info.value)
    assert f"{root / 'labels.csv'}, line 3: entry {entry!r}" in message
    assert {"dotdot": "leads outside the data folder", "absolute": "is an absolute path",
            "symlink_file": "symbolic link", "symlink_dir": "symbolic link"}[how] in message
    with pytest.raises(DataError, match="line 3"):
        load_data(f"signflow:{root}")


def test_symlinks_that_stay_inside_the_folder_are_fine(tmp_path):
    root = _signflow_dir(tmp_path)
    (root / "takes").mkdir()
    np.save(root / "takes" / "two.npy", np.full((5, 225), 0.25, np.float32))
    os.symlink(root / "takes" / "two.npy", root / "link.npy")
    _write_labels(root, "link.npy")
    clips, _ = load_signflow_recordings(root)
    assert [len(c.raw) for c in clips] == [4, 5]


def test_slug_named_symlink_out_of_the_folder_is_refused(tmp_path):
    victim = _outside(tmp_path)
    root = tmp_path / "rec"
    root.mkdir()
    os.symlink(victim / "secret.npy", root / "hello_0123456789ab.npy")
    with pytest.raises(DataError, match=r"entry 'hello_0123456789ab.npy' is a symbolic link to .*outside"):
        load_signflow_recordings(root)


@pytest.mark.parametrize("how", ["dotdot_id", "slash_id", "symlink_pose"])
def test_lsfb_ids_leaving_the_folder_are_refused(tmp_path, how):
    victim = _outside(tmp_path)
    root, ident = _lsfb_dir(tmp_path)
    table = root / "instances.csv"
    if how == "symlink_pose":
        pose = root / "poses" / "pose" / f"{ident}.npy"
        np.save(victim / "pose.npy", np.load(pose))
        pose.unlink()
        os.symlink(victim / "pose.npy", pose)
        entry, line = "poses/pose/s1_00001.npy", 3
    else:
        entry = "../../outside/secret" if how == "dotdot_id" else "nested/id"
        table.write_text(table.read_text() + f"{entry},HELLO,s1,0,10\n")
        line = 4
    with pytest.raises(DataError) as info:
        load_lsfb_isol(root)
    assert f"{table}, line {line}: entry {entry!r}" in str(info.value)


# The training split in memory or on disk ---------------------------------------------------------------
def test_training_split_on_disk_holds_the_same_clips_as_in_memory(tmp_path, six_signers):
    clips, names = six_signers
    root = write_signflow_fixture(tmp_path / "rec", clips, names)
    memory = load_data(f"signflow:{root}", in_memory=True)
    disk = load_data(f"signflow:{root}", in_memory=False)
    assert isinstance(memory.train, SignDataset) and isinstance(disk.train, ClipFileDataset)
    assert isinstance(disk.val, SignDataset) and isinstance(disk.test, SignDataset)
    assert disk.fingerprint == memory.fingerprint and disk.split == memory.split
    assert disk.train.signers == memory.train.signers and disk.train.labels.tolist() == memory.train.labels.tolist()
    held = disk.train.materialize()
    np.testing.assert_array_equal(held.features, memory.train.features)  # bit for bit
    np.testing.assert_array_equal(held.mask, memory.train.mask)
    for a, b in zip(disk.train[[3, 1]], memory.train[[3, 1]]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(disk.train[2:5], memory.train[2:5]):
        np.testing.assert_array_equal(a, b)
    # code written for arrays (slices of .features / .mask) reads the same values from disk
    np.testing.assert_array_equal(disk.train.features[1:4], memory.train.features[1:4])
    np.testing.assert_array_equal(disk.train.mask[1:4], memory.train.mask[1:4])
    assert disk.train.features.shape == memory.train.features.shape and len(disk.train.mask) == len(memory.train)
    x, m, y = disk.train[2]
    assert x.shape == (F.SEQ_LEN, F.FEATURE_DIM) and x.dtype == np.float32 and m.shape == (F.SEQ_LEN,)
    assert m.dtype == bool and isinstance(y, int) and y == memory.train[2][2]
    assert disk.train.fingerprint() != memory.train.fingerprint()  # raw-based vs feature-based, each stable
    assert disk.train.subset([0, 2]).labels.tolist() == memory.train.labels[[0, 2]].tolist()


def test_a_big_training_split_stays_on_disk_by_default(tmp_path, six_signers, monkeypatch):
    from signflow_zoo.data import loading as data

    clips, names = six_signers
    root = write_signflow_fixture(tmp_path / "rec", clips, names)
    assert isinstance(load_data(f"signflow:{root}").train, SignDataset)
    monkeypatch.setattr(data, "IN_MEMORY_LIMIT_BYTES", 10 * F.SEQ_LEN * F.FEATURE_DIM * 4)
    assert isinstance(load_data(f"signflow:{root}").train, ClipFileDataset)  # 12 clips > the limit of 10
    assert isinstance(load_data(TINY).train, SignDataset)  # generated data is always in memory
    with pytest.raises(DataError, match="in_memory=False needs a data set on disk"):
        load_data(TINY, in_memory=False)


def test_files_are_read_at_load_time_even_when_training_reads_from_disk(tmp_path, six_signers):
    clips, names = six_signers
    root = write_signflow_fixture(tmp_path / "rec", clips, names)
    rows = list(csv.DictReader((root / "labels.csv").open()))
    (root / rows[-1]["file"]).write_bytes(b"not an array")
    with pytest.raises(DataError, match="no NumPy header"):
        load_data(f"signflow:{root}", in_memory=False)


# Clips named on the command line (predict / stream) -----------------------------------------------------
def test_read_clips_reads_every_format_with_labels_where_known(tmp_path, six_signers):
    clips, names = six_signers
    np.save(tmp_path / "one.npy", clips[0].raw)
    (one,) = read_clips(tmp_path / "one.npy")
    assert one.name == "one" and one.label is None
    np.testing.assert_array_equal(one.raw, clips[0].raw)

    lsfb = write_lsfb_fixture(tmp_path / "lsfb", clips[:4], names)
    every = read_clips(lsfb)
    assert [c.label for c in every] == [names[c.label] for c in clips[:4]]  # all instances, splits aside
    ident = every[1].name
    (alone,) = read_clips(lsfb / "poses" / "right_hand" / f"{ident}.npy")
    (again,) = read_clips(lsfb, instance=ident)
    assert alone.label == again.label == names[clips[1].label]
    np.testing.assert_array_equal(alone.raw, clips[1].raw)

    slugs = write_signflow_fixture(tmp_path / "slugs", clips[:3], names, labels_csv=False)
    assert sorted(c.label for c in read_clips(slugs)) == sorted(names[c.label] for c in clips[:3])
    listed = write_signflow_fixture(tmp_path / "listed", clips[:3], names)
    assert [c.label for c in read_clips(listed)] == [names[c.label] for c in clips[:3]]
    with pytest.raises(DataError, match="instances.csv \\(LSFB-ISOL\\), labels.csv"):
        read_clips(tmp_path / "lsfb" / "metadata")
    with pytest.raises(DataError, match="--instance needs the LSFB-ISOL root directory"):
        read_clips(tmp_path / "one.npy", instance="x")


def test_spec_forms_and_cli_help_name_every_format(capsys):
    text = "\n".join(SPEC_FORMS)
    for form in ("synthetic:", "signflow:PATH", "lsfb:PATH", "pose:PATH", "labels.csv", "<sign>_<12 hex>.npy",
                 "sign_to_index.csv"):
        assert form in text
    from signflow_zoo.cli.commands import main

    assert main(["train", "--help"]) == 0  # main returns the exit status, --help's too
    assert "pose:PATH" in capsys.readouterr().out
