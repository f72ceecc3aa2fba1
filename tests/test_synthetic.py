"""The synthetic generator: determinism, shapes, the class catalogue, signer variation, learnability."""

import re

import numpy as np
import pytest

from signflow_zoo.data import features as F
from signflow_zoo.common.errors import DataError
from signflow_zoo.data.synthetic import Clip, SyntheticSpec, class_catalogue, generate

SMALL = SyntheticSpec(num_classes=6, num_signers=4, clips_per_signer_per_class=2, seed=7)


@pytest.fixture(scope="module")
def small():
    return generate(SMALL)


def test_clips_have_the_raw_layout(small):
    clips, names = small
    assert len(clips) == 6 * 4 * 2 and len(names) == 6
    for clip in clips:
        assert isinstance(clip, Clip)
        assert clip.raw.dtype == np.float32 and clip.raw.ndim == 2 and clip.raw.shape[1] == F.RAW_DIM
        assert 15 <= len(clip.raw) <= 180
        assert np.isfinite(clip.raw).all()
        assert clip.name
    assert sorted({c.label for c in clips}) == list(range(6))
    assert len({c.signer for c in clips}) == 4
    assert len({c.name for c in clips}) == len(clips)


def test_same_seed_same_data_other_seed_other_data(small):
    again, names = generate(SyntheticSpec(**SMALL.to_dict()))
    assert names == small[1]
    for a, b in zip(small[0], again):
        np.testing.assert_array_equal(a.raw, b.raw)
        assert (a.label, a.signer, a.name) == (b.label, b.signer, b.name)
    other, _ = generate(SyntheticSpec(**{**SMALL.to_dict(), "seed": 8}))
    assert not np.array_equal(other[0].raw, small[0][0].raw)


def test_a_clip_does_not_depend_on_how_many_classes_or_signers_there_are(small):
    bigger, _ = generate(SyntheticSpec(num_classes=9, num_signers=5, clips_per_signer_per_class=2, seed=7))
    by_name = {c.name: c for c in bigger}
    for clip in small[0]:
        np.testing.assert_array_equal(by_name[clip.name].raw, clip.raw)


def test_class_names_are_readable_unique_slugs(small):
    _, names = small
    assert len(set(names)) == len(names)
    pattern = re.compile(r"^sign-\d{2}-(one-handed|two-handed|alternating)-[a-z]+-[a-z]+-[a-z]+-x[123]$")
    assert all(pattern.match(n) for n in names), names
    _, many = generate(SyntheticSpec(num_classes=120, num_signers=1, clips_per_signer_per_class=1))
    assert many[0].startswith("sign-000-") and many[119].startswith("sign-119-")
    assert [n[9:] for n in many[:6]] == [n[8:] for n in names]  # same catalogue, wider index


def test_first_classes_differ_in_several_factors():
    signs = class_catalogue(20)
    for i, a in enumerate(signs):
        for b in signs[:i]:
            fa = (a.hands, a.movement, a.location, a.handshape, a.reps)
            fb = (b.hands, b.movement, b.location, b.handshape, b.reps)
            assert sum(x != y for x, y in zip(fa, fb)) >= 3


def test_hands_go_missing_sometimes_but_not_mostly():
    clips, _ = generate(SyntheticSpec(num_classes=4, num_signers=4, clips_per_signer_per_class=2))
    present = [F.part_present(c.raw) for c in clips]
    left = np.concatenate([p["left"] for p in present])
    right = np.concatenate([p["right"] for p in present])
    assert 0.5 < left.mean() < 1.0 and 0.5 < right.mean() < 1.0
    for clip, p in zip(clips, present):  # a missing hand is exactly zero-filled
        assert np.all(clip.raw[~p["left"], F.LEFT_HAND] == 0)


def test_difficulty_zero_is_clean_and_identical_across_signers():
    clips, names = generate(SyntheticSpec(num_classes=5, num_signers=3, clips_per_signer_per_class=1,
                                          difficulty=0.0))
    for clip in clips:
        present = F.part_present(clip.raw)
        assert present["pose"].all()
        if "-one-handed-" not in names[clip.label]:  # two hands: both tracked in every frame
            assert present["left"].all() and present["right"].all()
    widths = [np.linalg.norm(c.raw[0, 126 + 33:126 + 36] - c.raw[0, 126 + 36:126 + 39]) for c in clips]
    assert np.ptp(widths) < 1e-5  # every signer has the same body


def test_difficulty_scales_signer_variation():
    def shoulder_widths(difficulty):
        clips, _ = generate(SyntheticSpec(num_classes=1, num_signers=12, clips_per_signer_per_class=1,
                                          difficulty=difficulty))
        return np.array([np.median(np.linalg.norm(
            c.raw[:, 126 + 33:126 + 36] - c.raw[:, 126 + 36:126 + 39], axis=1)) for c in clips])

    assert np.std(shoulder_widths(2.0)) > 2 * np.std(shoulder_widths(0.3))


def test_left_handed_signers_are_mirrored():
    """In a one-handed sign the dominant hand travels; for left-handers that is the left hand."""
    spec = SyntheticSpec(num_classes=20, num_signers=24, clips_per_signer_per_class=1, difficulty=0.5)
    clips, names = generate(spec)
    one_handed = [i for i, n in enumerate(names) if "-one-handed-" in n]
    travel = {}
    for clip in clips:
        if clip.label not in one_handed:
            continue
        pose = clip.raw[F.part_present(clip.raw)["pose"], 126:].reshape(-1, 33, 3)
        left = pose[:, 15, :2].std(axis=0).sum()  # spread of the pose wrists (tracked with the pose)
        right = pose[:, 16, :2].std(axis=0).sum()
        travel.setdefault(clip.signer, []).append(right > left)
    right_dominant = {s: np.mean(v) for s, v in travel.items()}
    assert any(v == 1.0 for v in right_dominant.values())  # right-handed signers
    assert any(v == 0.0 for v in right_dominant.values())  # at least one left-hander in 24 (~15%)
    assert all(v in (0.0, 1.0) for v in right_dominant.values())


def test_classes_are_learnable_across_signers():
    """A nearest-centroid classifier on time-pooled features recognizes unseen signers: the classes
    carry real, signer-independent differences."""
    clips, _ = generate(SyntheticSpec(num_classes=8, num_signers=6, clips_per_signer_per_class=2, seed=1))
    feats, _ = F.prepare_clips([c.raw for c in clips])
    x = feats[:, :, list(range(225)) + list(range(450, 469))].reshape(len(clips), 4, 16, -1).mean(2)
    x = x.reshape(len(clips), -1)
    y = np.array([c.label for c in clips])
    test = np.array([c.signer in ("signer-04", "signer-05") for c in clips])
    mu, sd = x[~test].mean(0), x[~test].std(0) + 1e-6
    x = (x - mu) / sd
    centroids = np.stack([x[~test & (y == k)].mean(0) for k in range(8)])
    pred = np.argmin(((x[test][:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == y[test]).mean() >= 0.8


def test_lengths_vary_with_repetitions_and_speed():
    clips, names = generate(SyntheticSpec(num_classes=20, num_signers=6, clips_per_signer_per_class=1))
    lengths = np.array([len(c.raw) for c in clips])
    assert lengths.min() >= 15 and lengths.max() <= 180 and np.ptp(lengths) > 30
    reps = np.array([int(names[c.label][-1]) for c in clips])
    assert lengths[reps == 3].mean() > lengths[reps == 1].mean()


def test_spec_dict_and_fingerprint():
    spec = SyntheticSpec()
    assert spec.to_dict() == {"num_classes": 20, "num_signers": 24, "clips_per_signer_per_class": 4,
                              "seed": 0, "difficulty": 1.0}
    assert SyntheticSpec(**spec.to_dict()) == spec
    assert spec.fingerprint() == SyntheticSpec().fingerprint()
    fingerprints = {spec.fingerprint()}
    for change in ({"num_classes": 21}, {"num_signers": 23}, {"clips_per_signer_per_class": 3},
                   {"seed": 1}, {"difficulty": 1.5}):
        fingerprints.add(SyntheticSpec(**{**spec.to_dict(), **change}).fingerprint())
    assert len(fingerprints) == 6
    assert re.fullmatch(r"synthetic-[0-9a-f]{16}", spec.fingerprint())
    assert SyntheticSpec(num_classes=np.int64(20)).fingerprint() == spec.fingerprint()


@pytest.mark.parametrize(
    "kwargs",
    [{"num_classes": 0}, {"num_classes": 100000}, {"num_signers": 0}, {"clips_per_signer_per_class": 0},
     {"seed": -1}, {"difficulty": -0.5}, {"difficulty": float("nan")}, {"num_classes": 2.5},
     {"difficulty": "hard"}],
)
def test_bad_specs_are_data_errors(kwargs):
    with pytest.raises(DataError, match="synthetic spec"):
        SyntheticSpec(**kwargs)
