"""Model files for serving: export-then-serve with default labels, metadata checked (never trusted), graph
inputs/outputs checked, warm-up failures named with the file."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from signflow_zoo.common.errors import ModelFileError
from signflow_zoo.data.features import FEATURE_DIM
from signflow_zoo.model.export import export_to_onnx, read_metadata, set_metadata
from signflow_zoo.serve.modelfile import MAX_CLASSES, MAX_SEQ_LEN, read_model_metadata, serving_info
from signflow_zoo.serve.pipeline import SignFlowInferencePipeline


def _tiny_model(num_classes: int = 3):
    import torch

    from signflow_zoo.model.network import SignTransformer

    torch.manual_seed(0)
    return SignTransformer(num_classes=num_classes, d_model=24, nhead=2, num_layers=1, dim_feedforward=48).eval()


# -- export, then serve -----------------------------------------------------------------------------
def test_export_then_serve_works_with_default_labels_and_says_so(tmp_path):
    path = tmp_path / "m.onnx"
    export_to_onnx(_tiny_model(3), path, exporter="legacy", verify=False)
    meta = read_metadata(path)
    assert meta["labels"] == ["0", "1", "2"] and meta["num_classes"] == 3 and meta["default_labels"] is True
    with pytest.warns(RuntimeWarning) as caught:
        pipe = SignFlowInferencePipeline(model_path=path)
    [note] = [str(w.message) for w in caught if "default labels" in str(w.message)]
    assert str(path) in note and "labels=" in note
    assert pipe.labels == ["0", "1", "2"] and pipe.describe()["default_labels"] is True
    clip = np.random.default_rng(0).uniform(0.2, 0.8, (30, 225)).astype(np.float32)
    assert pipe.process_sequence(clip).candidate in pipe.labels


def test_export_with_labels_serves_them_without_a_warning(tmp_path):
    path = tmp_path / "m.onnx"
    export_to_onnx(_tiny_model(3), path, exporter="legacy", verify=False, labels=["hello", "thanks", "yes"])
    assert "default_labels" not in read_metadata(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe = SignFlowInferencePipeline(path)
    assert pipe.labels == ["hello", "thanks", "yes"]


def test_export_refuses_labels_that_do_not_fit_the_model(tmp_path):
    with pytest.raises(ValueError, match="2 labels for a model with 3 classes"):
        export_to_onnx(_tiny_model(3), tmp_path / "m.onnx", exporter="legacy", verify=False, labels=["a", "b"])
    with pytest.raises(ValueError, match="differ"):
        export_to_onnx(_tiny_model(3), tmp_path / "m.onnx", exporter="legacy", verify=False, labels=["a", "b", "c"],
                       metadata={"labels": ["x", "y", "z"]})


# -- metadata is validated ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "base.onnx"
    export_to_onnx(_tiny_model(3), path, exporter="legacy", verify=False, labels=["a", "b", "c"],
                   metadata={"preset": "tiny", "seq_len": 64})
    return path


def _with_meta(base, folder, name: str, **raw: str):
    import onnx

    proto = onnx.load(str(base))
    set_metadata(proto, raw)
    path = folder / f"{name}.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("key,value,words", [
    ("seq_len", "-5", "seq_len"), ("seq_len", str(10**9), f"2..{MAX_SEQ_LEN}"), ("seq_len", "64.5", "seq_len"),
    ("seq_len", '"abc"', "seq_len"), ("seq_len", "true", "seq_len"),
    ("num_classes", "-2", "num_classes"), ("num_classes", "7", "7 classes but lists 3 labels"),
    ("num_classes", "3.0", "num_classes"), ("num_classes", str(10**9), str(MAX_CLASSES)),
    ("labels", "[]", "label list"), ("labels", '["a", "a", "b"]', "repeat 'a'"), ("labels", "[1, 2, 3]", "label list"),
    ("labels", "not json", "label list"),
    ("calibration_temperature", "0", "calibration_temperature"),
    ("calibration_temperature", "-1.5", "calibration_temperature"),
    ("calibration_temperature", "NaN", "calibration_temperature"),
    ("calibration_temperature", '"warm"', "calibration_temperature"),
    ("class_thresholds", "[0.5]", "a list of 3 numbers"), ("class_thresholds", "[0.5, 2, 0.1]", "class 'b'"),
    ("class_thresholds", '"high"', "class_thresholds"),
])
def test_nonsense_metadata_is_one_line_naming_the_file(base_onnx, tmp_path, key, value, words):
    path = _with_meta(base_onnx, tmp_path, "bad", **{key: value})
    with pytest.raises(ModelFileError) as err:
        SignFlowInferencePipeline(path)
    message = str(err.value)
    assert message.startswith(str(path)) and words in message and "\n" not in message


def test_calibration_in_the_metadata_is_applied(base_onnx, tmp_path):
    path = _with_meta(base_onnx, tmp_path, "calibrated", calibration_temperature="1.7",
                      class_thresholds=json.dumps([0.9, 0.5, 0.75]))
    pipe = SignFlowInferencePipeline(path)
    assert pipe.temperature == pytest.approx(1.7) and pipe.class_thresholds == [0.9, 0.5, 0.75]
    clip = np.random.default_rng(0).uniform(0.2, 0.8, (30, 225)).astype(np.float32)
    pred = pipe.process_sequence(clip)
    assert pred.class_threshold == [0.9, 0.5, 0.75][pipe.labels.index(pred.candidate)]
    assert pred.threshold == max(pred.class_threshold, pred.adaptive_threshold)


def test_serving_info_defaults_and_bounds():
    info = serving_info("x", {"labels": ["a", "b"]})
    assert (info.seq_len, info.calibration_temperature, info.class_thresholds, info.default_labels) == (64, None,
                                                                                                          None, False)
    assert serving_info("x", {"labels": ["a"], "seq_len": MAX_SEQ_LEN}).seq_len == MAX_SEQ_LEN
    # what training writes without a calibration
    assert serving_info("x", {"labels": ["a", "b"], "calibration_temperature": 1.0, "class_thresholds": []}
                        ).class_thresholds is None
    with pytest.raises(ModelFileError, match="seq_len"):
        serving_info("x", {"labels": ["a"], "seq_len": MAX_SEQ_LEN + 1})


def test_read_model_metadata_of_an_exported_file(base_onnx, tmp_path):
    meta = read_model_metadata(base_onnx)
    assert meta["labels"] == ["a", "b", "c"] and meta["num_classes"] == 3
    assert meta["preset"] == "tiny" and meta["seq_len"] == 64 and "default_labels" not in meta
    with pytest.raises(ModelFileError, match="missing.onnx"):
        read_model_metadata(tmp_path / "missing.onnx")


# -- graphs that do not fit ------------------------------------------------------------------------------
def _graph(path, out_classes: int, declared_out, meta_labels, reshape_to=None):
    """features [b, f, 469] + mask [b, f] -> mean over frames @ W [469, out_classes]; optional broken Reshape."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    feats = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", "frames", FEATURE_DIM])
    mask = helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", "frames"])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, declared_out)
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.1, (FEATURE_DIM, out_classes)).astype(np.float32), "w")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [helper.make_node("ReduceMean", ["features", "axes"], ["m"], keepdims=0)]
    inits = [w, axes]
    if reshape_to is not None:
        inits.append(numpy_helper.from_array(np.array(reshape_to, np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["m", "shape"], ["m2"]))
        nodes.append(helper.make_node("MatMul", ["m2", "w"], ["logits"]))
    else:
        nodes.append(helper.make_node("MatMul", ["m", "w"], ["logits"]))
    graph = helper.make_graph(nodes, "g", [feats, mask], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    set_metadata(model, {"labels": json.dumps(meta_labels)})
    onnx.save(model, str(path))
    return path


def test_a_handmade_graph_that_fits_is_served(tmp_path):
    pipe = SignFlowInferencePipeline(_graph(tmp_path / "ok.onnx", 3, ["batch", 3], ["a", "b", "c"]))
    clip = np.random.default_rng(0).uniform(0.2, 0.8, (30, 225)).astype(np.float32)
    assert pipe.process_sequence(clip).candidate in ("a", "b", "c")


def test_a_graph_declaring_the_wrong_output_shape_is_refused(tmp_path):
    path = _graph(tmp_path / "wide.onnx", 7, ["batch", 7], ["a", "b", "c"])
    with pytest.raises(ModelFileError, match=r"wide.onnx: the graph returns logits of shape \['batch', 7\], "
                                             r"expected \[batch, 3\]"):
        SignFlowInferencePipeline(path)
    path = _graph(tmp_path / "rank3.onnx", 3, ["batch", 3, 1], ["a", "b", "c"])
    with pytest.raises(ModelFileError, match="rank3.onnx: the graph returns logits"):
        SignFlowInferencePipeline(path)


def test_a_graph_returning_the_wrong_shape_at_run_time_fails_its_warm_up(tmp_path):
    path = _graph(tmp_path / "sly.onnx", 7, ["batch", "classes"], ["a", "b", "c"])
    with pytest.raises(ModelFileError, match=r"sly.onnx: the model returns logits of shape \[1, 7\]"):
        SignFlowInferencePipeline(path)


def test_onnx_runtime_errors_in_the_warm_up_name_the_file(tmp_path):
    # the 469 values of a batch of 1 do not split into 3 rows: only running the graph finds out
    path = _graph(tmp_path / "broken.onnx", 3, ["batch", 3], ["a", "b", "c"], reshape_to=[3, -1])
    with pytest.raises(ModelFileError) as err:
        SignFlowInferencePipeline(path)
    message = str(err.value)
    assert message.startswith(f"{path}: the model failed on a test input [1, 64, 469]") and "\n" not in message


def test_a_graph_with_other_inputs_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    set_metadata(model, {"labels": json.dumps(["a", "b", "c"])})
    onnx.save(model, str(tmp_path / "other.onnx"))
    with pytest.raises(ModelFileError, match=r"other.onnx: the graph takes inputs \['x'\], expected features"):
        SignFlowInferencePipeline(tmp_path / "other.onnx")
