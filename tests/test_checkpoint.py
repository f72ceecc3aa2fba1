"""Checkpoint metadata is validated, not trusted; NaN weights are never written and explain themselves."""

import json

import pytest
import torch

from signflow_zoo.model import network as model_mod
from signflow_zoo.backends.artifacts import build_artifacts
from signflow_zoo.model.checkpoint import checkpoint_path
from signflow_zoo.model.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from signflow_zoo.common.errors import CheckpointError, ZooError
from signflow_zoo.model.network import MODEL_VERSION, SignTransformer
from signflow_zoo.model.zoo import SIZE_BOUNDS, get_model_config, parse_zoo


def _tiny(num_classes=3):
    torch.manual_seed(0)
    return SignTransformer(num_classes=num_classes, d_model=24, nhead=2, num_layers=1, dim_feedforward=32).eval()


@pytest.fixture
def good(tmp_path):
    """A valid checkpoint's blob, to be altered and written with torch.save (read back weights_only)."""
    path = save_checkpoint(tmp_path / "good.pt", _tiny(), {"preset": "tiny", "labels": ["a", "b", "c"]})
    return torch.load(path, weights_only=True)


def _write(tmp_path, blob, name="bad.pt"):
    path = tmp_path / name
    torch.save(blob, path)
    return path


def _with_meta(blob, change):
    meta = json.loads(blob["metadata"])
    change(meta)
    return {**blob, "metadata": json.dumps(meta)}


def _set_kwarg(key, value):
    return lambda meta: meta["model_kwargs"].__setitem__(key, value)


BAD_METADATA = [
    ("not an object (list)", lambda b: {**b, "metadata": json.dumps([1, 2])}, "must be a JSON object, got list"),
    ("not an object (string)", lambda b: {**b, "metadata": json.dumps("tiny")}, "must be a JSON object, got str"),
    ("heads not dividing", lambda b: _with_meta(b, _set_kwarg("nhead", 5)), "nhead=5 does not divide d_model=24"),
    ("zero width", lambda b: _with_meta(b, _set_kwarg("d_model", 0)), "'d_model' must be an integer in [3, 4096], got 0"),
    ("negative ff", lambda b: _with_meta(b, _set_kwarg("dim_feedforward", -32)), "'dim_feedforward' must be"),
    ("absurd width", lambda b: _with_meta(b, _set_kwarg("d_model", 10**9)), "got 1000000000"),
    ("absurd depth", lambda b: _with_meta(b, _set_kwarg("num_layers", 10**6)), "'num_layers' must be an integer in [1, 64]"),
    ("zero classes", lambda b: _with_meta(b, _set_kwarg("num_classes", 0)), "'num_classes' must be"),
    ("absurd classes", lambda b: _with_meta(b, _set_kwarg("num_classes", 10**8)), "[1, 100000]"),
    ("width as text", lambda b: _with_meta(b, _set_kwarg("d_model", "24")), "got str '24'"),
    ("width as bool", lambda b: _with_meta(b, _set_kwarg("num_layers", True)), "got bool True"),
    ("wrong input_dim", lambda b: _with_meta(b, _set_kwarg("input_dim", 225)), "input_dim is 225"),
    ("dropout of 2", lambda b: _with_meta(b, _set_kwarg("dropout", 2.0)), "'dropout' must be a number in [0, 1)"),
    ("unknown kwarg", lambda b: _with_meta(b, _set_kwarg("colour", "red")), "unknown key 'colour'"),
    ("no model_kwargs", lambda b: _with_meta(b, lambda m: m.pop("model_kwargs")), "has no model_kwargs"),
    ("kwargs not an object", lambda b: _with_meta(b, lambda m: m.__setitem__("model_kwargs", [24])),
     "model_kwargs must be a JSON object"),
    ("missing size", lambda b: _with_meta(b, lambda m: m["model_kwargs"].pop("nhead")), "lacks 'nhead'"),
    ("labels of another size", lambda b: _with_meta(b, lambda m: m.__setitem__("labels", ["a", "b"])),
     "list of 3 strings"),
    ("bad temperature", lambda b: _with_meta(b, lambda m: m.__setitem__("calibration", {"temperature": -1})),
     "temperature must be a finite number > 0"),
    ("thresholds of another size", lambda b: _with_meta(
        b, lambda m: m.__setitem__("calibration", {"temperature": 1.5, "class_thresholds": [0.5]})), "null or 3 numbers"),
    ("older architecture", lambda b: _with_meta(b, lambda m: m.pop("model_version")),
     f"architecture version 1, this signflow-zoo builds version {MODEL_VERSION}"),
]


@pytest.mark.parametrize("case,alter,words", BAD_METADATA, ids=[c[0] for c in BAD_METADATA])
def test_impossible_metadata_is_one_line_naming_file_and_problem(tmp_path, good, case, alter, words):
    path = _write(tmp_path, alter(good))
    for use in (read_checkpoint, load_checkpoint):
        with pytest.raises(CheckpointError) as err:
            use(path)
        msg = str(err.value)
        assert str(path) in msg and words in msg and "\n" not in msg


def test_cli_reports_a_crafted_checkpoint_without_traceback(tmp_path, good, capsys):
    from signflow_zoo.cli.commands import main

    path = _write(tmp_path, _with_meta(good, _set_kwarg("nhead", 7)))
    assert main(["export", str(path), "--output", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "bad.pt" in err and "nhead=7" in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("zoo_key,arg", [("d_model", "d_model"), ("heads", "nhead"), ("layers", "num_layers"),
                                         ("dim_ff", "dim_feedforward")])
def test_zoo_and_checkpoints_share_one_table_of_bounds(tmp_path, good, monkeypatch, zoo_key, arg):
    """Tighten one bound in the table: both the zoo file and the checkpoint reader now refuse the value."""
    value = {"d_model": 24, "heads": 2, "layers": 1, "dim_ff": 32}[zoo_key]
    monkeypatch.setitem(SIZE_BOUNDS, arg, (SIZE_BOUNDS[arg][0], value - 1))
    text = f"""[[entry]]
name = "x"
d_model = 24
heads = 2
layers = 1
dim_ff = 32
dropout = 0.1
feature_dropout = 0.1
pooling_dropout = 0.1
use_case = "x"
"""
    with pytest.raises(ZooError, match=f"key '{zoo_key}': must be an integer in"):
        parse_zoo(text, "x.toml")
    path = _write(tmp_path, good, "same.pt")
    with pytest.raises(CheckpointError, match=f"'{arg}' must be an integer in"):
        read_checkpoint(path)


def test_nan_weights_are_never_written(tmp_path):
    model = _tiny()
    with torch.no_grad():
        model.layers[0].ff1.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(tmp_path / "nan.pt", model, {"preset": "tiny"})
    assert "nan.pt" in str(err.value) and "layers.0.ff1.weight" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary
    with torch.no_grad():
        model.layers[0].ff1.weight[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match="NaN or inf"):
        save_checkpoint(tmp_path / "inf.pt", model, {"preset": "tiny"})
    assert list(tmp_path.iterdir()) == []


def test_an_old_nan_checkpoint_explains_itself_when_loaded_or_exported(tmp_path, good, capsys):
    from signflow_zoo.cli.commands import main

    good["state_dict"]["classifier.bias"][1] = float("nan")  # as written before saving refused NaN
    path = _write(tmp_path, good, "old-nan.pt")
    for use in (read_checkpoint, load_checkpoint, lambda p: build_artifacts(p, exporter="legacy", home=tmp_path)):
        with pytest.raises(CheckpointError) as err:
            use(path)
        msg = str(err.value)
        assert str(path) in msg and "NaN or inf" in msg and "classifier.bias" in msg and "diverged" in msg
        assert "\n" not in msg
    assert main(["export", str(path)]) == 2
    assert "old-nan.pt" in capsys.readouterr().err


def test_model_version_is_part_of_the_checkpoint_cache_key(monkeypatch, tmp_path):
    entry = get_model_config("lightweight")
    now = checkpoint_path(entry, 20, "data", {"lr": 1}, tmp_path)
    assert checkpoint_path(entry, 20, "data", {"lr": 1}, tmp_path) == now
    monkeypatch.setattr(model_mod, "MODEL_VERSION", MODEL_VERSION + 1)
    assert checkpoint_path(entry, 20, "data", {"lr": 1}, tmp_path) != now


def test_saved_checkpoints_record_the_model_version(tmp_path):
    _, meta = read_checkpoint(save_checkpoint(tmp_path / "m.pt", _tiny(), {"model_version": 0}))
    assert meta["model_version"] == MODEL_VERSION  # what the weights are, not what the caller claimed
