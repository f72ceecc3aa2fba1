"""The deployment scenarios: live-stream capacity (alone and batched), server, offline, cold start, and their
report. Real ONNX Runtime sessions on a tiny model; throwaway plugins (tests/deployment_backends.py) add a fixed
time per call or a slow prepare, so that what must fall as a backend gets slower can be checked on any machine."""

from __future__ import annotations

import json

import numpy as np
import pytest

import deployment_backends
from conftest import TINY_DATA
from signflow_zoo.backends.runner import RunnerOptions
from signflow_zoo.bench.capacity import CapacityConfig, StreamSet, passes, run_trial, search_capacity
from signflow_zoo.bench.harness import BenchConfig, parse_scenarios, run_bench
from signflow_zoo.bench.server import ServerConfig, offline_throughput, search_server
from signflow_zoo.common.errors import SignFlowError
from signflow_zoo.data.synthetic import SyntheticSpec, generate
from signflow_zoo.plugins import PluginRegistry
from signflow_zoo.report.deployment import deployment_table
from signflow_zoo.results.files import flat_records
from signflow_zoo.serve.batching import complete_batch
from signflow_zoo.serve.pipeline import PendingSign, SignFlowInferencePipeline
from signflow_zoo.serve.replay import stream_payloads

# small searches: a few seconds each, still a real queue of real calls
FAST = dict(min_signs=60, scout_signs=30, min_seconds=1.5, scout_seconds=1.0, ramp_s=0.5, budget_s=30.0)  # converges in ~8 s here; room for a 5x slower CPU


@pytest.fixture(scope="module")
def clips():
    raws, _ = generate(SyntheticSpec(num_classes=7, num_signers=1, clips_per_signer_per_class=2, seed=7))
    return [c.raw for c in raws]


def _runner(cls, artifacts):
    r = cls(RunnerOptions(threads=1))
    r.prepare(artifacts)
    return r


def test_deferred_frames_decide_exactly_as_process_frame(tiny_artifacts, clips):
    """process_frame_deferred + complete (the batching path) gives the same predictions as process_frame."""
    r = _runner(deployment_backends._OnnxCpu, tiny_artifacts)
    a = SignFlowInferencePipeline.from_runner(r, tiny_artifacts.labels)
    b = a.spawn()
    payloads = list(stream_payloads(clips[:6]))
    direct, deferred = [], []
    for p in payloads:
        pa = a.process_frame(p)
        if pa.ended:
            direct.append(pa)
        out = b.process_frame_deferred(p)
        if isinstance(out, PendingSign):
            deferred.extend(complete_batch(r, [(b, out)]))
        else:
            assert not out.ended and out.state == pa.state
    assert len(direct) >= 4 and len(direct) == len(deferred)
    for x, y in zip(direct, deferred):
        assert (x.label, x.candidate, x.frame_index, x.start_frame, x.votes) == (y.label, y.candidate, y.frame_index,
                                                                                y.start_frame, y.votes)
        assert x.confidence == pytest.approx(y.confidence, abs=1e-5)
    assert a.sentence == b.sentence


def test_a_batch_of_streams_gets_each_its_own_logits(tiny_artifacts, clips):
    r = _runner(deployment_backends._OnnxCpu, tiny_artifacts)
    base = SignFlowInferencePipeline.from_runner(r, tiny_artifacts.labels)
    pipes = [base.spawn() for _ in range(3)]
    pending = []
    for k, pipe in enumerate(pipes):  # each stream replays a different clip: different windows, different logits
        for p in stream_payloads([clips[k * 3]]):
            out = pipe.process_frame_deferred(p)
            if isinstance(out, PendingSign):
                pending.append((pipe, out))
                break
    assert len(pending) == 3
    batched = complete_batch(r, pending)
    alone = [complete_batch(r, [(pipe.spawn(), p)])[0] for pipe, p in pending]
    for x, y in zip(batched, alone):
        assert x.probability == pytest.approx(y.probability, abs=1e-4) and x.candidate == y.candidate


@pytest.mark.slow
def test_capacity_falls_as_the_backend_gets_slower(tiny_artifacts, clips):
    cfg = CapacityConfig(**FAST)
    fast = search_capacity(_runner(deployment_backends.Delay2Runner, tiny_artifacts), tiny_artifacts.labels, clips, cfg)
    slow = search_capacity(_runner(deployment_backends.Delay15Runner, tiny_artifacts), tiny_artifacts.labels, clips, cfg)
    for out in (fast, slow):
        assert out["streams"] >= 1 and out["p99_ms"] <= cfg.deadline_ms and out["miss_rate"] <= cfg.max_miss_rate
        assert out["deadline_ms"] == 100.0 and out["fps"] == 30.0
        assert out["signs"] >= cfg.min_signs * 0.5  # the confirming trial's signs after the ramp
        assert any(not t["passed"] for t in out["trials"]) or out["budget_exhausted"]  # a failing load was found
    assert fast["streams"] > 1.5 * slow["streams"], (fast["streams"], slow["streams"])


@pytest.mark.slow
def test_an_overloaded_trial_stops_early_and_fails(tiny_artifacts, clips):
    r = _runner(deployment_backends.Delay15Runner, tiny_artifacts)
    cfg = CapacityConfig(**FAST)
    streams = StreamSet(clips, SignFlowInferencePipeline.from_runner(r, tiny_artifacts.labels).config, cfg.rest_frames)
    t = run_trial(r, tiny_artifacts.labels, streams, 2000, cfg, signs=400)
    assert t.stopped and not passes(t, cfg)
    assert t.seconds < 20  # not the ~40 s a full trial of 2000 streams would take


@pytest.mark.slow
def test_dynamic_batching_runs_several_sign_ends_per_call(tiny_artifacts, clips):
    r = _runner(deployment_backends.Delay15Runner, tiny_artifacts)
    cfg = CapacityConfig(**{**FAST, "max_batch_wait_ms": 20.0})
    streams = StreamSet(clips, SignFlowInferencePipeline.from_runner(r, tiny_artifacts.labels).config, cfg.rest_frames)
    alone = run_trial(r, tiny_artifacts.labels, streams, 60, CapacityConfig(**FAST), signs=60, seed=3)
    batched = run_trial(r, tiny_artifacts.labels, streams, 60, cfg, signs=60, seed=3)
    assert alone.mean_batch == 1.0
    assert batched.mean_batch > 1.2  # sign ends of different streams shared calls
    assert batched.busy < alone.busy  # fewer 15 ms calls for the same signs


@pytest.mark.slow
def test_server_rate_falls_as_the_backend_gets_slower(tiny_artifacts):
    rng = np.random.default_rng(0)
    reqs = [(rng.standard_normal((1, 64, 469)).astype(np.float32), np.ones((1, 64), bool)) for _ in range(8)]
    cfg = ServerConfig(min_requests=120, steps=5, budget_s=20.0)
    fast = search_server(_runner(deployment_backends.Delay2Runner, tiny_artifacts), reqs, cfg)
    slow = search_server(_runner(deployment_backends.Delay15Runner, tiny_artifacts), reqs, cfg)
    for out in (fast, slow):
        assert out["valid"] and out["qps"] > 0 and out["p99_ms"] <= cfg.bound_ms and out["requests"] == 120
        assert out["qps"] < out["max_qps"]  # never above the rate that keeps the server busy all the time
    assert fast["qps"] > 3 * slow["qps"], (fast["qps"], slow["qps"])
    assert slow["service_ms"] >= 15.0


def test_server_with_a_bound_below_one_call_says_so(tiny_artifacts):
    reqs = [(np.zeros((1, 64, 469), np.float32), np.ones((1, 64), bool))]
    out = search_server(_runner(deployment_backends.Delay15Runner, tiny_artifacts), reqs,
                        ServerConfig(bound_ms=5.0, min_requests=60, steps=3))
    assert out["qps"] == 0.0 and not out["valid"] and "5 ms" in out["note"]


def test_offline_picks_the_best_batch(tiny_artifacts):
    rng = np.random.default_rng(0)
    x, m = rng.standard_normal((32, 64, 469)).astype(np.float32), np.ones((32, 64), bool)
    out = offline_throughput(_runner(deployment_backends.Delay15Runner, tiny_artifacts), x, m, batches=(1, 8, 32),
                             min_seconds=0.1)
    # 15 ms per call whatever the batch: throughput grows with the batch
    assert out["batch"] == 32 and out["seq_per_s"] == max(out["by_batch"].values())
    assert out["by_batch"]["32"] > 10 * out["by_batch"]["1"]


def test_scenario_names_are_checked():
    assert parse_scenarios("server, capacity") == ("capacity", "server")
    assert parse_scenarios("all")[0] == "latency"
    with pytest.raises(SignFlowError, match="unknown scenario.*'capacty'.*cold-start"):
        parse_scenarios("capacty")
    with pytest.raises(SignFlowError, match="--deadline-ms"):
        BenchConfig(deadline_ms=0.0).validate()
    with pytest.raises(SignFlowError, match="capacity_options: unknown setting"):
        BenchConfig(capacity_options={"min_sign": 3}).validate()


def test_cli_rejects_an_unknown_scenario_in_one_line(capsys, isolated_home):
    from signflow_zoo.cli import main

    assert main(["bench", "--scenarios", "latency,speed"]) != 0
    err = capsys.readouterr().err
    assert "unknown scenario(s) 'speed'" in err and "Traceback" not in err


@pytest.mark.slow
def test_bench_writes_every_deployment_section_and_report_shows_them(tiny_zoo_file, warm_home, tmp_path, capsys):
    """The harness end to end: capacity (alone and batched), server, offline and cold start per backend, in the
    result file, the flat records (MLflow), the table, the plot; a slow prepare shows in the cold start."""
    reg = PluginRegistry([deployment_backends], entry_points=False)
    cfg = BenchConfig.quick(presets="tiny", backends="test-delay-15ms,test-slow-prepare", data=TINY_DATA,
                            exporter="legacy", track=True, zoo_file=str(tiny_zoo_file), progress=False,
                            scenarios=("capacity", "server", "offline", "cold-start"),
                            capacity_options=dict(min_signs=30, scout_signs=15, min_seconds=1.0, scout_seconds=0.5,
                                                  ramp_s=0.3, budget_s=2.0),
                            server_options={"min_requests": 60, "budget_s": 3.0, "steps": 3})
    doc = run_bench(cfg, log=lambda msg: None, registry=reg)
    recs = {r["backend"]: r for r in doc["records"]}
    for name, r in recs.items():
        assert r["status"] == "ok", r["reason"]
        assert r["latency"] == {}  # latency was not asked for
        c = r["capacity"]
        assert c["streams"] >= 1 and set(c) >= {"streams", "deadline_ms", "p99_ms", "miss_rate", "fps"}
        assert c["batched"]["max_batch_wait_ms"] == 10.0 and c["batched"]["streams"] >= 1
        assert set(r["server"]) >= {"qps", "p99_ms", "bound_ms"} and r["server"]["qps"] > 0
        assert set(r["offline"]) >= {"seq_per_s", "batch"}
        cs = r["cold_start"]
        assert set(cs) >= {"load_ms", "prepare_ms", "first_call_ms", "total_ms"} and len(cs["runs"]) == 3
        assert cs["total_ms"] >= cs["load_ms"] > 0
    # the slow prepare (0.6 s) is counted in prepare, not elsewhere
    slow, fast = recs["test-slow-prepare"]["cold_start"], recs["test-delay-15ms"]["cold_start"]
    assert slow["prepare_ms"] >= 1000 * deployment_backends.PREPARE_S > fast["prepare_ms"]
    # (that a slower call serves fewer streams is test_capacity_falls_as_the_backend_gets_slower's, with searches
    # long enough to tell; these are cut to a few seconds)

    flat = {f["backend"]: f for f in flat_records(doc)}
    assert flat["test-delay-15ms"]["capacity_streams"] == recs["test-delay-15ms"]["capacity"]["streams"]
    for key in ("capacity_batched_streams", "server_qps", "offline_seq_per_s", "cold_start_total_ms"):
        assert isinstance(flat["test-delay-15ms"][key], (int, float))
    table = deployment_table(list(flat.values()))
    assert "test-slow-prepare" in table and "streams" in table and max(len(x) for x in table.splitlines()) <= 120
    assert any(p.endswith("streams-per-machine.png") for p in doc["outputs"])

    from signflow_zoo.cli import main

    capsys.readouterr()
    assert main(["report", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "deployment:" in out and "test-delay-15ms" in out.split("deployment:")[1]
    assert main(["report", "--preset", "tiny", "--deployment", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["backend"] for r in rows} == set(recs) and all(r["capacity_streams"] >= 1 for r in rows)
