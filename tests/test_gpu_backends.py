"""The GPU backends (onnx-cuda-graph, onnx-cuda-graph-fp16, onnx-tensorrt, torch-compile, torch-compile-bf16)
as far as a machine without a GPU can check them: fixed-shape graphs against PyTorch, the IO-binding path
and its per-shape bookkeeping on the CPU provider, the float16 artifact, and honest refusals without CUDA.
On a machine with a GPU the same tests run the real thing where they can (benchmarks/gpu_check.sh)."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import gpu_cpu_variants
from gpu_cpu_variants import CpuGraphFp16Runner, CpuGraphRunner
from signflow_zoo.api import FEATURE_DIM, Availability, BackendError, BackendUnavailable, RunnerOptions
from signflow_zoo.backends.builtin import fixed_shapes, onnx_cuda, provider_libraries
from signflow_zoo.backends.builtin.fixed_shapes import fixed_shape_model, shape_ops_left
from signflow_zoo.backends.builtin.onnx_cuda import OnnxCudaGraphRunner, capture_refusal
from signflow_zoo.backends.builtin.torch_compile import (CPU_OPT_IN, TorchCompileBf16Runner, convs_as_matmul,
                                                       model_forward)
from signflow_zoo.backends.ort import probe_provider
from signflow_zoo.backends.parity import compare
from signflow_zoo.plugins import PluginRegistry
from signflow_zoo.testing import check_runner

GPU_BACKENDS = ["onnx-cuda-graph", "onnx-cuda-graph-fp16", "onnx-tensorrt", "torch-compile", "torch-compile-bf16"]
HAS_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()


def _rand(b, t, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((b, t, FEATURE_DIM)).astype(np.float32), rng.random((b, t)) > 0.1


def _reference(arts, x, m):
    with torch.inference_mode():
        return arts.torch_model("cpu")(torch.from_numpy(x), torch.from_numpy(m)).numpy()


@pytest.fixture(scope="module")
def dynamo_onnx(tmp_path_factory, tiny_artifacts):
    """The tiny model through the default (dynamo) exporter, whose graph differs from the legacy one."""
    from signflow_zoo.model.export import export_to_onnx

    path = tmp_path_factory.mktemp("dynamo") / "tiny.onnx"
    export_to_onnx(tiny_artifacts.torch_model("cpu"), path, exporter="dynamo", verify=False)
    return path


# -- fixed shapes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.slow  # over 2 s: out of the fast loop (-m 'not slow'), still in CI
def test_fixed_shape_graphs_fold_every_shape_op_and_match_pytorch(exporter, tiny_artifacts, dynamo_onnx):
    path = tiny_artifacts.onnx if exporter == "legacy" else dynamo_onnx
    model = onnx.load(str(path))
    assert shape_ops_left(model.SerializeToString())  # the dynamic export computes shapes at run time ...
    for b, t in [(1, 64), (3, 32)]:
        fixed = fixed_shape_model(model, b, t).SerializeToString()
        assert not shape_ops_left(fixed)  # ... a fixed one none: nothing left for the CPU in a CUDA session
        sess = ort.InferenceSession(fixed, providers=["CPUExecutionProvider"])
        assert [i.shape for i in sess.get_inputs()] == [[b, t, FEATURE_DIM], [b, t]]
        assert sess.get_outputs()[0].shape == [b, tiny_artifacts.num_classes]
        x, m = _rand(b, t)
        out = sess.run(None, {"features": x, "mask": m})[0]
        assert np.abs(out - _reference(tiny_artifacts, x, m)).max() < 1e-4


def test_fixing_a_graph_with_other_fixed_sizes_is_refused(tiny_artifacts):
    once = fixed_shape_model(onnx.load(str(tiny_artifacts.onnx)), 2, 16)
    assert fixed_shape_model(once, 2, 16).graph.input[0] == once.graph.input[0]
    with pytest.raises(ValueError, match="fixed size 2 where 4 was asked"):
        fixed_shape_model(once, 4, 16)


def test_capture_refusal_names_the_shape_ops_left_on_the_cpu(tiny_artifacts):
    dynamic = tiny_artifacts.onnx.read_bytes()
    msg = capture_refusal(RuntimeError("graph capture is not allowed\nmore"), dynamic)
    assert msg.startswith("CUDA graph capture is impossible for this graph: graph capture is not allowed; "
                          "shape computations left on the CPU: ")
    assert "Shape x" in msg and "more" not in msg


# -- the IO-binding path, on the CPU provider --------------------------------------------------------
@pytest.mark.parametrize("cls", [CpuGraphRunner, CpuGraphFp16Runner], ids=["fp32", "fp16"])
def test_the_graph_backends_code_conforms_on_the_cpu_provider(cls, tmp_path, tiny_artifacts):
    """Every shape the kit runs gets its own fixed-shape bound session; fp16 builds the onnx-fp16 kind."""
    report = check_runner(cls, tmp_path, artifacts=tiny_artifacts)
    assert report.ok and report.available, report.problems
    assert report.parity["precision"] == cls.precision and report.parity["max_rel"] < (1e-5 if cls.precision == "fp32" else 5e-3)


def test_shapes_past_the_limit_take_the_dynamic_session_and_are_counted(tiny_artifacts):
    runner = CpuGraphRunner(RunnerOptions(extra={"max_graph_shapes": 2, "graph_shapes": [(1, 64)]}))
    runner.prepare(tiny_artifacts)
    for b, t in [(1, 64), (3, 32), (2, 100), (2, 100), (1, 64)]:
        x, m = _rand(b, t, seed=b * t)
        assert np.abs(runner.run(x, m) - _reference(tiny_artifacts, x, m)).max() < 1e-4
    d = runner.describe()
    assert list(d["fixed_shapes"]) == ["1x64", "3x32"] and d["calls_without_graph"] == 2
    assert all(v["replay_check"] == "ok" and v["replay_error"] < 1e-6 for v in d["fixed_shapes"].values())
    assert d["cuda_graph"] is False and d["io_binding"] == "buffers on cpu" and d["provider"] == "CPUExecutionProvider"
    runner.close()


def test_a_result_is_not_overwritten_by_the_next_call(tiny_artifacts):
    runner = CpuGraphRunner()
    runner.prepare(tiny_artifacts)
    (x1, m1), (x2, m2) = _rand(1, 64, seed=1), _rand(1, 64, seed=2)
    first = runner.run(x1, m1)
    kept = first.copy()
    second = runner.run(x2, m2)
    assert np.array_equal(first, kept) and not np.allclose(first, second)


class _StaleAfterCapture(fixed_shapes.BoundSession):
    """What a CUDA graph replaying its capture-time inputs would do: inputs after the second run are ignored."""

    loads = 0

    def load(self, features, mask):
        self.loads += 1
        if self.loads <= 2:
            super().load(features, mask)


def test_a_replay_that_ignores_fresh_inputs_is_refused(tiny_artifacts, monkeypatch):
    monkeypatch.setattr(onnx_cuda, "BoundSession", _StaleAfterCapture)
    runner = CpuGraphRunner()
    with pytest.raises(BackendError, match=r"shape 1x64 does not reproduce its first run .*ignored the fresh inputs"):
        runner.prepare(tiny_artifacts)
    assert not runner.prepared


def test_a_fixed_shape_graph_that_does_not_open_is_an_error_naming_it(tiny_artifacts, monkeypatch):
    def broken(model, b, t):
        fixed = fixed_shape_model(model, b, t)
        fixed.graph.node[0].op_type = "NoSuchOp"
        return fixed

    monkeypatch.setattr(onnx_cuda, "fixed_shape_model", broken)
    runner = CpuGraphRunner()
    with pytest.raises(BackendError, match=r"could not open the fixed-shape graph on CPUExecutionProvider: .*NoSuchOp"):
        runner.prepare(tiny_artifacts)


def test_the_fp16_artifact_keeps_float32_inputs_and_logits(tiny_artifacts, tmp_path):
    from signflow_zoo.api import ensure_artifact

    path = ensure_artifact(tiny_artifacts, "onnx-fp16", PluginRegistry(entry_points=False, environment=False),
                           home=tmp_path, log=lambda msg: None)
    model = onnx.load(str(path))
    f32, f16, boolean = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BOOL
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [f32, boolean]
    assert model.graph.output[0].type.tensor_type.elem_type == f32
    weights = [w for w in model.graph.initializer if len(w.dims) == 2]
    assert weights and all(w.data_type == f16 for w in weights)
    assert {p.key for p in model.metadata_props} >= {"labels", "preset"}  # servable alone, like the source


# -- refusals without CUDA ----------------------------------------------------------------------------
@pytest.mark.skipif(HAS_CUDA_EP, reason="this onnxruntime has the CUDA provider: the CPU build's refusal cannot be seen")
@pytest.mark.parametrize("backend", ["onnx-cuda-graph", "onnx-cuda-graph-fp16", "onnx-tensorrt"])
def test_ort_gpu_backends_say_what_is_missing_on_the_cpu_build(backend, tiny_artifacts):
    reg = PluginRegistry(entry_points=False, environment=False)
    av = reg.availability(backend)
    assert not av.ok and not av.broken
    provider = reg.get(backend).cls.provider
    assert f"has no {provider}" in av.reason and "install onnxruntime-gpu" in av.reason
    runner = reg.get(backend).cls()
    if backend != "onnx-tensorrt":  # its prepare is only reached where availability said yes
        with pytest.raises(BackendUnavailable, match=f"has no {provider}"):
            runner.prepare(tiny_artifacts)
        assert not runner.prepared


@pytest.mark.skipif(HAS_CUDA_EP, reason="real CUDA provider present: its silent fallback cannot be provoked")
def test_graph_backend_reports_silent_cpu_fallback_with_the_missing_library(monkeypatch, tiny_artifacts):
    """onnxruntime-gpu without CUDA lists the provider, then runs on CPU: the probe and prepare both refuse."""
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider"] + real)
    probe_provider.cache_clear()
    try:
        av = PluginRegistry(entry_points=False, environment=False).availability("onnx-cuda-graph")
    finally:
        probe_provider.cache_clear()
    assert not av.ok and "bound CPUExecutionProvider" in av.reason
    assert "libonnxruntime_providers_cuda.so is not part of this onnxruntime install" in av.reason
    # past an availability that (wrongly) said yes, the session itself is checked
    monkeypatch.setattr(OnnxCudaGraphRunner, "availability", classmethod(lambda cls: Availability.yes()))
    runner = OnnxCudaGraphRunner()
    with pytest.raises(BackendUnavailable, match="bound CPUExecutionProvider instead of CUDAExecutionProvider"):
        runner.prepare(tiny_artifacts)


@pytest.mark.skipif(HAS_CUDA_EP, reason="real GPU providers present: the CPU fallback cannot be provoked")
def test_tensorrt_prepare_refuses_a_cpu_session_and_asks_for_one_engine_over_all_batches(tiny_artifacts):
    from signflow_zoo.backends.builtin.onnx_tensorrt import OnnxTensorrtRunner

    runner = OnnxTensorrtRunner(RunnerOptions(device="cuda:1", extra={"max_batch": 64}))
    with pytest.raises(BackendUnavailable, match="bound CPUExecutionProvider instead of TensorrtExecutionProvider"):
        runner.prepare(tiny_artifacts)
    opts = runner.provider_options
    assert opts["device_id"] == 1 and opts["trt_fp16_enable"] == "True"
    assert opts["trt_profile_min_shapes"] == "features:1x2x469,mask:1x2"
    assert opts["trt_profile_opt_shapes"] == "features:1x64x469,mask:1x64"
    assert opts["trt_profile_max_shapes"] == "features:64x256x469,mask:64x256"
    assert Path(opts["trt_engine_cache_path"]) == tiny_artifacts.workdir / "tensorrt"


def test_torch_compile_on_a_gpu_without_triton_says_so(monkeypatch):
    """A CUDA device is faked (none exists here); the missing compiler backend is what gets reported."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a))
    av = TorchCompileBf16Runner.availability()
    assert not av.ok and av.reason == "inductor on CUDA needs triton, which is not installed"


def test_elf_needed_reads_a_real_library():
    lib = next((Path(ort.__file__).parent / "capi").glob("onnxruntime_pybind11_state*.so"))
    needed = provider_libraries.elf_needed(lib)
    assert "libc.so.6" in needed and all(n.startswith(("lib", "ld-")) for n in needed)
    assert provider_libraries.elf_needed(__file__) == []  # not an ELF file


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build a stand-in provider library")
def test_a_provider_library_with_a_missing_dependency_is_named(tmp_path):
    """A stand-in for libonnxruntime_providers_tensorrt.so linked against a libnvinfer.so.10 that is then removed."""
    (tmp_path / "x.c").write_text("int sfz_probe(void) { return 1; }\n")
    dep = tmp_path / "libnvinfer.so.10"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(dep), "-Wl,-soname,libnvinfer.so.10", str(tmp_path / "x.c")],
                   check=True)
    capi = tmp_path / "capi"
    capi.mkdir()
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(capi / "libonnxruntime_providers_tensorrt.so"),
                    str(tmp_path / "x.c"), "-Wl,--no-as-needed", f"-L{tmp_path}", "-l:libnvinfer.so.10"], check=True)
    dep.unlink()
    msg = provider_libraries.provider_library_problem("TensorrtExecutionProvider", capi)
    assert msg.startswith("libonnxruntime_providers_tensorrt.so cannot load, missing libnvinfer.so.10 (TensorRT runtime")
    assert provider_libraries.provider_library_problem("CUDAExecutionProvider", capi) == (
        "libonnxruntime_providers_cuda.so is not part of this onnxruntime install (the CPU build? install onnxruntime-gpu)")
    assert provider_libraries.provider_library_problem("CPUExecutionProvider", capi) is None


# -- torch-compile --------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the CPU rule does not apply")
def test_torch_compile_on_cpu_is_opt_in_and_says_why(monkeypatch):
    reg = PluginRegistry(entry_points=False, environment=False)
    monkeypatch.delenv(CPU_OPT_IN, raising=False)
    for name in ("torch-compile", "torch-compile-bf16"):
        av = reg.availability(name)
        assert not av.ok and f"{CPU_OPT_IN}=1" in av.reason and "compile" in av.reason and "x over eager" in av.reason
    monkeypatch.setenv(CPU_OPT_IN, "1")
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("CXX", "no-such-compiler")
    assert "needs a C++ compiler (no-such-compiler" in reg.availability("torch-compile").reason


def test_stem_convolutions_as_matmul_give_the_same_logits(tiny_artifacts):
    model = tiny_artifacts.torch_model("cpu").eval()
    swapped = tiny_artifacts.torch_model("cpu").eval()
    strided = torch.nn.Sequential(torch.nn.Conv1d(4, 4, 3, stride=2, padding=1))
    assert convs_as_matmul(swapped) == 3 and convs_as_matmul(strided) == 0  # only same-padded stride-1 convs
    assert not any(isinstance(mod, torch.nn.Conv1d) for mod in swapped.modules())
    for b, t in [(1, 64), (3, 17)]:
        x, m = _rand(b, t)
        with torch.inference_mode():
            want = model(torch.from_numpy(x), torch.from_numpy(m))
            got = swapped(torch.from_numpy(x), torch.from_numpy(m))
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_forward_stays_within_the_bf16_tolerance(tiny_artifacts):
    """The bf16 variant's forward (uncompiled here): autocast, since model.to(bfloat16) cannot run this model."""
    model = tiny_artifacts.torch_model("cpu").eval()
    with pytest.raises(RuntimeError, match="dtype"):
        with torch.inference_mode():
            model_copy = tiny_artifacts.torch_model("cpu").eval().to(torch.bfloat16)
            model_copy(torch.zeros(1, 8, FEATURE_DIM, dtype=torch.bfloat16), torch.ones(1, 8, dtype=torch.bool))
    forward = model_forward(model, "cpu", "bfloat16")
    x, m = _rand(8, 64)
    with torch.inference_mode():
        got = forward(torch.from_numpy(x), torch.from_numpy(m))
    want = _reference(tiny_artifacts, x, m)
    assert got.dtype == torch.float32
    res = compare(got.numpy(), want, "bf16")
    assert res.ok and res.max_abs > 0, res.message  # bf16 arithmetic did happen, within its tolerance


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="inductor on CPU needs a C++ compiler")
def test_torch_compile_runs_on_cpu_when_opted_in(monkeypatch, tiny_artifacts):
    """One dynamic compile (bf16 autocast, freezing) serves every batch >= 2 and frame count; its time is
    reported (slow: inductor compiles C++ kernels, about a minute on 2 cores without a warm cache; the
    bf16 variant, because autocast is the part the tf32 variant lacks)."""
    from torch._dynamo.utils import counters

    cls = TorchCompileBf16Runner
    monkeypatch.setenv(CPU_OPT_IN, "1")
    assert cls.availability().ok
    runner = cls(RunnerOptions(threads=2, device="cpu", extra={"compile_shapes": [(2, 16)]}))
    runner.prepare(tiny_artifacts)
    graphs = counters["stats"]["unique_graphs"]
    outs, refs = [], []
    for b, t in [(2, 16), (3, 40), (5, 64)]:
        x, m = _rand(b, t)
        outs.append(runner.run(x, m))
        refs.append(_reference(tiny_artifacts, x, m))
    assert counters["stats"]["unique_graphs"] == graphs  # no recompile for new sizes
    res = compare(np.concatenate(outs), np.concatenate(refs), cls.precision)
    assert res.ok, res.message
    d = runner.describe()
    assert d["compile_s"]["2x16"] > 0 and d["cuda_graphs"] is False and d["provider"] == "torch-inductor-cpu"
    assert d["inductor_options"]["freezing"] is True and d["autocast"] == "bfloat16"
    assert d["stem"] == "3 Conv1d as unfold + matmul"
    runner.close()


# -- on a GPU ------------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh runs it)")
@pytest.mark.parametrize("backend", ["onnx-cuda-graph", "onnx-cuda-graph-fp16", "torch-compile", "torch-compile-bf16"])
def test_on_a_gpu_the_graph_backends_really_capture(backend, tiny_artifacts, tmp_path):
    from dataclasses import replace

    from signflow_zoo.api import ensure_artifact

    reg = PluginRegistry(entry_points=False, environment=False)
    av = reg.availability(backend)
    if not av.ok:
        pytest.skip(f"{backend} is unavailable here: {av.reason}")
    cls = reg.get(backend).cls
    arts = replace(tiny_artifacts, paths=dict(tiny_artifacts.paths), hashes=dict(tiny_artifacts.hashes),
                   info=dict(tiny_artifacts.info))
    ensure_artifact(arts, cls.artifact, reg, home=tmp_path, log=lambda msg: None)
    runner = cls()
    runner.prepare(arts)
    outs, refs = [], []
    for b, t, seed in [(1, 64, 1), (1, 64, 2), (3, 64, 3), (1, 64, 4)]:  # replays at 1x64 with fresh inputs
        x, m = _rand(b, t, seed)
        outs.append(runner.run(x, m))
        refs.append(_reference(tiny_artifacts, x, m))
    res = compare(np.concatenate(outs), np.concatenate(refs), cls.precision)
    assert res.ok, res.message
    d = runner.describe()
    if backend.startswith("onnx"):
        assert d["provider"] == "CUDAExecutionProvider" and d["cuda_graph"] is True
        assert set(d["fixed_shapes"]) == {"1x64", "3x64"}
        assert all(v["replay_check"] == "ok" for v in d["fixed_shapes"].values()), d["fixed_shapes"]
    else:
        assert d["provider"] == "torch-inductor-cuda" and d["cuda_graphs"] is True and d["compile_total_s"] > 0
    runner.close()


# -- in the harness ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_bench_runs_the_graph_path_in_workers_and_reports_gpu_backends_unavailable(tiny_zoo_file, warm_home):
    """The CPU variants through the real harness (parity, accuracy, two batch sizes, streaming) in worker
    processes; the GPU backends are rows with a reason and no timing, never a CPU run under their name."""
    from conftest import TINY_DATA
    from signflow_zoo.bench.harness import BenchConfig, run_bench

    reg = PluginRegistry([gpu_cpu_variants], entry_points=False, environment=False)
    names = ["onnx-cpu", "cpu-graph-test", "cpu-graph-fp16-test"] + GPU_BACKENDS
    cfg = BenchConfig.quick(presets="tiny", backends=",".join(names), data=TINY_DATA, exporter="legacy", track=False,
                            plots=False, zoo_file=str(tiny_zoo_file), progress=False, batch_sizes=(1, 8))
    cfg.timing.min_time = 0.05
    doc = run_bench(cfg, log=lambda msg: None, registry=reg)
    recs = {r["backend"]: r for r in doc["records"]}
    for name in ("cpu-graph-test", "cpu-graph-fp16-test"):
        r = recs[name]
        assert r["status"] == "ok", r["reason"]
        assert set(r["latency"]) == {"1", "8"} and r["parity"]["ok"] and r["stream"].get("predictions", 0) > 0
        assert r["accuracy"]["agreement_top1"] >= 0.95
        assert r["describe"]["fixed_shapes"]["1x64"]["replay_check"] == "ok"
    assert recs["cpu-graph-fp16-test"]["params"]["artifact_sha256"]  # the onnx-fp16 kind was built and hashed
    if not torch.cuda.is_available() and not HAS_CUDA_EP:
        for name in GPU_BACKENDS:
            assert recs[name]["status"] == "unavailable" and recs[name]["reason"], recs[name]
            assert recs[name]["latency"] == {}
