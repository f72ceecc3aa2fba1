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
"""

from __future__ import annotations

import numpy as np
import pytest

from signflow_zoo.features import prepare_clip
from signflow_zoo.payload import parse_payload, payload_from_raw
from signflow_zoo.pipeline import PipelineConfig, SignFlowInferencePipeline, stream_from_clips
from signflow_zoo.runners import Runner
from signflow_zoo.synthetic import SyntheticSpec, generate

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
    state = {"i": 0}

    def one_frame():
        i = state["i"] % len(payloads)
        if i == 0:
            pipe.reset()  # the stream starts over: no jump from its last frame to its first
        state["i"] += 1
        return pipe.process_frame(payloads[i])

    return one_frame


def test_parse_payload(benchmark, stream):
    payload = stream["payloads"][len(stream["payloads"]) // 2]
    row, _ = benchmark(parse_payload, payload)
    assert row.shape == (225,)


def test_frame_path_every_frame(benchmark, stream):
    """Validate + buffer + state machine on every frame of the stream, features of each finished window
    included (the null model costs nothing). One round = one frame, so the percentiles are per frame."""
    payloads = stream["payloads"]
    pipe = SignFlowInferencePipeline.from_runner(NullRunner(len(stream["names"])), stream["names"], PipelineConfig())
    feed = _frame_feeder(pipe, payloads)
    benchmark.pedantic(feed, rounds=2 * len(payloads), iterations=1, warmup_rounds=len(payloads))
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
    pipe = SignFlowInferencePipeline.from_runner(NullRunner(len(names)), names, PipelineConfig(max_sign_frames=10**6,
                                                                                              min_rest_frames=10**6))
    feed = _frame_feeder(pipe, quiet)  # never ends a sign: pure validate + buffer + state machine
    benchmark.pedantic(feed, rounds=2 * len(quiet), iterations=1, warmup_rounds=200)
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

    from signflow_zoo.artifacts import artifacts_from_model_file, serving_metadata
    from signflow_zoo.export import export_to_onnx
    from signflow_zoo.model import build_model
    from signflow_zoo.plugins import get_registry
    from signflow_zoo.runners import RunnerOptions
    from signflow_zoo.zoo import get_model_config

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
    from signflow_zoo.pipeline import measure_stream_latency

    res = benchmark.pedantic(measure_stream_latency, args=(large_onnx_runner, stream["names"], stream["clips"]),
                             kwargs={"repeats": 2}, rounds=1, iterations=1)
    assert res["predictions"] >= len(stream["clips"])
    benchmark.extra_info.update({k: res[k] for k in ("latency_ms", "model_ms", "features_ms", "frame_ms",
                                                     "frames_per_s", "trustworthy")})
