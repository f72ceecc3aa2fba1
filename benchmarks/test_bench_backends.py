"""Per-backend latency of lightweight at batch 1 (pytest-benchmark; compare runs with --benchmark-compare),
and the harness's own overhead against a bare ONNX Runtime loop, measured in one run."""

import os
import time

import numpy as np
import pytest

from signflow_zoo.artifact_kinds import ensure_artifact
from signflow_zoo.testing import RandomCalibration
from signflow_zoo.plugins import get_registry
from signflow_zoo.runners import RunnerOptions
from signflow_zoo.timing import TimingConfig, measure_interleaved

BACKENDS = [n for n, be in get_registry().runners.items() if be.cls.availability().ok]
THREADS = os.cpu_count() or 1


@pytest.fixture
def batch1():
    rng = np.random.default_rng(0)
    return rng.standard_normal((1, 64, 469)).astype(np.float32), np.ones((1, 64), bool)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_latency_lightweight_b1(benchmark, backend, lightweight_artifacts, batch1):
    runner = get_registry().get(backend).cls(RunnerOptions(threads=THREADS))
    # untrained weights and no data set here: calibrated kinds (static int8) get the conformance kit's clips
    ensure_artifact(lightweight_artifacts, runner.artifact, get_registry(), home=lightweight_artifacts.workdir,
                    calibration=RandomCalibration())
    runner.prepare(lightweight_artifacts)
    x, m = batch1
    out = benchmark(runner.run, x, m)
    assert out.shape == (1, 20)
    runner.close()


def test_harness_overhead_vs_bare_onnxruntime_loop(lightweight_artifacts, batch1, request):
    """The harness (validation + interleaved timing) against `sess.run` in a plain loop, same session kind.

    Target: <= 3% at lightweight batch 1. Asserted only when benchmarks are enabled (a real measurement);
    with --benchmark-disable (CI's short mode) it runs once and reports.
    """
    import onnxruntime as ort

    x, m = batch1
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = THREADS, 1
    sess = ort.InferenceSession(str(lightweight_artifacts.onnx), so, providers=["CPUExecutionProvider"])
    feeds = {"features": x, "mask": m}
    runner = get_registry().get("onnx-cpu").cls(RunnerOptions(threads=THREADS))
    runner.prepare(lightweight_artifacts)
    disabled = request.config.getoption("benchmark_disable", False)
    iters = 50 if disabled else 400
    ratios = []
    for _ in range(1 if disabled else 5):  # alternate bare and harness blocks so drift hits both
        for _ in range(20):
            sess.run(None, feeds)
        t0 = time.perf_counter_ns()
        for _ in range(iters):
            sess.run(None, feeds)
        bare_ms = (time.perf_counter_ns() - t0) / iters / 1e6
        stats = measure_interleaved({"onnx-cpu": (lambda: runner.run(x, m), None)}, 1,
                                    TimingConfig(warmup=20, min_iters=iters, min_time=0, round_iters=iters))
        ratios.append(stats["onnx-cpu"].mean_ms / bare_ms)
    overhead = float(np.median(ratios)) - 1.0
    print(f"\nharness overhead vs bare ORT loop (lightweight b1): {overhead * 100:+.2f}% (ratios {np.round(ratios, 4)})")
    request.node.user_properties.append(("harness_overhead", overhead))
    if not disabled:
        assert overhead <= 0.03, f"harness adds {overhead * 100:.1f}% over a bare ORT loop (target <= 3%)"
