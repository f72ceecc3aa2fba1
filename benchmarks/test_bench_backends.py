"""Per-call latency of every preset x every available backend x batch size (pytest-benchmark), and the
harness's timing loop against a bare ONNX Runtime loop.

Absolute numbers, for users on a stable machine (``--benchmark-compare``, ``--benchmark-compare-fail``);
the CI gate on ratios measured within one run is ``test_gate.py``. Each benchmark runs its backend alone
in this process, calls back to back: the "solo" way of timing.
"""

import time

import numpy as np
import pytest

from conftest import THREADS, ensure_kind
from signflow_zoo.plugins import get_registry
from signflow_zoo.backends.runner import RunnerOptions
from signflow_zoo.bench.timing import time_block
from signflow_zoo.data.features import FEATURE_DIM


def batch_of(batch: int):
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, 64, FEATURE_DIM)).astype(np.float32), np.ones((batch, 64), bool)


def test_backend_latency(benchmark, preset, backend, batch, artifacts_by_preset):
    arts = artifacts_by_preset(preset)
    runner = get_registry().get(backend).cls(RunnerOptions(threads=THREADS))
    ensure_kind(arts, runner.artifact)
    runner.prepare(arts)
    x, m = batch_of(batch)
    try:
        out = benchmark.pedantic(runner.run, args=(x, m), rounds=max(5, 20 // batch), iterations=1,
                                 warmup_rounds=3)
        assert out.shape == (batch, arts.num_classes) and np.isfinite(out).all()
        benchmark.extra_info.update({"preset": preset, "backend": backend, "batch": batch, "threads": THREADS,
                                     "describe": runner.describe()})
    finally:
        runner.close()


def harness_overhead(artifacts, blocks: int = 5, iters: int = 400,
                     record: list[dict] | None = None) -> tuple[float, list[float]]:
    """Median over alternating blocks of (harness timing loop mean) / (bare ``sess.run`` loop mean) - 1.

    ``record``, when given, gets one dict per block: ``bare_ms``, ``harness_ms`` (mean per call), ``calls``
    (harness calls timed) and ``ratio``."""
    import onnxruntime as ort

    x, m = batch_of(1)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = THREADS, 1
    sess = ort.InferenceSession(str(artifacts.onnx), so, providers=["CPUExecutionProvider"])
    feeds = {"features": x, "mask": m}
    runner = get_registry().get("onnx-cpu").cls(RunnerOptions(threads=THREADS))
    runner.prepare(artifacts)
    ratios = []
    try:
        for _ in range(blocks):  # alternate bare and harness blocks so drift hits both
            for _ in range(20):
                sess.run(None, feeds)
            t0 = time.perf_counter_ns()
            for _ in range(iters):
                sess.run(None, feeds)
            bare_ms = (time.perf_counter_ns() - t0) / iters / 1e6
            samples, _ = time_block(lambda: runner.run(x, m), None, iters, 0.0, discard=20)
            harness_ms = float(np.mean(samples)) / 1e6
            ratios.append(harness_ms / bare_ms)
            if record is not None:
                record.append({"bare_ms": bare_ms, "harness_ms": harness_ms, "calls": len(samples),
                               "ratio": ratios[-1]})
    finally:
        runner.close()
    return float(np.median(ratios)) - 1.0, ratios


def test_harness_overhead_vs_bare_onnxruntime_loop(lightweight_artifacts, request):
    """The timing loop every backend worker runs (runner validation + per-call clock) against a bare loop.

    Target <= 3% at lightweight batch 1; the gate (test_gate.py) holds it against its baseline.
    """
    disabled = request.config.getoption("benchmark_disable", False)
    blocks, iters = (1, 50) if disabled else (5, 400)
    record: list[dict] = []
    overhead, ratios = harness_overhead(lightweight_artifacts, blocks=blocks, iters=iters, record=record)
    print(f"\nharness overhead vs bare ORT loop (lightweight b1): {overhead * 100:+.2f}% (ratios {np.round(ratios, 4)})")
    request.node.user_properties.append(("harness_overhead", overhead))
    # what is stored is consistent: one ratio per block, each the harness mean over the bare mean of that block,
    # both finite times from the number of calls asked; the overhead is the median ratio less one
    assert len(record) == len(ratios) == blocks
    for rec, ratio in zip(record, ratios):
        assert rec["calls"] == iters
        assert all(np.isfinite(rec[k]) and rec[k] > 0 for k in ("bare_ms", "harness_ms"))
        assert np.isfinite(ratio) and ratio == rec["ratio"] == pytest.approx(rec["harness_ms"] / rec["bare_ms"])
    assert overhead == pytest.approx(float(np.median(ratios)) - 1.0)
