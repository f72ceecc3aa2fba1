"""The regression gate (``python -m pytest benchmarks -m gate``): ratios measured in one run.

Per preset (short mode: lightweight and baseline): every available backend in its own worker process,
timed in the harness's interleaved schedule at batch 1 and 8 (full mode: 32); each backend's p50 over
torch-eager's, and onnx-optimized's over onnx-cpu's. Then the harness's timing loop over a bare runtime
loop, and the streaming pipeline's per-frame cost over a fixed reference workload. See ratio_gate.py.
"""

import time

import numpy as np
import pytest

from conftest import BATCHES, THREADS, ensure_kind
from signflow_zoo.plugins import get_registry
from signflow_zoo.runners import RunnerOptions
from signflow_zoo.schedule import run_schedule, warm
from signflow_zoo.timing import TimingConfig, reference_workload, summarize
from signflow_zoo.worker import BackendWorker, WorkerSpec
from test_bench_backends import batch_of, harness_overhead

pytestmark = pytest.mark.gate

REFERENCE = "torch-eager"
PAIRS = (("onnx-optimized", "onnx-cpu"),)


def _fail_message(failed):
    return "ratios past their thresholds (a performance regression, or rerun `" + \
        "python -m pytest benchmarks -m gate --update-baseline` after a deliberate change):\n" + \
        "\n".join(c.line() for c in failed)


def test_backend_ratios(preset, artifacts_by_preset, gate, request):
    from conftest import available_backends

    arts = artifacts_by_preset(preset)
    names = available_backends()
    if REFERENCE not in names:
        pytest.skip(f"{REFERENCE} is not available here: no ratio can be formed")
    cfg = TimingConfig(min_time=request.config.getoption("gate_min_time"), warmup=10)
    reg = get_registry()
    for n in names:
        ensure_kind(arts, reg.get(n).cls.artifact)
    workers = {n: BackendWorker(n, WorkerSpec(reg.get(n).cls, RunnerOptions(threads=THREADS), arts), cfg.timeout)
               for n in names}
    checks = []
    try:
        for w in workers.values():
            w.call("prepare")
        for batch in BATCHES[request.config.getoption("bench_mode")]:
            x, m = batch_of(batch)
            for w in workers.values():
                w.call("load", "g", x, m)
            outcomes = warm(workers, "g", cfg)
            run_schedule(workers, "g", cfg, outcomes)
            for n, o in outcomes.items():
                if o.error is not None:
                    raise o.error
            p50 = {n: summarize(o.blocks, batch).p50_ms for n, o in outcomes.items()}
            for n in names:
                if n != REFERENCE:
                    checks.append(gate(f"{preset}/b{batch}/{n}:{REFERENCE}", "backend", p50[n] / p50[REFERENCE],
                                       f"{p50[n]:.3f} / {p50[REFERENCE]:.3f} ms"))
            for a, b in PAIRS:
                if a in p50 and b in p50:
                    checks.append(gate(f"{preset}/b{batch}/{a}:{b}", "backend", p50[a] / p50[b],
                                       f"{p50[a]:.3f} / {p50[b]:.3f} ms"))
    finally:
        for w in workers.values():
            w.close()
    failed = [c for c in checks if c.verdict == "FAIL"]
    if not request.config.getoption("update_baseline"):
        assert not failed, _fail_message(failed)


def test_harness_overhead_ratio(lightweight_artifacts, gate, request):
    overhead, ratios = harness_overhead(lightweight_artifacts)
    check = gate("harness/lightweight/b1/timing-loop:bare-ort-loop", "overhead", 1.0 + overhead,
                 f"median of {len(ratios)} alternating blocks")
    if not request.config.getoption("update_baseline"):
        assert check.verdict != "FAIL", _fail_message([check])


def test_pipeline_per_frame_ratio(gate, request):
    """Mean cost of one ``process_frame`` (state machine + features, a model that costs nothing) over the
    reference workload, alternating so that drift hits both."""
    from signflow_zoo.payload import payload_from_raw
    from signflow_zoo.pipeline import PipelineConfig, SignFlowInferencePipeline, stream_from_clips
    from signflow_zoo.runners import Runner
    from signflow_zoo.synthetic import SyntheticSpec, generate

    class NullRunner(Runner):
        name = "gate-null"

        def __init__(self, n):
            super().__init__()
            self.out = np.zeros((1, n), np.float32)
            self.out[0, 0] = 5.0
            self.prepared = True

        def infer(self, features, mask):
            return self.out

    clips, names = generate(SyntheticSpec(num_classes=10, num_signers=1, clips_per_signer_per_class=1, seed=11))
    rows, _ = stream_from_clips(clips, rest_frames=20)
    payloads = [payload_from_raw(r) for r in rows]
    pipe = SignFlowInferencePipeline.from_runner(NullRunner(len(names)), names, PipelineConfig())
    ratios = []
    for _ in range(5):
        ref = reference_workload(repeats=5)
        pipe.reset()
        t0 = time.perf_counter_ns()
        for p in payloads:
            pipe.process_frame(p)
        frame_ms = (time.perf_counter_ns() - t0) / len(payloads) / 1e6
        ratios.append(frame_ms / ref)
    check = gate("pipeline/per-frame:reference-workload", "pipeline", float(np.median(ratios)),
                 f"{len(payloads)} frames, median of {len(ratios)} alternations")
    if not request.config.getoption("update_baseline"):
        assert check.verdict != "FAIL", _fail_message([check])
