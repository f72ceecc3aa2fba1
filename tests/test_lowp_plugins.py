"""The low-precision CPU backend plugins (OpenVINO fp32/bf16/int8, ONNX Runtime static int8): their
artifact kinds built on a tiny model with calibration from a training split, and the conformance kit.

Each plugin is a separate distribution (plugins/signflow-zoo-openvino, plugins/signflow-zoo-ort-static-int8);
a test is skipped, with the reason, when the plugin or its runtime is not installed here.
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from signflow_zoo.api import BuildContext

TRAIN_SPEC = "synthetic:classes=4,signers=6,clips=2,seed=1"


def plugin(module: str, runtime: str):
    try:
        importlib.import_module(runtime)
    except ImportError as exc:
        pytest.skip(f"{runtime} is not installed ({exc}); pip install -e plugins/... installs it")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.skip(f"plugin {module} is not installed ({exc})")


@pytest.fixture(scope="module")
def train_batches():
    """Calibration from a real TRAINING split, as ``BuildContext.calibration`` promises: n -> batches of n clips."""
    from signflow_zoo.data.loading import load_data

    train = load_data(TRAIN_SPEC).train

    def calibration(n: int):
        for i in range(0, min(n, len(train)), 8):
            j = min(i + 8, n, len(train))
            yield train.features[i:j], train.mask[i:j]

    return calibration, train


def build(kind, source: Path, dest: Path, calibration=None) -> Path:
    dest.mkdir(parents=True)
    record = kind().build(BuildContext("conformance-tiny", source, dest, calibration, lambda msg: None))
    assert (dest / kind.main_file).is_file() and isinstance(record, dict)
    return dest / kind.main_file


def reference(arts, x, m):
    import torch

    with torch.inference_mode():
        return arts.torch_model()(torch.from_numpy(x), torch.from_numpy(m)).numpy()


# -- OpenVINO --------------------------------------------------------------------------------------
OV_RUNNERS = ["openvino-fp32", "openvino-bf16", "openvino-int8"]


@pytest.mark.parametrize("name", OV_RUNNERS)
@pytest.mark.slow  # over 2 s: out of the fast loop (-m 'not slow'), still in CI
def test_openvino_runners_conform(name, tiny_artifacts, tmp_path):
    mod = plugin("signflow_zoo_openvino", "openvino")
    from signflow_zoo.testing import check_runner

    cls = {c.name: c for c in mod.RUNNERS}[name]
    report = check_runner(cls, tmp_path, artifacts=tiny_artifacts)
    if not report.available:
        pytest.skip(f"{name} unavailable here: {report.reason}")
    assert report.ok, report.problems
    if cls.precision == "fp32":
        assert report.parity["max_rel"] < 1e-5
    else:  # really computed in low precision, not fp32 under another name
        assert report.parity["max_abs"] > 1e-4


def test_openvino_runner_keeps_the_harness_thread_count_and_latency_settings(tiny_artifacts, tmp_path):
    mod = plugin("signflow_zoo_openvino", "openvino")
    from signflow_zoo.api import RunnerOptions

    arts = replace(tiny_artifacts, paths=dict(tiny_artifacts.paths))
    arts.paths["openvino-ir"] = build(mod.kinds.OpenVinoIR, arts.path_for("onnx"), tmp_path / "ir")
    runner = mod.runners.OpenVinoFp32Runner(RunnerOptions(threads=1))
    runner.prepare(arts)
    d = runner.describe()
    assert d["threads"] == 1 and d["streams"] == 1 and "LATENCY" in d["performance_hint"]
    assert d["inference_precision"] == "f32"  # OpenVINO's own default here may be bf16: fp32 must say f32
    runner.close()


@pytest.mark.slow  # over 2 s: out of the fast loop (-m 'not slow'), still in CI
def test_openvino_int8_is_built_from_training_data_and_keeps_top1(tiny_artifacts, tmp_path, train_batches):
    mod = plugin("signflow_zoo_openvino", "nncf")
    import openvino as ov

    calibration, train = train_batches
    ir = build(mod.kinds.OpenVinoIR, tiny_artifacts.path_for("onnx"), tmp_path / "ir")
    q = build(mod.kinds.OpenVinoInt8IR, ir, tmp_path / "int8", calibration)
    ops = {op.get_type_name() for op in ov.Core().read_model(str(q)).get_ops()}
    assert "FakeQuantize" in ops  # quantized, not a copy of the fp32 IR
    compiled = ov.Core().compile_model(str(q), "CPU")
    x, m = train.features[:16], train.mask[:16]
    out = compiled({"features": x, "mask": m})[0]
    assert (out.argmax(1) == reference(tiny_artifacts, x, m).argmax(1)).mean() >= 0.9


@pytest.mark.slow  # over 2 s: out of the fast loop (-m 'not slow'), still in CI
def test_openvino_int8_keeps_the_bias_table_and_the_head_in_float(tiny_artifacts, tmp_path, train_batches):
    """The relative-position table's gather and the head (gate MLP, classifier, metric projection, cosine)
    get no int8: a quantized table crashed OpenVINO 2026.4's compiler; the head is a negligible share."""
    mod = plugin("signflow_zoo_openvino", "nncf")
    import openvino as ov

    calibration, _ = train_batches
    ir = build(mod.kinds.OpenVinoIR, tiny_artifacts.path_for("onnx"), tmp_path / "ir")
    fp32 = ov.Core().read_model(str(ir))
    tables, head = mod.kinds.constant_tables(fp32), mod.kinds.head_operations(fp32)
    head_ops = [op for op in fp32.get_ordered_ops() if op.get_friendly_name() in head]
    assert len(tables) == 1  # the relative-position bias (the legacy exporter writes a Gather)
    assert sum(op.get_type_name() == "MatMul" for op in head_ops) == 5  # gate x2, classifier, metric, cosine
    assert not any(op.get_type_name() in ("MVN", "ScaledDotProductAttention") for op in head_ops)
    q = ov.Core().read_model(str(build(mod.kinds.OpenVinoInt8IR, ir, tmp_path / "int8", calibration)))
    by_name = {op.get_friendly_name(): op for op in q.get_ordered_ops()}
    table = by_name[tables[0]].input_value(0).get_node()
    assert table.get_type_name() == "Constant" and table.get_element_type() == ov.Type.f32
    for name in head:
        if name in by_name and by_name[name].get_type_name() == "MatMul":
            for value in by_name[name].inputs():
                src = value.get_source_output().get_node()
                assert src.get_type_name() not in ("FakeQuantize", "Multiply"), f"{name} is quantized"
    encoder = [op for op in q.get_ordered_ops() if op.get_type_name() == "MatMul" and op.get_friendly_name() not in head]
    assert encoder and all(op.input_value(1).get_node().get_type_name() == "Multiply" for op in encoder)  # int8


def test_openvino_compile_check_turns_a_compiler_crash_into_an_error(tmp_path):
    """A graph that kills OpenVINO 2026.4's CPU compiler (an int8 table whose per-entry scales are all equal,
    gathered at run-time indices) fails the build with the signal instead of killing the harness."""
    mod = plugin("signflow_zoo_openvino", "openvino")
    import openvino as ov
    import openvino.opset13 as op

    x = op.parameter([-1, -1], np.float32, name="x")
    n = op.gather(op.shape_of(x), op.constant(np.int64(1)), op.constant(np.int64(0)))
    idx = op.range(op.constant(np.int64(0)), n, op.constant(np.int64(1)), "i64")
    dist = op.subtract(op.unsqueeze(idx, op.constant(0)), op.unsqueeze(idx, op.constant(1)))
    dist = op.add(op.clamp(dist, -64, 64), op.constant(np.int64(64)))
    table = op.multiply(op.convert(op.constant(np.arange(-64, 65, dtype=np.int8)), "f32"),
                        op.constant(np.full(129, 0.01, np.float32)))
    rel = op.gather(table, dist, op.constant(np.int64(0)))
    out = op.add(op.unsqueeze(rel, op.constant(0)), op.unsqueeze(op.fake_quantize(x, -1.0, 1.0, -1.0, 1.0, 256),
                                                                  op.constant(1)))
    path = tmp_path / "model.xml"
    ov.save_model(ov.Model([out], [x]), str(path))
    try:
        mod.kinds.check_compiles(path)
    except RuntimeError as exc:
        assert "cannot compile model.xml (signal" in str(exc)
    else:
        pytest.skip(f"OpenVINO {ov.get_version()} compiles this graph: its Gather int8 bug is fixed here")


def test_openvino_int8_build_refuses_without_calibration(tiny_artifacts, tmp_path):
    mod = plugin("signflow_zoo_openvino", "nncf")
    with pytest.raises(ValueError, match="calibration"):
        build(mod.kinds.OpenVinoInt8IR, tmp_path / "missing.xml", tmp_path / "int8", None)


def test_openvino_compile_check_reports_a_broken_ir(tmp_path):
    mod = plugin("signflow_zoo_openvino", "openvino")
    bad = tmp_path / "model.xml"
    bad.write_text("<net name='broken'></net>")
    with pytest.raises(RuntimeError, match="cannot compile model.xml"):
        mod.kinds.check_compiles(bad)


# -- ONNX Runtime static int8 ----------------------------------------------------------------------
def test_ort_static_int8_conforms(tiny_artifacts, tmp_path):
    mod = plugin("signflow_zoo_ort_static_int8", "onnxruntime.quantization")
    from signflow_zoo.testing import check_runner

    report = check_runner(mod.OnnxInt8StaticRunner, tmp_path, artifacts=tiny_artifacts)
    assert report.available, report.reason
    assert report.ok, report.problems
    assert report.parity["max_abs"] > 1e-4  # really quantized


def test_ort_static_int8_graph_is_qdq_on_weight_matmuls_only(tiny_artifacts, tmp_path, train_batches):
    mod = plugin("signflow_zoo_ort_static_int8", "onnxruntime.quantization")
    import onnx
    import onnxruntime as ort

    calibration, train = train_batches
    q = build(mod.OnnxInt8Static, tiny_artifacts.path_for("onnx"), tmp_path / "qdq", calibration)
    graph = onnx.load(str(q)).graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    qdq_in = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    matmuls = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    quantized = [n for n in matmuls if n.input[0] in qdq_in and n.input[1] in qdq_in]
    # every MatMul with a weight operand is fed by DequantizeLinear on both sides; attention's stay float
    weight_mm = [n for n in matmuls if n.input[1] in inits or (n.input[1] in producers and
                                                                producers[n.input[1]].op_type == "DequantizeLinear")]
    assert quantized and len(quantized) == len(weight_mm) < len(matmuls)
    act_zp = [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear" and n.input[2] in inits]
    assert act_zp and all(z.data_type == onnx.TensorProto.UINT8 for z in act_zp)  # u8 activations (fast path)
    weight_scales = [inits[n.input[1]] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                     and inits[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert weight_scales and any(len(s.dims) == 1 and s.dims[0] > 1 for s in weight_scales)  # per-channel
    sess = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
    x, m = train.features[:16], train.mask[:16]
    out = sess.run(None, {"features": x, "mask": m})[0]
    assert (out.argmax(1) == reference(tiny_artifacts, x, m).argmax(1)).mean() >= 0.9


INT8_KINDS = [("signflow_zoo_ort_int8", "OnnxInt8Dynamic"), ("signflow_zoo_ort_static_int8", "OnnxInt8Static")]
AVX2_ONLY = "fpu sse2 avx avx2 fma"
WITH_VNNI = AVX2_ONLY + " avx512f avx512bw avx512_vnni"


@pytest.mark.parametrize("module,kind", INT8_KINDS)
def test_int8_weights_use_7_bits_on_cpus_without_vnni_and_each_host_choice_is_its_own_artifact(
        module, kind, tiny_artifacts, tmp_path, monkeypatch, train_batches):
    """On a CPU without VNNI, 8-bit weights saturate ONNX Runtime's u8s8 kernels (top-1 agreement 0.79 on
    `large` on an AVX2-only EPYC, 0.98 with 7-bit weights): the choice follows the CPU the artifact is built
    for, is recorded, and keys the cache, so hosts of both kinds sharing one cache never swap builds."""
    import onnx
    from onnx import numpy_helper

    from signflow_zoo.api import ensure_artifact

    mod = plugin(module, "onnxruntime.quantization")
    cls = getattr(mod, kind)
    calibration, _ = train_batches
    built = {}
    for flags in (AVX2_ONLY, WITH_VNNI):
        monkeypatch.setenv("SIGNFLOW_ZOO_CPU_FLAGS", flags)
        assert cls.host_choices() == {"reduce_range": flags == AVX2_ONLY}
        arts = replace(tiny_artifacts, paths={}, hashes=dict(tiny_artifacts.hashes), info={})
        path = ensure_artifact(arts, cls.name, _registry_with(cls), home=tmp_path, calibration=calibration,
                               log=lambda msg: None)
        record = arts.info[cls.name]
        assert record["host_choices"] == {"reduce_range": flags == AVX2_ONLY}
        assert record["build"]["reduce_range"] is (flags == AVX2_ONLY) and record["built_on"]
        graph = onnx.load(str(path)).graph
        int8 = [numpy_helper.to_array(i) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
        assert int8
        built[flags] = (path, max(int(np.abs(w.astype(np.int16)).max()) for w in int8))
    assert built[AVX2_ONLY][0].parent != built[WITH_VNNI][0].parent  # two cache entries, one per host choice
    assert built[AVX2_ONLY][1] <= 64 < built[WITH_VNNI][1]  # 7-bit weights without VNNI, full 8 bits with it


def _registry_with(kind_cls):
    """A registry holding just one artifact kind (the test builds it outside any bench)."""
    class Registry:
        def artifact_kind(self, name):
            assert name == kind_cls.name
            return kind_cls

    return Registry()