"""Effective precision: what a backend really ran, read back from its session or compiled model after prepare
(``Runner.effective_precision``), recorded beside the declared precision, flattened and marked in the report.

Real sessions on the tiny model. The OpenVINO checks depend on the CPU: one with AVX512_BF16 or AMX computes in bf16
unless asked for f32, one without computes in f32; each test works out which from /proc/cpuinfo and asserts that.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_DATA
from signflow_zoo import report
from signflow_zoo.api import FEATURE_DIM, OrtRunner, Runner, RunnerOptions, hookimpl
from signflow_zoo.plugins import PluginRegistry

try:  # the plugin's modules import without openvino (it is imported when a runner is used)
    import signflow_zoo_openvino
    from signflow_zoo_openvino import runners as ov_runners
except ImportError:  # pragma: no cover - the plugin is not installed here
    signflow_zoo_openvino = ov_runners = None  # type: ignore[assignment]

BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def cpuinfo_flags() -> set[str] | None:
    """This CPU's flags from /proc/cpuinfo (not $SIGNFLOW_ZOO_CPU_FLAGS: OpenVINO looks at the real CPU)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.partition(":")[2].split()}


def openvino_here():
    """The OpenVINO plugin's runners module and whether this CPU computes bf16; skips with the reason otherwise."""
    if ov_runners is None:
        pytest.skip("the signflow-zoo-openvino plugin is not installed (pip install -e plugins/signflow-zoo-openvino)")
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed (pip install openvino)")
    flags = cpuinfo_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo: cannot tell whether this CPU computes bf16")
    return ov_runners, bool(BF16_FLAGS & flags)


@pytest.fixture(scope="module")
def ir_artifacts(tiny_artifacts, tmp_path_factory):
    """The tiny artifacts with the OpenVINO IR (fp32 weights) built by the plugin's artifact kind."""
    openvino_here()
    from signflow_zoo.api import ensure_artifact

    arts = replace(tiny_artifacts, hashes=dict(tiny_artifacts.hashes), info=dict(tiny_artifacts.info),
                   paths=dict(tiny_artifacts.paths))
    reg = PluginRegistry([signflow_zoo_openvino], entry_points=False, environment=False)
    ensure_artifact(arts, "openvino-ir", reg, home=tmp_path_factory.mktemp("ov-home"), log=lambda msg: None)
    return arts


# -- throwaway backends (module level: a bench worker imports them by reference) ---------------------------------
if ov_runners is not None:
    class OpenVinoAskedForNothing(ov_runners.OpenVinoFp32Runner):
        """Declares fp32 and compiles the fp32 IR for the CPU without INFERENCE_PRECISION_HINT: OpenVINO's default."""

        name = "test-openvino-no-hint"

        def config(self):
            return {k: v for k, v in super().config().items() if k != "INFERENCE_PRECISION_HINT"}


class DeclaresFp16(OrtRunner):
    """Declares fp16 and runs the fp32 graph on the CPU: its own read-back says so."""

    name = "test-declares-fp16"
    artifact = "onnx"
    precision = "fp16"

    def effective_precision(self) -> dict[str, str]:
        return {"precision": "fp32", "device": "cpu", "how": "test: the fp32 graph on ONNX Runtime's CPU provider"}


class ReadBackRaises(OrtRunner):
    name = "test-readback-raises"
    artifact = "onnx"

    def effective_precision(self) -> dict[str, str]:
        raise RuntimeError("cannot ask this runtime what it ran")


class ReadBackExits(OrtRunner):
    name = "test-readback-exits"
    artifact = "onnx"

    def effective_precision(self) -> dict[str, str]:
        raise SystemExit(3)  # not an Exception: the worker answers the request with an error, and lives on


class ThrowawayPlugin:
    @hookimpl
    def register_runners(self, register):
        register(DeclaresFp16)
        register(ReadBackRaises)


def prepared(cls, arts):
    runner = cls(RunnerOptions(threads=1))
    runner.prepare(arts)
    return runner


# -- built-in runners ----------------------------------------------------------------------------------------
def test_onnx_cpu_and_torch_eager_read_back_fp32_on_the_cpu(tiny_artifacts):
    import torch

    reg = PluginRegistry(entry_points=False, environment=False)
    onnx_cpu = prepared(reg.get("onnx-cpu").cls, tiny_artifacts)
    got = onnx_cpu.effective_precision()
    assert (got["precision"], got["device"]) == ("fp32", "cpu")
    assert "CPUExecutionProvider" in got["how"] and "float32" in got["how"]
    eager = reg.get("torch-eager").cls(RunnerOptions(threads=1, device="cpu"))
    eager.prepare(tiny_artifacts)
    got = eager.effective_precision()
    assert (got["precision"], got["device"]) == ("fp32", "cpu") and "float32" in got["how"]
    eager.model.to(torch.bfloat16)  # what the parameters are is what is read back, not the declaration
    assert eager.effective_precision()["precision"] == "bf16" and eager.precision == "fp32"


def test_the_default_is_the_declaration_and_says_so():
    class Declared(Runner):
        name = "test-declared"
        precision = "int8"
        device_kind = "gpu"

    got = Declared().effective_precision()
    assert got == {"precision": "int8", "device": "gpu", "how": "declared by the runner (it does not read back what ran)"}


def test_an_onnx_graph_says_its_precision_and_a_session_its_provider(tiny_artifacts, tmp_path):
    import onnxruntime as ort

    from signflow_zoo.api import BuildContext
    from signflow_zoo.backends.builtin.onnx_cuda import OnnxFp16Kind
    from signflow_zoo.backends.ort import graph_precision, session_precision

    assert graph_precision(tiny_artifacts.onnx)[0] == "fp32"
    (tmp_path / "fp16").mkdir()
    OnnxFp16Kind().build(BuildContext("tiny", tiny_artifacts.onnx, tmp_path / "fp16", None, lambda msg: None))
    fp16 = tmp_path / "fp16" / "model.onnx"
    precision, what = graph_precision(fp16)
    assert precision == "fp16" and "float16" in what
    # a session asked for CUDA that runs on the CPU provider is read back as what it is
    sess = ort.InferenceSession(str(fp16), providers=["CPUExecutionProvider"])
    got = session_precision(sess, fp16, asked="CUDAExecutionProvider")
    assert got["precision"] == "fp16" and got["device"] == "cpu"
    assert "bound CPUExecutionProvider (asked for CUDAExecutionProvider)" in got["how"]


def test_an_int8_graph_reads_back_int8(tiny_artifacts, tmp_path):
    pytest.importorskip("onnxruntime.quantization")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from signflow_zoo.backends.ort import graph_precision

    out = tmp_path / "int8.onnx"
    quantize_dynamic(str(tiny_artifacts.onnx), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    precision, what = graph_precision(out)
    assert precision == "int8" and "MatMulInteger" in what


# -- OpenVINO ------------------------------------------------------------------------------------------------------
def test_openvino_fp32_reads_back_fp32_on_every_cpu(ir_artifacts):
    runners, _ = openvino_here()
    runner = prepared(runners.OpenVinoFp32Runner, ir_artifacts)
    got = runner.effective_precision()
    assert (got["precision"], got["device"]) == ("fp32", "cpu")
    assert "INFERENCE_PRECISION_HINT=f32" in got["how"] and "EXECUTION_DEVICES=CPU" in got["how"]
    runner.close()


def test_openvino_bf16_runs_bf16_or_says_it_cannot(ir_artifacts):
    runners, bf16_cpu = openvino_here()
    av = runners.OpenVinoBf16Runner.availability()
    if not bf16_cpu:  # refused as unavailable, not run in f32 under the name bf16
        assert not av.ok and "bf16" in av.reason
        return
    assert av.ok, av.reason
    runner = prepared(runners.OpenVinoBf16Runner, ir_artifacts)
    assert runner.effective_precision()["precision"] == "bf16"
    runner.close()


@pytest.mark.slow  # NNCF quantizes the IR first: several seconds
def test_openvino_int8_reads_back_int8_with_the_precision_of_the_rest(ir_artifacts, tmp_path):
    runners, _ = openvino_here()
    if importlib.util.find_spec("nncf") is None:
        pytest.skip("nncf is not installed (pip install nncf): no int8 IR")
    from signflow_zoo.api import ensure_artifact
    from signflow_zoo.testing import RandomCalibration

    arts = replace(ir_artifacts, hashes=dict(ir_artifacts.hashes), info=dict(ir_artifacts.info),
                   paths=dict(ir_artifacts.paths))
    reg = PluginRegistry([signflow_zoo_openvino], entry_points=False, environment=False)
    ensure_artifact(arts, "openvino-int8", reg, home=tmp_path, calibration=RandomCalibration(), log=lambda msg: None)
    runner = prepared(runners.OpenVinoInt8Runner, arts)
    got = runner.effective_precision()
    assert (got["precision"], got["device"]) == ("int8", "cpu")
    assert "int8 where quantized" in got["how"] and "the rest fp32" in got["how"]  # the runner asks f32 for the rest
    runner.close()


def test_openvino_asked_for_nothing_runs_what_this_cpu_computes_and_the_row_says_so(ir_artifacts):
    """OpenVINO's default on a bf16 CPU is bf16: the declared fp32 is then a mismatch, in the record, the flat
    record and the report row; on another CPU it is fp32 and nothing is flagged."""
    openvino_here()
    from signflow_zoo.bench import scenarios
    from signflow_zoo.bench.worker import BackendWorker, WorkerSpec
    from signflow_zoo.results.files import flatten
    from signflow_zoo.results.records import BenchRecord

    bf16_cpu = bool(BF16_FLAGS & (cpuinfo_flags() or set()))
    cls = OpenVinoAskedForNothing
    rec = BenchRecord("r-ov", "tiny", cls.name, params={"precision": cls.precision})
    logs: list[str] = []
    with BackendWorker(cls.name, WorkerSpec(cls, RunnerOptions(threads=1), ir_artifacts), timeout=120) as worker:
        lane = scenarios.Lane(rec, worker, cls.precision)
        scenarios.prepare(lane, logs.append)
    assert rec.status == "ok", rec.reason
    eff = rec.effective_precision
    want = "bf16" if bf16_cpu else "fp32"
    assert (eff["precision"], eff["device"], eff["declared"]) == (want, "cpu", "fp32")
    assert eff["mismatch"] is bf16_cpu and f"INFERENCE_PRECISION_HINT={want.replace('fp', 'f')}" in eff["how"]
    warned = [line for line in logs if "declared fp32 but ran" in line]
    assert warned == ([f"tiny/{cls.name}: declared fp32 but ran bf16 ({eff['how']})"] if bf16_cpu else [])

    flat = flatten(rec.to_dict(), {})
    assert (flat["effective_precision"], flat["effective_device"]) == (want, "cpu")
    assert flat["precision_mismatch"] == (1.0 if bf16_cpu else 0.0)
    table = report.comparison_table([flat], wide=False)
    row = next(line for line in table.splitlines() if cls.name in line)
    assert ("fp32→bf16" in row) is bf16_cpu and ("declares precision A but ran B" in " ".join(table.split())) is bf16_cpu
    wide = report.comparison_table([flat], fmt="markdown")
    assert ("| fp32→bf16 " if bf16_cpu else "| fp32 ") in next(line for line in wide.splitlines() if cls.name in line)


def test_a_lane_records_what_ran_and_a_read_back_that_fails_never_fails_the_backend(tiny_artifacts):
    from signflow_zoo.bench import scenarios
    from signflow_zoo.bench.worker import BackendWorker, WorkerSpec
    from signflow_zoo.results.records import BenchRecord

    got = {}
    for cls in (DeclaresFp16, ReadBackRaises, ReadBackExits):
        rec = BenchRecord(f"r-{cls.name}", "tiny", cls.name, params={"precision": cls.precision})
        logs: list[str] = []
        with BackendWorker(cls.name, WorkerSpec(cls, RunnerOptions(threads=1), tiny_artifacts), timeout=60) as worker:
            lane = scenarios.Lane(rec, worker, cls.precision)
            scenarios.prepare(lane, logs.append)
            assert lane.live and rec.status == "ok", rec.reason
            logits = worker.call("run", np.zeros((1, 4, FEATURE_DIM), np.float32), np.ones((1, 4), bool))
            assert logits.shape == (1, tiny_artifacts.num_classes)  # the worker lives on and runs
        got[cls.name] = (rec.effective_precision, logs)
    eff, logs = got[DeclaresFp16.name]
    assert eff["precision"] == "fp32" and eff["declared"] == "fp16" and eff["mismatch"] is True
    assert logs == [f"tiny/{DeclaresFp16.name}: declared fp16 but ran fp32 ({eff['how']})"]
    eff, logs = got[ReadBackRaises.name]
    assert eff == {"precision": "", "device": "", "declared": "fp32", "mismatch": False,
                   "how": "effective_precision() raised RuntimeError: cannot ask this runtime what it ran"}
    assert logs == [f"tiny/{ReadBackRaises.name}: note: effective precision not read back: {eff['how']}"]
    eff, logs = got[ReadBackExits.name]  # the request itself failed: nothing recorded, a note, the backend goes on
    assert eff == {} and len(logs) == 1 and "effective precision not read back (SystemExit" in logs[0]


# -- through the bench -------------------------------------------------------------------------------------------
@pytest.mark.slow  # a bench run (worker processes, parity, timing): a few seconds
def test_a_declared_precision_that_did_not_run_is_flagged_end_to_end_and_a_failed_read_back_is_a_note(
        tiny_zoo_file, warm_home, monkeypatch):
    from signflow_zoo.bench import roofline
    from signflow_zoo.bench.harness import BenchConfig, run_bench
    from signflow_zoo.results.files import flat_records

    # this machine's matmul ceilings take ~15 s to measure, and play no part here
    monkeypatch.setattr(roofline, "load_or_measure", lambda threads, **kw: {"ceilings": {"fp32": 1.0}})

    reg = PluginRegistry([ThrowawayPlugin()], entry_points=False, environment=False)
    cfg = BenchConfig.quick(presets="tiny", backends=f"{DeclaresFp16.name},{ReadBackRaises.name}", data=TINY_DATA,
                            exporter="legacy", track=False, stream=False, plots=False, accuracy=False,
                            zoo_file=str(tiny_zoo_file), progress=False, batch_sizes=(1,))
    cfg.timing.min_time = 0.05
    logs: list[str] = []
    doc = run_bench(cfg, log=logs.append, registry=reg)
    recs = {r["backend"]: r for r in doc["records"]}

    fp16 = recs[DeclaresFp16.name]
    assert fp16["status"] == "ok", fp16["reason"]
    assert fp16["effective_precision"] == {"precision": "fp32", "device": "cpu", "declared": "fp16", "mismatch": True,
                                           "how": "test: the fp32 graph on ONNX Runtime's CPU provider"}
    assert f"tiny/{DeclaresFp16.name}: declared fp16 but ran fp32 (test: the fp32 graph on ONNX Runtime's CPU " \
           "provider)" in logs

    raised = recs[ReadBackRaises.name]  # the backend is measured all the same; its record says why there is no answer
    assert raised["status"] == "ok" and raised["latency"]["1"]["p50_ms"] > 0
    assert raised["effective_precision"]["precision"] == "" and not raised["effective_precision"]["mismatch"]
    assert raised["effective_precision"]["how"] == ("effective_precision() raised RuntimeError: cannot ask this runtime "
                                                    "what it ran")
    assert any(ReadBackRaises.name in line and "effective_precision() raised RuntimeError" in line for line in logs)

    flat = {f["backend"]: f for f in flat_records(doc)}
    assert flat[DeclaresFp16.name]["precision_mismatch"] == 1.0 and flat[ReadBackRaises.name]["precision_mismatch"] == 0.0
    assert (flat[DeclaresFp16.name]["precision"], flat[DeclaresFp16.name]["effective_precision"]) == ("fp16", "fp32")
    table = report.comparison_table(list(flat.values()))
    assert "ok fp16→fp32" in next(line for line in table.splitlines() if DeclaresFp16.name in line)
    assert "→" not in next(line for line in table.splitlines() if ReadBackRaises.name in line)
    rows = {r["backend"]: r for r in json.loads(report.comparison_table(list(flat.values()), fmt="json"))}
    assert rows[DeclaresFp16.name]["precision_mismatch"] is True and rows[DeclaresFp16.name]["effective_device"] == "cpu"
    assert rows[ReadBackRaises.name]["precision_mismatch"] is False and rows[ReadBackRaises.name]["effective_precision"] is None
