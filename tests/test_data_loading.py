"""Training through a DataLoader: the same batches (and so the same training) as the slicing loop it
replaced, in memory or from disk with workers; a short fit on every on-disk format."""

import numpy as np
import pytest
import torch

from signflow_zoo.data.augment import augment_batch
from signflow_zoo.data.batches import EpochBatches, batch_loader, default_workers
from signflow_zoo.data.loading import (
    ClipFileDataset,
    SignDataset,
    load_data,
    write_lsfb_fixture,
    write_pose_fixture,
    write_signflow_fixture,
)
from signflow_zoo.model.network import SignTransformer
from signflow_zoo.data.synthetic import SyntheticSpec, generate
from signflow_zoo.model.training import SignTrainer, TrainingConfig


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    clips, names = generate(SyntheticSpec(num_classes=3, num_signers=6, clips_per_signer_per_class=2, seed=4))
    root = write_signflow_fixture(tmp_path_factory.mktemp("rec") / "rec", clips, names)
    return {"root": root, "clips": clips, "names": names, "memory": load_data(f"signflow:{root}", in_memory=True),
            "disk": load_data(f"signflow:{root}", in_memory=False)}


def _tiny_model(n):
    torch.manual_seed(0)
    return SignTransformer(num_classes=n, d_model=24, nhead=2, num_layers=1, dim_feedforward=48)


def _slicing_loop(ds: SignDataset, batch_size: int, epochs: int, seed: int):
    """The training loop's batches before it went through a DataLoader (kept here as the reference)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(epochs):
        order = rng.permutation(len(ds))
        for b in range(int(np.ceil(len(ds) / batch_size))):
            idx = order[b * batch_size:(b + 1) * batch_size]
            x = torch.from_numpy(ds.features[idx])
            m = torch.from_numpy(ds.mask[idx])
            y = torch.from_numpy(ds.labels[idx].astype(np.int64))
            x, m = augment_batch(x, m, rng)
            out.append((x, m, y))
    return out


def _loader_loop(ds, batch_size: int, epochs: int, seed: int, workers: int):
    rng = np.random.default_rng(seed)
    loader = batch_loader(ds, batch_size, rng, num_workers=workers)
    out = []
    for _ in range(epochs):
        for x, m, y in iter(loader):
            x, m = augment_batch(x, m, rng)
            out.append((x, m, y))
    return out


@pytest.mark.parametrize("where, workers", [("memory", 0), ("disk", 0), ("disk", 2)])
@pytest.mark.slow  # over 2 s: out of the fast loop (-m 'not slow'), still in CI
def test_loader_gives_the_batches_of_the_slicing_loop(recordings, where, workers):
    expected = _slicing_loop(recordings["memory"].train, 5, epochs=2, seed=3)
    got = _loader_loop(recordings[where].train, 5, epochs=2, seed=3, workers=workers)
    assert len(got) == len(expected) == 2 * int(np.ceil(len(recordings["memory"].train) / 5))
    for a, b in zip(expected, got):
        for ta, tb in zip(a, b):
            assert ta.dtype == tb.dtype and torch.equal(ta, tb)


def test_epoch_batches_cover_every_item_once_per_pass():
    sampler = EpochBatches(11, 4, np.random.default_rng(0))
    first, second = list(sampler), list(sampler)
    assert len(sampler) == 3 and [len(b) for b in first] == [4, 4, 3]
    assert sorted(np.concatenate(first)) == list(range(11)) == sorted(np.concatenate(second))
    assert not np.array_equal(np.concatenate(first), np.concatenate(second))  # a fresh shuffle per pass
    assert [b.tolist() for b in EpochBatches(5, 2)] == [[0, 1], [2, 3], [4]]


def test_workers_by_default_only_for_data_on_disk(recordings, monkeypatch):
    import os

    for cores, workers in ((1, 1), (2, 1), (3, 2), (8, 4), (16, 4)):
        monkeypatch.setattr(os, "cpu_count", lambda: cores)
        assert default_workers(recordings["memory"].train) == 0
        assert default_workers(recordings["disk"].train) == workers
    assert TrainingConfig(num_workers=3).cache_key() == TrainingConfig().cache_key()  # speed, not weights


def _fit(train, val, **kw):
    trainer = SignTrainer(_tiny_model(len(val.class_names)),
                          TrainingConfig(num_epochs=2, progress=False, use_mlflow=False, **kw), val.class_names)
    trainer.fit(train, val)
    return trainer


@pytest.mark.slow  # over 2 s: out of the fast loop (-m 'not slow'), still in CI
def test_fit_from_disk_with_workers_is_the_fit_in_memory(recordings):
    memory, disk = recordings["memory"], recordings["disk"]
    reference = _fit(memory.train, memory.val)
    for workers in (None, 0, 2):
        other = _fit(disk.train, disk.val, num_workers=workers)
        assert other.history == [{**h, "epoch_seconds": o["epoch_seconds"]} for h, o in zip(reference.history,
                                                                                             other.history)]
        state, ref = other.model.state_dict(), reference.model.state_dict()
        assert all(torch.equal(state[k], ref[k]) for k in ref)
    np.testing.assert_array_equal(reference.predict_logits(disk.train), reference.predict_logits(memory.train))


@pytest.mark.parametrize("fmt", ["lsfb", "signflow-slugs", "pose"])
@pytest.mark.slow  # over 2 s: out of the fast loop (-m 'not slow'), still in CI
def test_short_fit_on_every_format(tmp_path, fmt):
    if fmt == "pose":
        pytest.importorskip("pose_format", reason="pose-format is an optional extra: pip install '.[pose]'")
    clips, names = generate(SyntheticSpec(num_classes=3, num_signers=6, clips_per_signer_per_class=2, seed=8))
    folder = tmp_path / fmt
    if fmt == "lsfb":
        write_lsfb_fixture(folder, clips, names)
    elif fmt == "pose":
        write_pose_fixture(folder, clips, names)
    else:
        write_signflow_fixture(folder, clips, names, labels_csv=False)
    spec = f"{fmt.split('-')[0]}:{folder}"
    for in_memory in (True, False):
        splits = load_data(spec, in_memory=in_memory)
        assert isinstance(splits.train, SignDataset if in_memory else ClipFileDataset)
        assert splits.split.startswith("lsfb-official" if fmt == "lsfb" else "signer-split")
        trainer = _fit(splits.train, splits.val)
        assert len(trainer.history) == 2 and np.isfinite(trainer.history[-1]["train_loss"])
        report = trainer.evaluate(splits.test)
        assert report["confusion"].sum() == len(splits.test) and 0 <= report["top1"] <= 1


@pytest.mark.parametrize("workers", [0, 1])
def test_a_file_broken_after_loading_is_a_one_line_error(tmp_path, recordings, workers):
    from signflow_zoo.common.errors import DataError

    clips, names = recordings["clips"], recordings["names"]
    root = write_signflow_fixture(tmp_path / "rec", clips, names)
    disk = load_data(f"signflow:{root}", in_memory=False)
    broken = disk.train.refs[0].files[0]
    broken.write_bytes(b"changed since")
    with pytest.raises(DataError) as info:
        for _ in batch_loader(disk.train, 4, np.random.default_rng(0), num_workers=workers):
            pass
    message = str(info.value)
    assert message.startswith(f"{broken}: not a valid .npy array file") and "\n" not in message
    assert "Traceback" not in message and ("DataLoader worker" in message) == (workers > 0)
