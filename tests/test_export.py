import pickle

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from signflow_zoo.backends.artifacts import artifacts_from_model_file, build_artifacts
from signflow_zoo.model.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from signflow_zoo.common.errors import CheckpointError, ModelFileError
from signflow_zoo.data.features import FEATURE_DIM
from signflow_zoo.model.export import export_to_onnx, optimize_onnx_model, read_metadata, verify_onnx
from signflow_zoo.model.network import SignTransformer, build_model
from signflow_zoo.model.zoo import get_model_config, list_model_configs


@pytest.fixture(scope="module")
def lightweight_export(tmp_path_factory):
    """The real lightweight preset through the default (dynamo) exporter, verified at 9 shapes."""
    torch.manual_seed(0)
    model = build_model(get_model_config("lightweight"), num_classes=20).eval()
    path = tmp_path_factory.mktemp("export") / "lightweight.onnx"
    info = export_to_onnx(model, path, metadata={"preset": "lightweight", "labels": [f"s{i}" for i in range(20)]})
    return model, path, info


@pytest.mark.slow  # over 2 s: out of the fast loop (-m 'not slow'), still in CI
def test_dynamic_batch_and_frames_verified_against_pytorch(lightweight_export):
    _, _, info = lightweight_export
    shapes = {(v["batch"], v["frames"]) for v in info.verified}
    assert shapes == {(b, t) for b in (1, 3, 8) for t in (16, 64, 128)}
    assert info.max_abs_error < 1e-4 and info.exporter == "dynamo" and info.opset == 18
    assert len(info.sha256) == 64


def test_exported_model_runs_at_unseen_shapes(lightweight_export):
    model, path, _ = lightweight_export
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, t in ((16, 200), (2, 9)):
        x = torch.randn(b, t, FEATURE_DIM)
        m = torch.rand(b, t) > 0.3
        with torch.no_grad():
            ref = model(x, m).numpy()
        out = sess.run(None, {"features": x.numpy(), "mask": m.numpy()})[0]
        assert np.abs(out - ref).max() < 1e-4


def test_metadata_lets_a_model_file_be_served_alone(lightweight_export):
    _, path, _ = lightweight_export
    meta = read_metadata(path)
    assert meta["preset"] == "lightweight" and meta["labels"][3] == "s3"
    assert meta["exporter"] == "dynamo" and "469" in meta["input_layout"]


def test_legacy_exporter_also_keeps_axes_dynamic(tmp_path):
    model = SignTransformer(num_classes=5, d_model=24, nhead=2, num_layers=1, dim_feedforward=32).eval()
    info = export_to_onnx(model, tmp_path / "m.onnx", exporter="legacy")
    assert info.exporter == "legacy" and len(info.verified) == 9 and info.max_abs_error < 1e-4


@pytest.mark.parametrize("preset", list(list_model_configs()))
def test_every_preset_structure_exports_with_dynamic_axes_and_matches_pytorch(preset, tmp_path):
    """Each zoo entry's layers, heads and dropouts at a tiny width (d_model = heads * 8) through the legacy
    exporter, then run by ONNX Runtime at batch sizes and frame counts other than the export example's."""
    entry = get_model_config(preset)
    kw = entry.to_model_kwargs(num_classes=7)
    kw.update(d_model=entry.heads * 8, dim_feedforward=entry.heads * 16)
    torch.manual_seed(0)
    model = SignTransformer(**kw).eval()
    path = tmp_path / f"{preset}.onnx"
    export_to_onnx(model, path, exporter="legacy", verify=False)  # example: batch 2, 64 frames
    checked = verify_onnx(model, path, batches=(1, 3, 5), frames=(2, 9, 40, 150), atol=1e-4)
    assert len(checked) == 12 and max(c["max_abs_error"] for c in checked) < 1e-4
    assert [d.dim_param for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[:2]] == ["batch",
                                                                                                         "frames"]


def test_optimize_reports_nodes_and_fusions(lightweight_export, tmp_path):
    _, path, _ = lightweight_export
    rep = optimize_onnx_model(path, tmp_path / "opt.onnx", num_heads=4, hidden_size=128)
    assert rep.nodes_after < rep.nodes_before  # the graph really changed
    assert rep.fusions and rep.note.startswith("fused:")
    assert read_metadata(tmp_path / "opt.onnx")["optimized"] is True
    # and it computes the same thing
    x = np.random.default_rng(0).standard_normal((2, 64, FEATURE_DIM)).astype(np.float32)
    m = np.ones((2, 64), bool)
    a = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"features": x, "mask": m})[0]
    b = ort.InferenceSession(str(tmp_path / "opt.onnx"), providers=["CPUExecutionProvider"]).run(None, {"features": x, "mask": m})[0]
    assert np.abs(a - b).max() < 1e-4


def test_optimize_says_plainly_when_nothing_fuses(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "relu.onnx")
    rep = optimize_onnx_model(tmp_path / "relu.onnx", tmp_path / "relu.opt.onnx", use_transformer_optimizer=False)
    assert rep.fusions == {} and rep.note.startswith("no fusion found")


@pytest.mark.parametrize("content", [b"", b"not an onnx model at all", b"\x08\x07\x12\x04junk" * 10])
def test_corrupt_onnx_file_is_a_clear_error(tmp_path, content):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    with pytest.raises(ModelFileError, match="bad.onnx"):
        read_metadata(bad)
    with pytest.raises(ModelFileError, match="bad.onnx"):
        optimize_onnx_model(bad, tmp_path / "x.onnx")


def test_truncated_onnx_file_is_a_clear_error(lightweight_export, tmp_path):
    _, path, _ = lightweight_export
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="cut.onnx"):
        artifacts_from_model_file(cut)


def _tiny():
    torch.manual_seed(0)
    return SignTransformer(num_classes=3, d_model=24, nhead=2, num_layers=1, dim_feedforward=32).eval()


def test_checkpoint_round_trip(tmp_path):
    model = _tiny()
    save_checkpoint(tmp_path / "m.pt", model, {"preset": "tiny", "labels": ["a", "b", "c"]})
    loaded, meta = load_checkpoint(tmp_path / "m.pt")
    x = torch.randn(1, 10, FEATURE_DIM)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert meta["labels"] == ["a", "b", "c"] and meta["format"].startswith("signflow-zoo-checkpoint")
    with pytest.raises(CheckpointError, match="preset='tiny', not 'large'|preset"):
        load_checkpoint(tmp_path / "m.pt", expect={"preset": "large"})


def test_truncated_and_foreign_checkpoints_are_clear_errors(tmp_path):
    save_checkpoint(tmp_path / "m.pt", _tiny(), {"preset": "tiny"})
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a signflow-zoo checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


class _Evil:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.write_text, (pathlib.Path("PWNED"), "code ran"))


def test_loading_never_executes_code_from_the_file(tmp_path):
    torch.save({"state_dict": {}, "metadata": "{}", "payload": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()
    # a plain pickle pretending to be a checkpoint is refused too
    (tmp_path / "pickle.pt").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "pickle.pt")
    assert not (tmp_path / "PWNED").exists()


def test_mismatched_weights_are_a_clear_error(tmp_path):
    model = _tiny()
    save_checkpoint(tmp_path / "m.pt", model, {"preset": "tiny"})
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    blob["metadata"] = blob["metadata"].replace('"d_model": 24', '"d_model": 48').replace('"nhead": 2', '"nhead": 4')
    torch.save(blob, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path / "wrong.pt")


def test_build_artifacts_caches_and_detects_tampering(tmp_path):
    save_checkpoint(tmp_path / "m.pt", _tiny(), {"preset": "tiny", "labels": ["a", "b", "c"]})
    logs = []
    arts = build_artifacts(tmp_path / "m.pt", exporter="legacy", home=tmp_path / "home", log=logs.append)
    assert arts.onnx.is_file() and arts.onnx_optimized.is_file() and arts.labels == ["a", "b", "c"]
    assert set(arts.hashes) == {"torch", "onnx", "onnx-optimized"}
    n = len(logs)
    again = build_artifacts(tmp_path / "m.pt", exporter="legacy", home=tmp_path / "home", log=logs.append)
    assert len(logs) == n and again.hashes == arts.hashes  # reused, not exported again
    arts.onnx.write_bytes(arts.onnx.read_bytes() + b"x")
    with pytest.raises(ModelFileError, match="does not match its recorded hash"):
        build_artifacts(tmp_path / "m.pt", exporter="legacy", home=tmp_path / "home", log=logs.append)
