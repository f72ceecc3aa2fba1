"""`bench --model FILE`: a given checkpoint or ONNX file benched across backends like a zoo preset; and
validation and test splits above the size threshold memory-mapped from disk, the same values as in memory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_DATA
from signflow_zoo.cli.commands import main


def _stub_roofline(monkeypatch):
    from signflow_zoo.bench import roofline

    monkeypatch.setattr(roofline, "load_or_measure", lambda threads, **kw: {"ceilings": {"fp32": 1.0}})  # ~20 s saved


def _bench(*extra) -> list[str]:
    return ["bench", "--data", TINY_DATA, "--quick", "--min-time", "0.05", "--batch-sizes", "1", "--exporter", "legacy",
            "--no-progress", *extra]


def _tiny_files(home: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The session's trained tiny checkpoint and its legacy ONNX export, copied out of the zoo home as a user's files."""
    (ckpt,) = (home / "checkpoints").glob("tiny-*.pt")
    (onnx,) = (home / "artifacts").glob("*-legacy-*/model.onnx")
    pt, ox = tmp_path / "tiny.pt", tmp_path / "tiny.onnx"
    shutil.copyfile(ckpt, pt)
    shutil.copyfile(onnx, ox)
    return pt, ox


def _class_names(spec: str = TINY_DATA) -> list[str]:
    from signflow_zoo.data.loading import load_data

    return load_data(spec).class_names


def _strip_labels(src: Path, dst: Path) -> Path:
    """An ONNX file without the labels in its metadata (as a model exported elsewhere would be)."""
    import onnx

    model = onnx.load(str(src))
    keep = [p for p in model.metadata_props if p.key != "labels"]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    onnx.save(model, str(dst))
    return dst


def _one_line_error(capsys, alone: bool = True) -> str:
    """The error: one line, the last on stderr (``alone``: the only one; else progress lines may come before it)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and [ln for ln in lines if ": error: " in ln] == lines[-1:], err
    assert len(lines) == 1 or not alone, err
    return lines[-1]


# -- bench --model -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_checkpoint_file_gives_the_rows_of_its_preset(tiny_zoo_file, warm_home, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from signflow_zoo.model.export import file_sha256

    _stub_roofline(monkeypatch)
    pt, _ = _tiny_files(warm_home, tmp_path)
    backends = ["--backends", "torch-eager,onnx-cpu"]
    assert main(["--zoo", str(tiny_zoo_file), *_bench("--preset", "tiny", "--no-train", "--no-track", "--json",
                                                      str(tmp_path / "preset.json"), *backends)]) == 0
    assert main(_bench("--model", str(pt), "--json", str(tmp_path / "model.json"), *backends)) == 0
    out = capsys.readouterr().out
    preset = {r["backend"]: r for r in json.loads((tmp_path / "preset.json").read_text())["records"]}
    doc = json.loads((tmp_path / "model.json").read_text())
    model = {r["backend"]: r for r in doc["records"]}
    assert set(model) == set(preset) == {"torch-eager", "onnx-cpu"}
    sha = file_sha256(pt)
    assert doc["config"]["model"] == str(pt) and doc["config"]["model_sha256"] == sha
    assert doc["config"]["presets"] is None and doc["config"]["model_reference"] == "torch-eager"
    for name, rec in model.items():
        ref = preset[name]
        assert rec["status"] == "ok" == ref["status"], rec["reason"]
        assert rec["preset"] == "model:tiny" and set(rec) == set(ref)  # the same record fields
        assert set(ref["params"]) <= set(rec["params"])
        assert rec["params"]["model_sha256"] == sha and rec["params"]["model_kind"] == "torch"
        assert rec["params"]["model_preset"] == "tiny" and rec["params"]["reference"].startswith("torch-eager")
        # the same model on the same data: the same artifact, parity and accuracy
        for key in ("artifact_sha256", "num_params", "gflops", "d_model", "heads", "layers", "dim_ff", "test_size",
                    "num_classes", "data", "data_split", "exporter"):
            assert rec["params"][key] == ref["params"][key], key
        assert rec["parity"]["ok"] and rec["parity"]["max_abs"] == pytest.approx(ref["parity"]["max_abs"], abs=1e-6)
        assert rec["accuracy"]["top1"] == ref["accuracy"]["top1"] and rec["accuracy"]["n"] == ref["accuracy"]["n"]
        assert rec["accuracy"]["agreement_top1"] == ref["accuracy"]["agreement_top1"]
        assert set(rec["latency"]) == set(ref["latency"]) == {"1"} and rec["latency"]["1"]["p50_ms"] > 0
        assert set(rec["latency"]["1"]) == set(ref["latency"]["1"])
        assert rec["stream"] and set(rec["stream"]) == set(ref["stream"])
        assert rec["training"] == ref["training"] and rec["calibration"] == ref["calibration"]
    assert model["onnx-cpu"]["speedup"]["1"]["reference"] == "torch-eager"
    assert "model:tiny" in out
    # tracked like a preset: one child run per backend, under the file's preset name
    client = MlflowClient()
    parent = client.get_run(doc["tracking"]["parent_run_id"])
    assert parent.data.params["config.model_sha256"] == sha
    exp = client.get_experiment_by_name("signflow-zoo")
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.tags["preset"] for r in children) == ["model:tiny", "model:tiny"]
    assert {r.data.params.get("model_sha256") for r in children} == {sha}  # each row names the file it measured
    assert any(p.endswith("latency-model-tiny.png") for p in doc["outputs"])


@pytest.mark.slow
def test_an_onnx_file_with_a_labels_file_on_memory_mapped_data(warm_home, tmp_path, monkeypatch, capsys):
    """An ONNX file without labels, given --labels, benched on a data set on disk whose test split is memory-mapped:
    onnx-cpu is the reference, torch backends are unavailable (never replaced), the accuracy is the model's on
    the test clips as they are in memory."""
    import onnxruntime as ort

    from signflow_zoo.data import loading
    from signflow_zoo.data.loading import load_data, parse_synthetic_spec, write_signflow_fixture
    from signflow_zoo.data.synthetic import generate
    from signflow_zoo.model.metrics import classification_report

    _stub_roofline(monkeypatch)
    _, onnx_file = _tiny_files(warm_home, tmp_path)
    bare = _strip_labels(onnx_file, tmp_path / "bare.onnx")
    names = _class_names()
    clips, gen_names = generate(parse_synthetic_spec(TINY_DATA))
    root = write_signflow_fixture(tmp_path / "rec", clips, gen_names)
    spec = f"signflow:{root}"
    held = load_data(spec, in_memory=True)  # the reference: every split in memory
    assert sorted(held.class_names) == sorted(names)

    # without labels in the file or on the command line: one line saying how to give them
    assert main(["bench", "--model", str(bare), "--data", spec, "--no-track"]) == 2
    assert "--labels FILE" in _one_line_error(capsys)

    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(names) + "\n")
    mapped = []
    real = loading.mapped_dataset
    monkeypatch.setattr(loading, "mapped_dataset", lambda *a, **kw: mapped.append(real(*a, **kw)) or mapped[-1])
    monkeypatch.setattr(loading, "IN_MEMORY_LIMIT_BYTES", 1)  # every split on disk
    assert main(["bench", "--model", str(bare), "--labels", str(labels), "--data", spec, "--quick", "--min-time", "0.05",
                 "--batch-sizes", "1", "--no-progress", "--no-track", "--no-stream", "--json", str(tmp_path / "r.json"),
                 "--backends", "torch-eager,onnx-cpu,onnx-optimized"]) == 0
    assert len(mapped) == 2 and all(isinstance(ds.features, np.memmap) for ds in mapped)  # val and test
    doc = json.loads((tmp_path / "r.json").read_text())
    recs = {r["backend"]: r for r in doc["records"]}
    assert doc["config"]["model_reference"] == "onnx-cpu" and doc["config"]["labels"] == str(labels)
    torch_row = recs["torch-eager"]
    assert torch_row["status"] == "unavailable" and "needs a PyTorch checkpoint" in torch_row["reason"]
    assert "bare.onnx is ONNX" in torch_row["reason"] and torch_row["latency"] == {}
    cpu, opt = recs["onnx-cpu"], recs["onnx-optimized"]
    for rec in (cpu, opt):
        assert rec["status"] == "ok", rec["reason"]
        assert rec["preset"] == "model:bare" and rec["params"]["model_kind"] == "onnx"
        assert rec["params"]["reference"].startswith("onnx-cpu: ONNX Runtime's CPU provider")
        assert rec["params"]["labels_file"] == str(labels) and rec["parity"]["ok"]
        assert rec["latency"]["1"]["p50_ms"] > 0 and rec["params"]["num_params"] > 0
    assert cpu["parity"]["max_abs"] < 1e-5 and cpu["accuracy"]["agreement_top1"] == 1.0  # it is the reference
    assert cpu["params"]["artifact_sha256"] == cpu["params"]["model_sha256"]  # the file itself
    assert opt["params"]["artifact_sha256"] != cpu["params"]["artifact_sha256"]  # derived, as for a preset
    assert opt["speedup"] == {}  # speedups are over torch-eager, which cannot run an ONNX file
    # the accuracy is the file's on the held-out clips, read from the memory-mapped split
    test = held.in_label_order(names).test
    sess = ort.InferenceSession(str(bare), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"features": test.features, "mask": test.mask})[0]
    rep = classification_report(logits, test.labels, len(names))
    assert cpu["accuracy"]["n"] == len(test) and cpu["accuracy"]["top1"] == pytest.approx(rep["top1"])
    assert cpu["accuracy"]["macro_f1"] == pytest.approx(rep["macro_f1"])


def test_model_and_preset_together_is_a_usage_error(tmp_path, capsys, isolated_home):
    model = tmp_path / "m.pt"
    model.write_bytes(b"")
    assert main(["bench", "--model", str(model), "--preset", "tiny", "--no-track"]) == 2
    err = _one_line_error(capsys)
    assert "--model" in err and "--preset" in err and "not allowed" in err
    assert main(["bench", "--labels", str(model), "--no-track"]) == 2
    assert "--labels goes with --model" in _one_line_error(capsys)
    assert main(["bench", "--model", str(model), "--retrain", "--no-track"]) == 2
    assert "--retrain does not apply to --model" in _one_line_error(capsys)
    assert main(["bench", "--model", str(tmp_path / "missing.onnx"), "--no-track"]) == 2
    assert "model file not found" in _one_line_error(capsys)
    (tmp_path / "m.h5").write_bytes(b"x")
    assert main(["bench", "--model", str(tmp_path / "m.h5"), "--no-track"]) == 2
    assert "expected a signflow-zoo checkpoint (.pt) or an ONNX file" in _one_line_error(capsys)
    assert not (isolated_home / "results").exists()


def test_labels_that_are_not_the_data_classes_are_one_line_naming_both(warm_home, tmp_path, capsys):
    _, onnx_file = _tiny_files(warm_home, tmp_path)
    names = _class_names()
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("\n".join([*names[:-1], "NOT_A_SIGN"]))
    assert main(["bench", "--model", str(onnx_file), "--labels", str(wrong), "--data", TINY_DATA, "--no-track"]) == 2
    err = _one_line_error(capsys, alone=False)  # after the "data: ..." progress line
    assert "its labels are not the classes of --data" in err and "only in the model: 'NOT_A_SIGN'" in err
    assert f"only in the data: {names[-1]!r}" in err and repr(names[0]) in err
    too_few = tmp_path / "few.txt"
    too_few.write_text("a\nb\n")
    assert main(["bench", "--model", str(onnx_file), "--labels", str(too_few), "--no-track"]) == 2
    assert f"2 labels ({too_few}) for a model with {len(names)} outputs" in _one_line_error(capsys)
    assert not (warm_home / "results").exists() or not list((warm_home / "results").glob("bench-*.json"))


def test_the_data_in_the_model_label_order_keeps_the_clips(tmp_path):
    from signflow_zoo.common.errors import DataError
    from signflow_zoo.data.loading import load_data

    splits = load_data(TINY_DATA)
    order = list(reversed(splits.class_names))
    moved = splits.in_label_order(order)
    assert moved.class_names == order and moved.fingerprint == splits.fingerprint
    for part in ("train", "val", "test"):
        a, b = getattr(splits, part), getattr(moved, part)
        assert b.features is a.features  # shared, not copied
        assert [order[i] for i in b.labels] == [splits.class_names[i] for i in a.labels]
    assert splits.in_label_order(splits.class_names) is splits
    with pytest.raises(DataError, match="not a reordering"):
        splits.in_label_order(order[:-1] + ["other"])


# -- validation and test splits on disk --------------------------------------------------------------------
@pytest.fixture
def recordings(tmp_path):
    from signflow_zoo.data.loading import parse_synthetic_spec, write_signflow_fixture
    from signflow_zoo.data.synthetic import generate

    clips, names = generate(parse_synthetic_spec(TINY_DATA))
    return f"signflow:{write_signflow_fixture(tmp_path / 'rec', clips, names)}"


def test_big_validation_and_test_splits_are_memory_mapped_with_the_same_values(recordings, monkeypatch, tmp_path,
                                                                              isolated_home):
    from signflow_zoo.data import loading
    from signflow_zoo.data.loading import ClipFileDataset, SignDataset, load_data

    memory = load_data(recordings)
    assert not any(isinstance(getattr(memory, p).features, np.memmap) for p in ("val", "test"))
    n_val, n_test = len(memory.val), len(memory.test)
    # a limit between the two sizes: only the bigger split goes to disk, each split judged by its own size
    small, big = sorted((("val", n_val), ("test", n_test)), key=lambda kv: kv[1])
    monkeypatch.setattr(loading, "IN_MEMORY_LIMIT_BYTES", small[1] * loading._CLIP_BYTES)
    if small[1] < big[1]:
        one = load_data(recordings)
        assert isinstance(getattr(one, big[0]).features, np.memmap)
        assert not isinstance(getattr(one, small[0]).features, np.memmap)
    monkeypatch.setattr("signflow_zoo.data.datasets.SPILL_CHUNK", 3)  # several chunks per split
    monkeypatch.setattr(loading, "IN_MEMORY_LIMIT_BYTES", 1)
    spill = tmp_path / "spill"
    disk = load_data(recordings, spill_dir=spill)
    assert isinstance(disk.train, ClipFileDataset)
    assert disk.fingerprint == memory.fingerprint and disk.split == memory.split
    for part in ("val", "test"):
        a, b = getattr(memory, part), getattr(disk, part)
        assert isinstance(b, SignDataset) and b.memory_mapped and not a.memory_mapped
        assert isinstance(b.features, np.memmap) and isinstance(b.mask, np.memmap)
        assert b.features.base is not None and b.features._mmap is not None  # a view of the file, not a loaded copy
        np.testing.assert_array_equal(b.features, a.features)  # bit for bit
        np.testing.assert_array_equal(b.mask, a.mask)
        assert b.labels.tolist() == a.labels.tolist() and b.signers == a.signers
        assert b.fingerprint() == a.fingerprint()
        for x, y in zip(b[[2, 0]], a[[2, 0]]):
            np.testing.assert_array_equal(x, y)
        assert b.features.flags.writeable  # copy-on-write: writable like an array in memory
    assert [p.name for p in spill.iterdir()] == []  # unnamed files: nothing left behind
    assert isinstance(load_data(recordings, in_memory=True).test.features, np.ndarray)
    assert not isinstance(load_data(recordings, in_memory=True).test.features, np.memmap)


def test_training_validates_on_a_memory_mapped_split_as_in_memory(recordings, monkeypatch):
    import torch

    from signflow_zoo.data import loading
    from signflow_zoo.data.loading import load_data
    from signflow_zoo.model.network import SignTransformer
    from signflow_zoo.model.training import SignTrainer, TrainingConfig

    memory = load_data(recordings)
    monkeypatch.setattr(loading, "IN_MEMORY_LIMIT_BYTES", 1)
    disk = load_data(recordings, in_memory=None)
    assert disk.val.memory_mapped and disk.test.memory_mapped

    def fit(splits):
        torch.manual_seed(0)
        model = SignTransformer(num_classes=splits.num_classes, d_model=24, nhead=2, num_layers=1, dim_feedforward=48)
        trainer = SignTrainer(model, TrainingConfig(num_epochs=2, batch_size=8, seed=0, progress=False,
                                                    use_mlflow=False, amp="off", num_workers=0),
                              class_names=splits.class_names)
        result = trainer.fit(memory.train, splits.val)  # the same training data: only validation differs
        return trainer, result

    t_mem, r_mem = fit(memory)
    t_disk, r_disk = fit(disk)
    for key in ("val_loss", "val_accuracy", "best_val_loss", "epochs_run"):
        assert r_disk[key] == r_mem[key], key
    assert [h["val_loss"] for h in t_disk.history] == [h["val_loss"] for h in t_mem.history]
    np.testing.assert_array_equal(t_disk.predict_logits(disk.test), t_mem.predict_logits(memory.test))
