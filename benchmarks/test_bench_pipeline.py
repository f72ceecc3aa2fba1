"""Benchmarks of the streaming pipeline (pytest-benchmark).

Targets (from the issue; reported in ``extra_info``, never asserted -- timing asserts make flaky tests):

- the per-frame non-model path (validate the payload + buffer + state machine, and features for a
  finished window) <= 0.5 ms p99 per frame;
- end to end with ``large`` (untrained weights: same cost) on onnx-cpu >= 30 frames/s sustained, 2 threads.

Full run:   pytest benchmarks/test_bench_pipeline.py --benchmark-json=bench-pipeline.json
Short mode: pytest benchmarks/test_bench_pipeline.py --benchmark-disable   (each body runs once, as a test)
Compare:    --benchmark-compare / --benchmark-compare-fail=median:20%

Measured 2026-11-26 (``taskset -c 0,1``: 2 cores of an Intel Xeon host of an H100 machine, quiet; Python 3.12,
ORT 1.30, numpy 2.5): frames that end nothing p50 0.066 ms, p99 0.12 ms (payload validation alone 0.058 ms);
every frame, sign ends included, p99 2.3 ms -- the frames that end a sign (about 1.3% of this stream) pay
resample + enrich of the window, 1.64 ms (``features.enrich``); large on onnx-cpu, 2 threads: 3,830 frames/s
fed as fast as possible, sign latency (last frame -> prediction) p50 11.1 ms / p99 12.0 ms of which the model
9.2 ms. On the shared 2-core development VM (load ~4) every number was 1-4x worse and noisy.
Motion measured on hip-centred coordinates (as the original) then added ~22% to frames that end nothing
(p50 0.046 vs 0.038 ms, p99 0.074 vs 0.058 ms, three alternating runs of both versions on the shared VM at
load ~2, 2026-11-26). Dividing by the body scale too (the original's units, 118fad0) added ~0.006 ms p50 per
frame to the motion measure itself (``FrameHands`` + ``motion_to``: p50 0.018 vs 0.012 ms, six alternating runs
of both versions over 310 synthetic frames, shared 2-core Intel Xeon VM at load ~6, 2026-12-02); the whole
per-frame path was not re-timed.

Not timings: ``test_long_stream_memory_is_bounded`` records the peak resident memory a 10,000- and a
100,000-frame replay add (bounded: about equal), ``test_presence_rule_segmentation`` how many signs the state
machine finds with and without the original's reading of tracking dropouts as motion.
"""

from __future__ import annotations

import numpy as np
import pytest

from signflow_zoo.data.features import prepare_clip
from signflow_zoo.serve.payload import parse_payload, payload_from_raw
from signflow_zoo.serve.pipeline import PipelineConfig, SignFlowInferencePipeline
from signflow_zoo.serve.replay import RestNoise, replay_stream, segmentation_score, stream_from_clips, stream_spans
from signflow_zoo.backends.runner import Runner
from signflow_zoo.data.synthetic import SyntheticSpec, generate

FRAME_TARGET_P99_MS = 0.5
FPS_TARGET = 30.0
THREADS = 2


class NullRunner(Runner):
    """A model that costs nothing: isolates the pipeline's own per-frame cost."""

    name = "bench-null"
    artifact = "onnx"

    def __init__(self, num_classes: int):
        super().__init__()
        self.out = np.zeros((1, num_classes), np.float32)
        self.out[0, 0] = 5.0
        self.prepared = True

    def infer(self, features, mask):
        return self.out


@pytest.fixture(scope="module")
def stream():
    """Ten signs (one signer) replayed as browser payloads, with rest frames between them."""
    clips, names = generate(SyntheticSpec(num_classes=10, num_signers=1, clips_per_signer_per_class=1, seed=11))
    rows, spans = stream_from_clips(clips, rest_frames=20)
    return {"names": names, "rows": rows, "spans": spans, "payloads": [payload_from_raw(r) for r in rows],
            "clips": clips}


def _percentiles_ms(benchmark) -> dict:
    """p50/p99 of the recorded rounds, in ms (None in --benchmark-disable mode: nothing was timed)."""
    stats = getattr(benchmark, "stats", None)
    data = getattr(getattr(stats, "stats", None), "data", None)
    if not data:
        return {}
    a = np.asarray(data) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()), "max_ms": float(a.max())}


def _frame_feeder(pipe, payloads):
    """One frame per call, cycling through ``payloads``; ``counts`` says how many frames and sign ends."""
    counts = {"frames": 0, "ended": 0}

    def one_frame():
        i = counts["frames"] % len(payloads)
        if i == 0:
            pipe.reset()  # the stream starts over: no jump from its last frame to its first
        counts["frames"] += 1
        p = pipe.process_frame(payloads[i])
        counts["ended"] += p.ended
        return p

    return one_frame, counts


def _ends_per_pass(names, payloads) -> int:
    probe = SignFlowInferencePipeline.from_runner(NullRunner(len(names)), names, PipelineConfig(warmup=False))
    return sum(probe.process_frame(p).ended for p in payloads)


def test_parse_payload(benchmark, stream):
    payload = stream["payloads"][len(stream["payloads"]) // 2]
    row, _ = benchmark(parse_payload, payload)
    assert row.shape == (225,)


def test_frame_path_every_frame(benchmark, stream):
    """Validate + buffer + state machine on every frame of the stream, features of each finished window
    included (the null model costs nothing). One round = one frame, so the percentiles are per frame."""
    payloads = stream["payloads"]
    pipe = SignFlowInferencePipeline.from_runner(NullRunner(len(stream["names"])), stream["names"], PipelineConfig())
    feed, counts = _frame_feeder(pipe, payloads)
    benchmark.pedantic(feed, rounds=2 * len(payloads), iterations=1, warmup_rounds=len(payloads))
    # every pass over the stream ends the same signs (short mode runs one frame: no pass is complete)
    passes, rest = divmod(counts["frames"], len(payloads))
    per_pass = _ends_per_pass(stream["names"], payloads)
    assert per_pass >= len(stream["spans"]) // 2
    assert counts["ended"] == passes * per_pass + _ends_per_pass(stream["names"], payloads[:rest])
    pct = _percentiles_ms(benchmark)
    benchmark.extra_info.update({"frames": len(payloads), "signs": len(stream["spans"]), **pct,
                                 "target_p99_ms": FRAME_TARGET_P99_MS})
    if pct:
        benchmark.extra_info["meets_target"] = pct["p99_ms"] <= FRAME_TARGET_P99_MS


def test_frame_path_frames_that_end_nothing(benchmark, stream):
    """The same, on the frames that do not end a sign (what nearly every frame costs)."""
    names, payloads = stream["names"], stream["payloads"]
    probe = SignFlowInferencePipeline.from_runner(NullRunner(len(names)), names, PipelineConfig(warmup=False))
    ends = {i for i, p in enumerate(payloads) if probe.process_frame(p).ended}
    quiet = [p for i, p in enumerate(payloads) if i not in ends and i + 1 not in ends]
    never_ends = PipelineConfig(max_sign_frames=100_000, min_rest_frames=99_000)
    pipe = SignFlowInferencePipeline.from_runner(NullRunner(len(names)), names, never_ends)
    feed, counts = _frame_feeder(pipe, quiet)  # never ends a sign: pure validate + buffer + state machine
    rounds = 2 * len(quiet)
    assert rounds + 200 < never_ends.max_sign_frames  # so no window can fill up
    benchmark.pedantic(feed, rounds=rounds, iterations=1, warmup_rounds=200)
    assert counts["frames"] >= 1 and counts["ended"] == 0
    pct = _percentiles_ms(benchmark)
    benchmark.extra_info.update({"frames": len(quiet), **pct, "target_p99_ms": FRAME_TARGET_P99_MS})


def test_features_of_a_finished_window(benchmark, stream):
    """Resample + enrich one sign window (paid once per sign, on the frame that ends it)."""
    raw = stream["clips"][3].raw
    feats, mask = benchmark(prepare_clip, raw)
    assert feats.shape == (64, 469) and mask.shape == (64,)
    benchmark.extra_info.update({"window_frames": int(len(raw)), **_percentiles_ms(benchmark)})


@pytest.fixture(scope="module")
def large_onnx_runner(tmp_path_factory, stream):
    """``large`` with untrained weights (inference costs the same), exported once, on onnx-cpu, 2 threads."""
    import torch

    from signflow_zoo.backends.artifacts import artifacts_from_model_file
    from signflow_zoo.model.export import serving_metadata
    from signflow_zoo.model.export import export_to_onnx
    from signflow_zoo.model.network import build_model
    from signflow_zoo.plugins import get_registry
    from signflow_zoo.backends.runner import RunnerOptions
    from signflow_zoo.model.zoo import get_model_config

    cls = get_registry().get("onnx-cpu").cls
    available = cls.availability()
    if not available:
        pytest.skip(f"onnx-cpu cannot run here: {available.reason}")
    torch.manual_seed(0)
    names = stream["names"]
    model = build_model(get_model_config("large"), len(names)).eval()
    path = tmp_path_factory.mktemp("large") / "large.onnx"
    meta = serving_metadata({"preset": "large", "labels": names, "model_kwargs": model.init_kwargs})
    export_to_onnx(model, path, metadata=meta, exporter="legacy", verify=False)
    runner = cls(RunnerOptions(threads=THREADS))
    runner.prepare(artifacts_from_model_file(path))
    yield runner
    runner.close()


def test_end_to_end_large_onnx_cpu(benchmark, stream, large_onnx_runner):
    """The whole stream through validation, state machine, features and ``large`` on onnx-cpu (2 threads),
    fed as fast as it goes: frames/s sustained, and the slowest frame against a 30 fps frame budget."""
    names, payloads = stream["names"], stream["payloads"]
    pipe = SignFlowInferencePipeline.from_runner(large_onnx_runner, names, PipelineConfig())
    rounds: list[list[float]] = []

    def replay():
        import time

        pipe.reset()
        signs, times = 0, []
        for p in payloads:
            t0 = time.perf_counter()
            signs += pipe.process_frame(p).ended
            times.append((time.perf_counter() - t0) * 1e3)
        rounds.append(times)
        return signs

    signs = benchmark.pedantic(replay, rounds=5, iterations=1, warmup_rounds=1)
    assert signs >= len(stream["spans"]) // 2
    stats = getattr(benchmark, "stats", None)
    seconds = stats.stats.median if stats is not None and getattr(stats, "stats", None) else None
    ft = np.concatenate(rounds[1:] if len(rounds) > 1 else rounds)  # the warm-up round is not counted
    info = {"frames": len(payloads), "signs": int(signs), "threads": THREADS,
            "worst_frame_ms": float(ft.max()), "p99_frame_ms": float(np.percentile(ft, 99)),
            "frame_budget_ms": 1e3 / FPS_TARGET, "target_fps": FPS_TARGET, "runner": large_onnx_runner.describe()}
    if seconds:
        info["frames_per_s"] = len(payloads) / seconds
        info["meets_target"] = info["frames_per_s"] >= FPS_TARGET and info["worst_frame_ms"] <= 1e3 / FPS_TARGET
    benchmark.extra_info.update(info)


def test_sign_latency_large_onnx_cpu(benchmark, stream, large_onnx_runner):
    """Last frame of a sign -> its prediction, through :func:`measure_stream_latency` (the harness's)."""
    from signflow_zoo.serve.replay import measure_stream_latency

    res = benchmark.pedantic(measure_stream_latency, args=(large_onnx_runner, stream["names"], stream["clips"]),
                             kwargs={"repeats": 2}, rounds=1, iterations=1)
    assert res["predictions"] >= len(stream["clips"])
    benchmark.extra_info.update({k: res[k] for k in ("latency_ms", "model_ms", "features_ms", "frame_ms",
                                                     "frames_per_s", "trustworthy")})


_MEMORY_CHILD = """
import json, sys
import numpy as np
from signflow_zoo.serve.pipeline import SignFlowInferencePipeline
from signflow_zoo.serve.replay import replay_stream
from signflow_zoo.backends.runner import Runner
from signflow_zoo.data.synthetic import SyntheticSpec, generate

class Null(Runner):
    name, artifact = "bench-null", "onnx"
    def __init__(self, n):
        super().__init__(); self.out = np.zeros((1, n), np.float32); self.out[0, 0] = 5.0; self.prepared = True
    def infer(self, features, mask):
        return self.out

def kb(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))

clips, names = generate(SyntheticSpec(num_classes=10, num_signers=1, clips_per_signer_per_class=1, seed=11))
clip = np.resize(np.concatenate([c.raw for c in clips]), (int(sys.argv[1]), 225)).astype(np.float32)
pipe = SignFlowInferencePipeline.from_runner(Null(len(names)), names)
start = kb("VmHWM")
summary = replay_stream(pipe, [clip], rest_frames=0)
print(json.dumps({"frames": summary["frames"], "predictions": summary["predictions"], "clip_kb": clip.nbytes // 1024,
                  "start_hwm_kb": start, "peak_growth_kb": kb("VmHWM") - start}))
"""


def test_long_stream_memory_is_bounded(benchmark):
    """Peak resident memory (VmHWM) added by streaming one 10,000- and one 100,000-frame clip through
    ``replay_stream`` (payloads built lazily, a model that costs nothing), each in a fresh process."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    if not Path("/proc/self/status").is_file():
        pytest.skip("VmHWM is read from Linux's /proc/self/status")

    def child(frames: int) -> dict:
        out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(frames)], check=True, capture_output=True,
                             text=True, timeout=600)
        return json.loads(out.stdout.strip().splitlines()[-1])

    runs = benchmark.pedantic(lambda: {n: child(n) for n in (10_000, 100_000)}, rounds=1, iterations=1)
    small, large = runs[10_000], runs[100_000]
    assert (small["frames"], large["frames"]) == (10_000, 100_000)
    assert large["predictions"] > 5 * small["predictions"]
    # bounded: the 100,000-frame stream adds about what the 10,000-frame one does (its clip alone is 10x larger)
    assert large["peak_growth_kb"] < 2 * small["peak_growth_kb"] + 16_000, runs
    benchmark.extra_info.update({f"{n}_frames": r for n, r in runs.items()})


REST = {"still": RestNoise(), "jitter": RestNoise(0.0024, 0.004, 0.02, seed=1),
        "hands lost on half the rest frames": RestNoise(0.0024, 0.004, 0.5, seed=1)}


def test_presence_rule_segmentation(benchmark):
    """Signs detected and false starts (``segmentation_score``) with ``ignore_tracking_jumps`` on (this
    project) and off (the original's rule), on replays of 40 synthetic signs (20 classes, 2 signers, shuffled)
    with still rest, jittery rest and jittery rest where each hand is lost on half the frames."""
    clips, names = generate(SyntheticSpec(num_classes=20, num_signers=2, clips_per_signer_per_class=1, seed=5))
    order = [clips[i] for i in np.random.default_rng(0).permutation(len(clips))]
    spans, _ = stream_spans(order)

    def measure():
        scores = {}
        for rest, noise in REST.items():
            for ignore in (True, False):
                pipe = SignFlowInferencePipeline.from_runner(NullRunner(len(names)), names,
                                                             PipelineConfig(ignore_tracking_jumps=ignore))
                preds = []
                replay_stream(pipe, order, rest_noise=noise, on_prediction=lambda p, i: preds.append(p))
                scores[f"{rest} / {'ignore jumps' if ignore else 'original'}"] = segmentation_score(preds, spans)
        return scores

    scores = benchmark.pedantic(measure, rounds=1, iterations=1)
    for score in scores.values():
        assert score["signs"] == len(order) and 0 <= score["detected"] <= score["signs"]
        assert score["false_starts"] <= score["predictions"]
    benchmark.extra_info.update(scores)
