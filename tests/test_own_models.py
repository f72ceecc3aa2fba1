"""Users' own models: an ONNX file exported the original SignFlow way (one input, no metadata) served with the
labels given (``labels=``, ``--labels``), labels files, given calibration, and ``import-original``: a checkpoint
in the original's layout converted into a signflow-zoo checkpoint whose logits are the original forward's.

The original's layout (parameter names and shapes) and its forward are written here from the structure the
original SignFlow defines (its ``SignTransformer``: ``nn.TransformerEncoder`` layers, a relative-bias table
indexed by query - key, CLS row and column without bias), not copied from its source; the forward below is
functional and independent of both ``SignTransformer`` and the converter's own reference."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from signflow_zoo.cli import main
from signflow_zoo.common.errors import CheckpointError, ModelFileError
from signflow_zoo.data.features import FEATURE_DIM, prepare_clip
from signflow_zoo.model.labels import LabelsError, read_labels
from signflow_zoo.serve.modelfile import CalibrationError
from signflow_zoo.serve.pipeline import SignFlowInferencePipeline

M = 64  # the original's relative_bias_max_distance
SIZES = {"d": 24, "heads": 2, "layers": 2, "ff": 48, "classes": 4}
LABELS = ["hello", "thanks", "[NONE]", "yes"]


# -- the original's layout and forward, written here ------------------------------------------------
def original_shapes(d=24, layers=2, ff=48, classes=4, features=FEATURE_DIM, pe_len=5000):
    base = d // 3
    shapes = {"input_norm.weight": (features,), "input_norm.bias": (features,),
              "embedding.0.weight": (d, features), "embedding.0.bias": (d,)}
    for i, (c, k) in enumerate(((base, 3), (base, 5), (d - 2 * base, 7))):
        shapes[f"temporal_stem.{i}.0.weight"] = (c, features, k)
        shapes[f"temporal_stem.{i}.0.bias"] = (c,)
    shapes |= {"stem_fusion.0.weight": (d, 2 * d), "stem_fusion.0.bias": (d,), "positional_encoding.pe": (1, pe_len, d),
               "cls_token": (1, 1, d), "relative_attention_bias": (2 * M + 1,)}
    for n in range(layers):
        p = f"encoder.layers.{n}."
        shapes |= {p + "self_attn.in_proj_weight": (3 * d, d), p + "self_attn.in_proj_bias": (3 * d,),
                   p + "self_attn.out_proj.weight": (d, d), p + "self_attn.out_proj.bias": (d,),
                   p + "linear1.weight": (ff, d), p + "linear1.bias": (ff,), p + "linear2.weight": (d, ff),
                   p + "linear2.bias": (d,), p + "norm1.weight": (d,), p + "norm1.bias": (d,),
                   p + "norm2.weight": (d,), p + "norm2.bias": (d,)}
    shapes |= {"output_norm.weight": (d,), "output_norm.bias": (d,), "pooling_gate.0.weight": (d, 2 * d),
               "pooling_gate.0.bias": (d,), "pooling_gate.2.weight": (1, d), "pooling_gate.2.bias": (1,),
               "classifier.weight": (classes, d), "classifier.bias": (classes,), "metric_projection.weight": (d, d),
               "metric_projection.bias": (d,), "class_prototypes": (classes, d), "cosine_logit_scale": ()}
    return shapes


def original_state(seed=0, d=24, layers=2, ff=48, classes=4):
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in original_shapes(d, layers, ff, classes).items():
        if name == "positional_encoding.pe":  # the sinusoid table: even columns sin, odd columns cos
            pos = torch.arange(shape[1], dtype=torch.float32)[:, None]
            freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
            pe = torch.zeros(shape[1], d)
            pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
            state[name] = pe[None]
        elif name == "cosine_logit_scale":
            state[name] = torch.tensor(10.0)
        elif "norm" in name and name.endswith("weight"):
            state[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name == "relative_attention_bias":  # large and lopsided, so that its orientation shows in the logits
            state[name] = torch.randn(shape, generator=gen) + torch.linspace(-2.0, 2.0, shape[0])
        else:
            state[name] = 0.15 * torch.randn(shape, generator=gen)
    return state


def original_logits(sd, x, heads):
    """The original forward on frames that are all valid, functional: attention written out, bias by query - key."""
    def ln(h, p):
        return F.layer_norm(h, h.shape[-1:], sd[p + ".weight"], sd[p + ".bias"])

    def lin(h, p):
        return F.linear(h, sd[p + ".weight"], sd[p + ".bias"])

    b, t, _ = x.shape
    h = F.gelu(lin(ln(x, "input_norm"), "embedding.0"))
    stem = torch.cat([F.gelu(F.conv1d(x.transpose(1, 2), sd[f"temporal_stem.{i}.0.weight"],
                                      sd[f"temporal_stem.{i}.0.bias"], padding=k // 2))
                      for i, k in enumerate((3, 5, 7))], dim=1).transpose(1, 2)
    h = F.gelu(lin(torch.cat([h, stem], -1), "stem_fusion.0"))
    h = torch.cat([sd["cls_token"].expand(b, -1, -1), h], dim=1) + sd["positional_encoding.pe"][:, : t + 1]
    seq = h[:, 1:]
    h = torch.cat([h[:, :1], 0.9 * seq + 0.1 * F.avg_pool1d(seq.transpose(1, 2), 3, 1, 1).transpose(1, 2)], dim=1)
    n, d = t + 1, h.shape[-1]
    i = torch.arange(n)
    rel = sd["relative_attention_bias"][(i[:, None] - i[None, :]).clamp(-M, M) + M].clone()
    rel[0, :], rel[:, 0] = 0.0, 0.0
    hd = d // heads
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers."))
    for layer in range(layers):
        p = f"encoder.layers.{layer}."
        q, k, v = F.linear(ln(h, p + "norm1"), sd[p + "self_attn.in_proj_weight"],
                           sd[p + "self_attn.in_proj_bias"]).chunk(3, dim=-1)
        q, k, v = (z.reshape(b, n, heads, hd).transpose(1, 2) for z in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + rel, dim=-1) @ v
        h = h + lin(att.transpose(1, 2).reshape(b, n, d), p + "self_attn.out_proj")
        h = h + lin(F.gelu(lin(ln(h, p + "norm2"), p + "linear1")), p + "linear2")
    h = ln(h, "output_norm")
    cls, mean = h[:, 0], h[:, 1:].mean(dim=1)
    g = torch.sigmoid(lin(F.gelu(lin(torch.cat([cls, mean], -1), "pooling_gate.0")), "pooling_gate.2"))
    z = g * cls + (1.0 - g) * mean
    cos = F.normalize(lin(z, "metric_projection"), dim=-1) @ F.normalize(sd["class_prototypes"], dim=-1).t()
    return 0.65 * lin(z, "classifier") + 0.35 * sd["cosine_logit_scale"].clamp(1.0, 50.0) * cos


def save_as_original(path, state, heads=2, class_labels=(), metadata=None, **overrides):
    """What the original's SignTrainer.save_model writes: the state dict and the architecture beside it."""
    d = state["cls_token"].shape[-1]
    ckpt = {"model_state_dict": state, "num_classes": state["classifier.weight"].shape[0], "num_features": FEATURE_DIM,
            "d_model": d, "nhead": heads, "num_layers": 1 + max(int(k.split(".")[2]) for k in state
                                                                 if k.startswith("encoder.layers.")),
            "dim_feedforward": state["encoder.layers.0.linear1.weight"].shape[0], "dropout": 0.2,
            "feature_dropout": 0.15, "pooling_dropout": 0.2, "use_cls_token": True, "token_dropout": 0.05,
            "temporal_smoothing": 0.1, "use_multiscale_stem": True, "use_cosine_head": True,
            "relative_bias_max_distance": M, "cosine_head_weight": 0.35, "class_labels": list(class_labels),
            "config": {"num_epochs": 3, "learning_rate": 1e-3, "sequence_length": 64, "amp_dtype": "bfloat16"},
            "metrics_history": [{"epoch": 1, "train_loss": 1.2, "val_loss": 1.3}], "best_val_loss": 1.3,
            "metadata": metadata or {}}
    ckpt.update(overrides)
    torch.save(ckpt, path)
    return path


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# -- import-original --------------------------------------------------------------------------------
@pytest.mark.slow  # ~5 s on 2 shared cores: the import, its logits check, and serving the result
def test_import_original_through_the_cli_gives_the_original_logits(tmp_path, capsys):
    from signflow_zoo.model.checkpoint import load_checkpoint

    state = original_state(seed=1)
    ckpt = save_as_original(tmp_path / "original.pt", state, heads=SIZES["heads"], metadata={
        "class_thresholds": {"hello": 0.8, "yes": 1.4, "gone": 0.5}, "calibration": {"temperature": 1.3}})
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    out = tmp_path / "model.pt"
    assert main(["import-original", str(ckpt), "--labels", str(labels), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    notes = [n for n in summary["notes"] if "gone" in n]  # a threshold for a label the model does not have
    assert notes and f"note: {notes[0]}" in captured.err
    assert summary["classes"] == 4 and summary["heads_from"] == "the checkpoint (nhead)"
    want_sizes = {"d_model": 24, "nhead": 2, "num_layers": 2, "dim_feedforward": 48, "num_classes": 4,
                  "max_rel_distance": M, "input_dim": FEATURE_DIM}
    assert {k: summary["model_kwargs"][k] for k in want_sizes} == want_sizes
    assert summary["max_logit_difference"] < 1e-5

    model, meta = load_checkpoint(out)
    assert meta["labels"] == LABELS and meta["calibration"]["temperature"] == 1.3
    assert meta["calibration"]["class_thresholds"] == [0.8, 0.0, 0.0, 1.0]  # by label, clipped as the original does
    x = torch.randn(3, 40, FEATURE_DIM, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        want = original_logits(state, x, SIZES["heads"])
        got = model(x, torch.ones(3, 40, dtype=torch.bool))
        assert float((want - got).abs().max()) < 1e-5
        # the test can tell: the table left unreversed gives other logits
        unreversed = {k: v.clone() for k, v in model.state_dict().items()}
        unreversed["rel_bias"] = unreversed["rel_bias"].flip(0)
        model.load_state_dict(unreversed)
        assert float((want - model(x, torch.ones(3, 40, dtype=torch.bool))).abs().max()) > 1e-3

    pipe = SignFlowInferencePipeline(out)  # serves as it is: labels and calibration from the file
    assert pipe.labels == LABELS and pipe.temperature == 1.3 and pipe.class_thresholds == [0.8, 0.0, 0.0, 1.0]
    pipe.close()


def test_a_bare_state_dict_needs_its_heads_and_labels(tmp_path, capsys):
    from signflow_zoo.model.checkpoint import load_checkpoint
    from signflow_zoo.model.original import import_original

    state = original_state(seed=2, layers=1, classes=3)
    ckpt = tmp_path / "bare.pt"
    torch.save(state, ckpt)
    out = tmp_path / "model.pt"
    assert main(["import-original", str(ckpt), "--labels", str(_lines(tmp_path, ["a", "b", "c"])), "-o", str(out)]) == 2
    assert "--heads" in _err_line(capsys) and not out.exists()
    with pytest.raises(CheckpointError, match="no class_labels.*--labels"):
        import_original(ckpt, None, out, heads=2)
    summary = import_original(ckpt, ["a", "b", "c"], out, heads=2)
    assert summary["heads_from"] == "heads= (--heads)" and summary["labels_from"] == "labels="
    model, meta = load_checkpoint(out)
    x = torch.randn(1, 64, FEATURE_DIM, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        assert float((original_logits(state, x, 2) - model(x)).abs().max()) < 1e-5
    with pytest.raises(CheckpointError, match="nhead=2, but 3 heads"):
        import_original(save_as_original(tmp_path / "dict.pt", state, heads=2), ["a", "b", "c"], out, heads=3)


def _lines(tmp_path, labels, name="labels.txt"):
    p = tmp_path / name
    p.write_text("\n".join(labels))
    return p


@pytest.mark.parametrize("change,expect", [
    ("rename", "missing keys classifier.bias; unexpected keys head.bias"),
    ("extra", "unexpected keys encoder.norm.bias, encoder.norm.weight"),
    ("shape", r"wrong shapes class_prototypes \[4, 12\] \(expected \[4, 24\]\)"),
    ("not a checkpoint", "not a PyTorch checkpoint"),
    ("smoothing", "temporal_smoothing=0.25"),
    ("stem", "use_multiscale_stem=False"),
    ("features", "reads 225 features per frame"),
    ("labels", "3 labels for a model with 4 outputs"),
    ("nan", "NaN or inf"),
])
def test_an_unexpected_checkpoint_is_one_line_naming_what_differs(change, expect, tmp_path, capsys):
    state = original_state(seed=3)
    extra: dict = {}
    labels = LABELS
    if change == "rename":
        state["head.bias"] = state.pop("classifier.bias")
    elif change == "extra":
        state["encoder.norm.weight"], state["encoder.norm.bias"] = torch.ones(24), torch.zeros(24)
    elif change == "shape":
        state["class_prototypes"] = torch.zeros(4, 12)
    elif change == "smoothing":
        extra["temporal_smoothing"] = 0.25
    elif change == "stem":
        extra["use_multiscale_stem"] = False
    elif change == "features":
        state["input_norm.weight"], state["input_norm.bias"] = torch.ones(225), torch.zeros(225)
    elif change == "labels":
        labels = LABELS[:3]
    elif change == "nan":
        state["classifier.weight"][0, 0] = float("nan")
    ckpt = tmp_path / "original.pt"
    if change == "not a checkpoint":
        ckpt.write_bytes(b"\x00garbage" * 100)
    else:
        save_as_original(ckpt, state, **extra)
    out = tmp_path / "model.pt"
    code = main(["import-original", str(ckpt), "--labels", str(_lines(tmp_path, labels)), "-o", str(out)])
    err = _err_line(capsys)
    assert code == 2 and not out.exists()
    assert err.startswith("signflow-zoo import-original: error:")
    assert re.search(expect, err), err


def test_import_original_checks_its_output_before_reading(tmp_path, capsys):
    ckpt = save_as_original(tmp_path / "original.pt", original_state(seed=4), class_labels=LABELS)
    assert main(["import-original", str(ckpt), "-o", str(ckpt)]) == 2
    assert "the checkpoint being imported" in _err_line(capsys)
    assert main(["import-original", str(ckpt), "-o", str(tmp_path / "model.onnx")]) == 2
    assert ".pt file" in _err_line(capsys)
    assert main(["import-original", str(ckpt), "-o", str(tmp_path / "m.pt")]) == 0  # labels from the checkpoint
    assert json.loads(capsys.readouterr().out)["labels_from"] == "the checkpoint (class_labels)"


def test_serving_an_original_checkpoint_says_to_import_it(tmp_path):
    ckpt = save_as_original(tmp_path / "original.pt", original_state(seed=4))
    with pytest.raises(CheckpointError, match="an original SignFlow checkpoint.*import-original"):
        SignFlowInferencePipeline(ckpt)


# -- an ONNX file exported the original way --------------------------------------------------------
class _OneInput(torch.nn.Module):
    """A SignTransformer behind the original's interface: one input, padding = all-zero frames."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, landmarks):
        return self.model(landmarks, landmarks.abs().sum(dim=-1) > 1e-6)


@pytest.fixture(scope="module")
def original_onnx(tmp_path_factory):
    """(path, model): exported as the original's export_to_onnx does: input "landmarks", output "logits", dynamic
    batch and seq_len, no metadata."""
    from signflow_zoo.model.export import quiet_logs

    model = _tiny()
    path = tmp_path_factory.mktemp("original-onnx") / "model.onnx"
    with quiet_logs():
        torch.onnx.export(_OneInput(model).eval(), (torch.randn(1, 64, FEATURE_DIM),), str(path), dynamo=False,
                          export_params=True, opset_version=17, do_constant_folding=True, input_names=["landmarks"],
                          output_names=["logits"], dynamic_axes={"landmarks": {0: "batch", 1: "seq_len"},
                                                                 "logits": {0: "batch"}})
    assert not model.training  # the export puts the modules back in the mode they had
    return path, model


def _clip(seed=0, frames=30):
    return np.random.default_rng(seed).uniform(0.2, 0.8, (frames, 225)).astype(np.float32)


def test_an_original_export_without_labels_says_to_pass_them(original_onnx, tmp_path, capsys):
    path, _ = original_onnx
    with pytest.raises(ModelFileError, match="no label list.*--labels FILE.*labels=") as caught:
        SignFlowInferencePipeline(path)
    assert str(path) in str(caught.value)
    clip = tmp_path / "clip.npy"
    np.save(clip, _clip())
    assert main(["predict", str(clip), "--model", str(path)]) == 2
    assert "--labels" in _err_line(capsys)


def test_an_original_export_is_served_with_the_labels_given(original_onnx, tmp_path, capsys):
    import gpu_cpu_variants
    from signflow_zoo.backends.runner import Artifacts

    path, model = original_onnx
    with _no_warnings():  # no default-labels note: the labels given are real
        pipe = SignFlowInferencePipeline(path, labels=["a", "b", "c"])
    assert pipe.labels == ["a", "b", "c"] and pipe.backend_name == "onnx-cpu"
    assert pipe.runner.input_names == ("landmarks", None)
    feats, mask = prepare_clip(_clip(1), 64)
    mask[:5] = False  # frames without a hand: zeroed for a graph that reads all-zero frames as padding
    with torch.inference_mode():
        want = model(torch.from_numpy(feats[None]), torch.from_numpy(mask[None])).numpy()
    assert np.abs(pipe.runner.run(feats[None], mask[None]) - want).max() < 1e-4
    assert pipe.process_sequence(_clip(2)).candidate in pipe.labels
    pipe.close()

    # the fixed-shape IO-binding path of the CUDA-graph backends (here on the CPU provider) takes it too
    runner = gpu_cpu_variants.CpuGraphRunner()
    arts = Artifacts(preset="", num_classes=3, labels=["a", "b", "c"], model_kwargs={})
    arts.onnx = path
    runner.prepare(arts)
    assert np.abs(runner.run(feats[None], mask[None]) - want).max() < 1e-4
    runner.close()

    clip = tmp_path / "clip.npy"
    np.save(clip, _clip(3))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["a", "b", "c"]))
    assert main(["predict", str(clip), "--model", str(path), "--labels", str(labels), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["predictions"][0]["candidate"] in ["a", "b", "c"]


class _no_warnings:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error", RuntimeWarning)  # the pipeline's notes

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def test_labels_that_do_not_match_the_outputs_are_a_clear_error(original_onnx, tmp_path, capsys):
    path, _ = original_onnx
    with pytest.raises(LabelsError, match=r"labels=: 2 labels, but .*model.onnx has 3 outputs"):
        SignFlowInferencePipeline(path, labels=["a", "b"])
    labels = _lines(tmp_path, ["a", "b", "c", "d"])
    clip = tmp_path / "clip.npy"
    np.save(clip, _clip())
    assert main(["predict", str(clip), "--model", str(path), "--labels", str(labels)]) == 2
    assert f"--labels {labels}: 4 labels, but" in _err_line(capsys)


def test_given_labels_replace_a_files_own_with_a_note_and_must_match_their_count(tmp_path):
    from signflow_zoo.model.export import export_to_onnx

    model = _tiny()
    path = tmp_path / "m.onnx"
    export_to_onnx(model, path, exporter="legacy", verify=False, labels=["x", "y", "z"])
    with pytest.warns(RuntimeWarning, match="replace the file's own.*output 0 is 'a', the file says 'x'"):
        pipe = SignFlowInferencePipeline(path, labels=["a", "b", "c"])
    assert pipe.labels == ["a", "b", "c"]
    pipe.close()
    with pytest.raises(LabelsError, match="2 labels, but .* lists 3"):
        SignFlowInferencePipeline(path, labels=["a", "b"])


def _tiny():
    from signflow_zoo.model.network import SignTransformer

    torch.manual_seed(0)
    return SignTransformer(num_classes=3, d_model=24, nhead=2, num_layers=1, dim_feedforward=48).eval()


def test_a_given_calibration_is_applied_and_checked(original_onnx):
    path, _ = original_onnx
    pipe = SignFlowInferencePipeline(path, labels=["a", "b", "c"], calibration={"temperature": 2.0,
                                                                                  "thresholds": {"b": 0.9}})
    assert pipe.temperature == 2.0 and pipe.class_thresholds == [0.0, 0.9, 0.0]
    pipe.close()
    for cal, match in [({"temperature": 0}, "temperature must be a finite number > 0"),
                       ({"thresholds": [0.5, 0.5]}, "list of 2, expected 3"),
                       ({"thresholds": {"zz": 0.5}}, "labels the model does not have: zz"),
                       ({"thresholds": [0.5, 2, 0.5]}, "threshold of 'b' must be a number in 0..1"),
                       ({"temp": 1}, "unknown key"), (1.5, "expected a dict")]:
        with pytest.raises(CalibrationError, match=match):
            SignFlowInferencePipeline(path, labels=["a", "b", "c"], calibration=cal)


# -- labels files -----------------------------------------------------------------------------------
def test_labels_files_one_per_line_or_json(tmp_path):
    lines = tmp_path / "labels.txt"
    lines.write_text("[NONE]\n  hello  \n\nthank you\r\n")
    assert read_labels(lines) == ["[NONE]", "hello", "thank you"]  # "[NONE]" first is a label, not JSON
    assert read_labels(str(lines)) == read_labels(lines)
    as_json = tmp_path / "labels.json"
    as_json.write_text('\ufeff[\n "a", "b c"\n]')
    assert read_labels(as_json) == ["a", "b c"]
    as_object = tmp_path / "meta.json"
    as_object.write_text(json.dumps({"model_class": "SignTransformer", "class_labels": ["x", "y"]}))
    assert read_labels(as_object) == ["x", "y"]  # the original's export_model_metadata file
    assert read_labels(("p", "q")) == ["p", "q"]
    for text, match in [("", "empty"), ("a\nb\na\n", "'a' is listed twice"), ('["a", 3]', "label 1 is 3"),
                        ('["a", ', "not valid JSON"), ('{"names": ["a"]}', "without a 'labels'"),
                        ("[" * 100 + "]" * 100, "nested")]:
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(LabelsError, match=match):
            read_labels(bad)
    with pytest.raises(LabelsError, match="labels file not found"):
        read_labels(tmp_path / "missing.txt")
    with pytest.raises(LabelsError, match="non-empty string"):
        read_labels(["a", ""])
