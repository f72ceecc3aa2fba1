"""The regression gate (``python -m pytest benchmarks -m gate``): ratios measured in one run.

Per preset (short mode: lightweight and baseline): every available backend in its own worker process,
timed in the harness's interleaved schedule at batch 1 and 8 (full mode: 32); each backend's p50 over the
geometric mean of the other backends' p50s in the same run (``X:others``), and onnx-optimized's over
onnx-cpu's and back (``pair``). Why not every backend over torch-eager's: on this machine kind torch-eager and the ONNX Runtime /
OpenVINO family drift apart by up to 57% between runs (a machine state, not a code change), while a backend
over its peers' geometric mean stayed within 24% (benchmarks/SCHEDULE.md). torch-eager itself is checked
with the wider ``reference`` margin. Then the harness's timing loop over a bare runtime
loop, and the streaming pipeline's per-frame cost over a fixed reference workload. See ratio_gate.py.
"""

import time

import numpy as np
import pytest

import ratio_gate

from conftest import BATCHES, THREADS, ensure_kind
from signflow_zoo.plugins import get_registry
from signflow_zoo.runners import RunnerOptions
from signflow_zoo.schedule import run_schedule, warm
from signflow_zoo.timing import TimingConfig, reference_workload, summarize
from signflow_zoo.worker import BackendWorker, WorkerSpec
from test_bench_backends import batch_of, harness_overhead

pytestmark = pytest.mark.gate

REFERENCE = "torch-eager"
# same runtime and graph, so machine drift cancels almost exactly (spread -3% to +4% over 12 runs, a slow
# session aside, which the re-measurement absorbs): both directions, so a slowdown of either one is caught
# at the tighter "pair" margin, not only through its noisier X:others ratio (benchmarks/SCHEDULE.md)
PAIRS = (("onnx-optimized", "onnx-cpu"), ("onnx-cpu", "onnx-optimized"))
ALTERNATIONS = 9


def _fail_message(failed):
    return "ratios past their thresholds (a performance regression, or rerun `" + \
        "python -m pytest benchmarks -m gate --update-baseline` after a deliberate change):\n" + \
        "\n".join(c.line() for c in failed)


def _measure_ratios(preset, arts, names, cfg, batches) -> dict:
    """One measurement of every backend in fresh worker processes: {check name: (kind, ratio, detail, peers)}."""
    reg = get_registry()
    workers = {n: BackendWorker(n, WorkerSpec(reg.get(n).cls, RunnerOptions(threads=THREADS), arts), cfg.timeout)
               for n in names}
    out = {}
    try:
        for w in workers.values():
            w.call("prepare")
        for batch in batches:
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
                peers = sorted(p for p in names if p != n)
                ref = float(np.exp(np.mean([np.log(p50[p]) for p in peers])))
                info = f"{p50[n]:.3f} ms / {ref:.3f} ms geomean of {len(peers)}"
                if n != REFERENCE and REFERENCE in p50:
                    info += f"; {p50[n] / p50[REFERENCE]:.2f}x of {REFERENCE}'s time (not gated)"
                kind = "reference" if n == REFERENCE else "backend"
                out[f"{preset}/b{batch}/{n}:others"] = (kind, p50[n] / ref, info, peers)
            for a, b in PAIRS:
                if a in p50 and b in p50:
                    out[f"{preset}/b{batch}/{a}:{b}"] = ("pair", p50[a] / p50[b], f"{p50[a]:.3f} / {p50[b]:.3f} ms",
                                                         None)
    finally:
        for w in workers.values():
            w.close()
    return out


def _best(attempts: list[dict]) -> dict:
    """Per check, the attempt with the lowest ratio (the backend's undisturbed state), noting how many ran."""
    best = {}
    for att in attempts:
        for name, (kind, value, info, peers) in att.items():
            if name not in best or value < best[name][1]:
                best[name] = (kind, value, info, peers)
    if len(attempts) > 1:
        best = {k: (kind, v, f"{info}; lowest of {len(attempts)} measurements", peers)
                for k, (kind, v, info, peers) in best.items()}
    return best


def test_backend_ratios(preset, artifacts_by_preset, gate, request):
    """Each ratio is the lower of up to two measurements, each in fresh worker processes: an ONNX Runtime
    session on this machine kind sometimes settles in a state ~1.4x slower than its usual one for its whole
    life (benchmarks/SCHEDULE.md); a second session rarely does, while a real regression slows both. The
    baseline is always the lower of two; a run measures a second time only when a ratio is past its threshold."""
    from conftest import available_backends

    arts = artifacts_by_preset(preset)
    names = available_backends()
    if len(names) < 2:
        pytest.skip(f"only {names} available here: a ratio needs two backends")
    cfg = TimingConfig(min_time=request.config.getoption("gate_min_time"), warmup=10)
    reg = get_registry()
    for n in names:
        ensure_kind(arts, reg.get(n).cls.artifact)
    update = request.config.getoption("update_baseline")
    batches = BATCHES[request.config.getoption("bench_mode")]
    attempts = [_measure_ratios(preset, arts, names, cfg, batches)]
    baseline = ratio_gate.load_baseline()
    past = [k for k, (kind, v, _, peers) in attempts[0].items()
            if ratio_gate.judge(k, kind, v, baseline=baseline, peers=peers).verdict == "FAIL"]
    if update or past:
        attempts.append(_measure_ratios(preset, arts, names, cfg, batches))
    checks = [gate(name, kind, value, info, peers=peers)
              for name, (kind, value, info, peers) in _best(attempts).items()]
    failed = [c for c in checks if c.verdict == "FAIL"]
    if not update:
        assert not failed, _fail_message(failed)


def _lower_on_failure(name, kind, measure, request):
    """Measure once (twice when updating the baseline, or when the first value is past its threshold) and
    keep the lower value: a burst of load on the shared machine raises a ratio, a regression raises both."""
    value, detail = measure()
    again = request.config.getoption("update_baseline") or \
        ratio_gate.judge(name, kind, value, baseline=ratio_gate.load_baseline()).verdict == "FAIL"
    if again:
        v2, d2 = measure()
        (value, detail) = min((value, detail), (v2, d2))
        detail += "; lower of 2 measurements"
    return value, detail


def test_harness_overhead_ratio(lightweight_artifacts, gate, request):
    name = "harness/lightweight/b1/timing-loop:bare-ort-loop"

    def measure():
        overhead, ratios = harness_overhead(lightweight_artifacts)
        return 1.0 + overhead, f"median of {len(ratios)} alternating blocks"

    check = gate(name, "overhead", *_lower_on_failure(name, "overhead", measure, request))
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
    name = "pipeline/per-frame:reference-workload"

    def measure():
        frames, refs = [], []
        for _ in range(ALTERNATIONS):
            refs.append(reference_workload(repeats=5))
            pipe.reset()
            t0 = time.perf_counter_ns()
            for p in payloads:
                pipe.process_frame(p)
            frames.append((time.perf_counter_ns() - t0) / len(payloads) / 1e6)
        # the least-disturbed reading of each (their minima): a burst of load on the shared machine lands on
        # one side of an alternation and would otherwise move the ratio by a third (benchmarks/SCHEDULE.md)
        return min(frames) / min(refs), f"{len(payloads)} frames; fastest of {ALTERNATIONS} alternations each"

    check = gate(name, "pipeline", *_lower_on_failure(name, "pipeline", measure, request))
    if not request.config.getoption("update_baseline"):
        assert check.verdict != "FAIL", _fail_message([check])
