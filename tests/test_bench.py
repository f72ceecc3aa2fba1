"""End to end, as a user runs it: the CLI on a tiny zoo entry and tiny synthetic data, with the local
SQLite store, an unreachable server, and a real `mlflow server` started here on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY_DATA
from signflow_zoo.cli.commands import main

pytestmark = pytest.mark.slow


def bench_args(zoo_file, *extra):
    return ["--zoo", str(zoo_file), "bench", "--preset", "tiny", "--data", TINY_DATA, "--quick", "--min-time", "0.05",
            "--exporter", "legacy", "--no-progress", *extra]


def _children(client, exp_name="signflow-zoo"):
    exp = client.get_experiment_by_name(exp_name)
    return client.search_runs([exp.experiment_id], "tags.`signflow_zoo.kind` = 'bench-record'")


def test_bench_end_to_end_on_the_local_store(tiny_zoo_file, tmp_path, capsys, warm_home):
    out_json = tmp_path / "result.json"
    # the built-ins (every installed plugin backend has its own tests): three that run here, one that cannot
    assert main(bench_args(tiny_zoo_file, "--json", str(out_json), "--check-timing",
                           "--backends", "torch-eager,onnx-cpu,onnx-optimized,onnx-cuda")) == 0
    captured = capsys.readouterr()
    doc = json.loads(out_json.read_text())
    assert doc["schema"] == "signflow-zoo/bench/2" and doc["tracking"]["uploaded"] is True
    # drift: the reference workload was read at the start and after the preset
    assert [r["at"] for r in doc["drift"]["readings"]] == ["start", "after tiny (end)"]
    assert doc["drift"]["ratio"] > 0 and doc["config"]["timing"]["schedule"] == "interleaved"
    assert doc["ceilings"]["gflops"]["fp32"] > 0  # this machine's roofline, measured once and cached
    assert doc["environment"]["host_class"] and "cpu_flags" in doc["environment"]
    recs = {r["backend"]: r for r in doc["records"]}
    assert {"torch-eager", "onnx-cpu", "onnx-optimized", "onnx-cuda"} <= set(recs)
    for name in ("torch-eager", "onnx-cpu", "onnx-optimized"):
        r = recs[name]
        assert r["status"] == "ok", r
        for b in ("1", "8"):
            lat = r["latency"][b]
            assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] and lat["iterations"] >= 10
            assert lat["p50_ci_ms"][0] <= lat["p50_ms"] <= lat["p50_ci_ms"][1] and lat["blocks"] >= 1
            assert lat["throughput_seq_s"] > 0 and lat["valid"] is True
            # every timed call is kept, block by block, for comparisons across runs; a p99 bound only with enough
            calls = [v for block in r["samples"][b] for v in block]
            assert len(calls) == lat["n"] == lat["iterations"] and len(r["samples"][b]) == lat["blocks"]
            assert min(calls) == pytest.approx(lat["min_ms"], abs=1e-5)
            assert (lat["p99_upper_ms"] is None) == (lat["n"] < 459)
            check = r["timing_check"][b]
            assert check["p50_ratio"] == pytest.approx(check["scheduled_p50_ms"] / check["solo_p50_ms"])
            assert check["scheduled_p50_ms"] == pytest.approx(lat["p50_ms"])
            # one preset: every run-stability reading (start, between rounds, end) is one of its readings
            assert r["normalized_p50"][b] == pytest.approx(lat["p50_ms"] / (sum(x["ms"] for x in doc["stability"]["readings"])
                                                                             / len(doc["stability"]["readings"])))
        assert r["parity"]["ok"] and r["parity"]["max_abs"] < 1e-3
        assert 0 <= r["accuracy"]["top1"] <= 1 and r["accuracy"]["agreement_top1"] >= 0.95
        lo, hi = r["accuracy"]["top1_ci"]
        assert lo <= r["accuracy"]["top1"] <= hi and r["accuracy"]["n"] == r["params"]["test_size"]
        assert r["memory"]["peak_mb"] >= r["memory"]["baseline_mb"] > 0 and "VmHWM" in r["memory"]["what"]
        assert r["params"]["artifact_sha256"] and r["params"]["threads"] >= 1
        assert r["params"]["data_split"].startswith("signer-split(seed=0")
        roof = r["roofline"]["1"]
        assert roof["gflop_per_seq"] == r["params"]["gflops"] and 0 < roof["share"] < 1
        assert roof["achieved_gflops"] == pytest.approx(r["params"]["gflops"] / (r["latency"]["1"]["p50_ms"] / 1e3), abs=0.06)
        assert r["describe"]["provider"]
    assert recs["onnx-cpu"]["describe"]["provider"] == "CPUExecutionProvider"
    sp = recs["onnx-cpu"]["speedup"]["1"]
    assert sp["reference"] == "torch-eager" and sp["ci"][0] <= sp["ratio"] <= sp["ci"][1]
    assert sp["ratio"] == pytest.approx(recs["torch-eager"]["latency"]["1"]["p50_ms"] / recs["onnx-cpu"]["latency"]["1"]["p50_ms"])
    assert "Timing self-check" in captured.out and "p50 ratio" in captured.out
    if recs["onnx-cuda"]["status"] != "ok":
        assert recs["onnx-cuda"]["status"] == "unavailable" and recs["onnx-cuda"]["reason"]
        assert recs["onnx-cuda"]["latency"] == {}  # never a CPU run under the CUDA name
    # the table is printed, from the same numbers
    assert "onnx-cpu" in captured.out and "torch-eager" in captured.out and "results:" in captured.out
    # MLflow: one parent, one child per (preset, backend), params + metrics + artifacts
    client = MlflowClient()
    children = _children(client)
    assert len(children) == len(recs)
    parent_id = doc["tracking"]["parent_run_id"]
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent_id
    cpu = next(r for r in children if r.data.tags["backend"] == "onnx-cpu")
    assert cpu.data.params["provider"] == "CPUExecutionProvider"
    assert cpu.data.metrics["latency_p50_ms_b1"] == pytest.approx(recs["onnx-cpu"]["latency"]["1"]["p50_ms"])
    assert "accuracy_top1" in cpu.data.metrics and "parity_max_abs" in cpu.data.metrics
    parent = client.get_run(parent_id)
    assert parent.data.tags["host"] == socket.gethostname() and "cpu" in parent.data.tags
    arts = {a.path for a in client.list_artifacts(parent_id)}
    assert any(a.endswith(".json") for a in arts) and any(a.endswith("pareto.png") for a in arts) and any(a.endswith("latency-tiny.png") for a in arts)
    # report rebuilds the table from MLflow, not from memory
    assert main(["report", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["backend"] for r in rows} == set(recs)
    # a warm second run reuses the cached checkpoint and artifacts; --schedule sequential is recorded
    assert main(bench_args(tiny_zoo_file, "--no-train", "--backends", "onnx-cpu", "--schedule", "sequential",
                           "--json", str(out_json))) == 0
    assert "cached checkpoint" in capsys.readouterr().err
    assert json.loads(out_json.read_text())["config"]["timing"]["schedule"] == "sequential"


@pytest.mark.parametrize("args,words", [
    (["bench", "--preset", "huge"], ["unknown preset 'huge'", "lightweight"]),
    (["bench", "--backends", "onnx-cpu,tensorrt"], ["unknown backend 'tensorrt'", "onnx-cpu"]),
    (["bench", "--batch-sizes", "0,4"], ["each in 1..4096"]),
    (["bench", "--batch-sizes", "1,100000"], ["each in 1..4096"]),
    (["bench", "--min-time", "-1"], ["number in 0..3600"]),
    (["bench", "--threads", "zero"], ["--threads", "integer in 1.."]),
    (["bench", "--threads", "10000"], ["--threads", "integer in 1.."]),
    (["bench", "--seed", "-1"], ["--seed", "0..4294967295"]),
    (["bench", "--schedule", "random"], ["invalid choice", "interleaved"]),
    (["bench", "--timeout", "0"], ["--timeout", "> 0"]),
    (["bench", "--data", "kaggle:foo"], ["synthetic"]),
    (["bench", "--data", "synthetic:signers=100000000"], ["more than 20000"]),
    (["bench", "--json", "."], ["--json", "is a directory"]),
])
def test_bench_user_errors_exit_2_with_one_line(args, words, capsys, isolated_home):
    assert main([*args, "--no-track"]) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err
    assert "Traceback" not in err
    assert not (isolated_home / "results").exists()  # failed before any work: nothing written
    if args[1] != "--data":  # a spec naming files is checked when they are read, after the "data:" log line
        assert len(err.strip().splitlines()) == 1, err


def test_the_entry_point_exits_2_without_a_traceback():
    """The real console entry point (not main() in-process): usage and library errors exit 2, one line each."""
    for args in (["bench", "--seed", "-1"], ["presets", "--zoo-typo"], ["--zoo", "/nonexistent.toml", "presets"]):
        proc = subprocess.run([sys.executable, "-m", "signflow_zoo.cli", *args], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_no_train_without_cache_and_corrupt_cache_are_clear_errors(tiny_zoo_file, capsys, isolated_home,
                                                                   trained_tiny_home):
    import shutil

    assert main(bench_args(tiny_zoo_file, "--no-train", "--no-track")) == 2
    assert "no cached checkpoint" in capsys.readouterr().err
    shutil.copytree(trained_tiny_home, isolated_home, dirs_exist_ok=True)
    assert main(bench_args(tiny_zoo_file, "--no-track", "--backends", "onnx-cpu")) == 0
    ckpts = list((isolated_home / "checkpoints").glob("tiny-*.pt"))
    assert len(ckpts) == 1
    ckpts[0].write_bytes(b"garbage")
    capsys.readouterr()
    assert main(bench_args(tiny_zoo_file, "--no-track", "--backends", "onnx-cpu")) == 2
    err = capsys.readouterr().err
    assert str(ckpts[0]) in err and "Traceback" not in err
    assert ckpts[0].read_bytes() == b"garbage"  # never silently retrained over


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_mlflow_server(tmp_path, port):
    log = open(tmp_path / "mlflow-server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "srv-art")],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("mlflow server exited: " + (tmp_path / "mlflow-server.log").read_text()[-2000:])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("mlflow server did not answer /health within 120 s")


def test_unreachable_server_loses_nothing_then_sync_and_a_real_server(tiny_zoo_file, tmp_path, monkeypatch, capsys,
                                                                       warm_home):
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # 1. server down: bench finishes, exits 0, warns, keeps the JSON
    assert main(bench_args(tiny_zoo_file, "--backends", "torch-eager,onnx-cpu")) == 0
    err = capsys.readouterr().err
    assert "unreachable" in err and "signflow-zoo sync" in err
    files = list((warm_home / "results").glob("bench-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["tracking"]["uploaded"] is False
    assert main(["sync"]) == 1  # still unreachable: says so, non-zero
    # 2. the server comes up: sync uploads, once
    server = _start_mlflow_server(tmp_path, port)
    try:
        assert main(["sync"]) == 0
        client = MlflowClient(uri)
        assert len(_children(client)) == 2
        assert json.loads(files[0].read_text())["tracking"]["uploaded"] is True
        assert main(["sync"]) == 0 and "uploaded 0" in capsys.readouterr().out
        assert len(_children(client)) == 2  # idempotent
        # 3. bench straight against the live server
        assert main(bench_args(tiny_zoo_file, "--backends", "onnx-cpu,onnx-optimized", "--no-train")) == 0
        assert len(_children(client)) == 4
        assert main(["report", "--format", "csv"]) == 0
        assert "onnx-optimized" in capsys.readouterr().out
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_synthetic_splits_cache_round_trips_exactly(isolated_home):
    import numpy as np

    from signflow_zoo.bench.harness import load_splits_cached

    first = load_splits_cached(TINY_DATA, 0, isolated_home)
    files = list((isolated_home / "data").glob("synthetic-*.npz"))
    assert len(files) == 1
    again = load_splits_cached(TINY_DATA, 0, isolated_home)
    assert again.fingerprint == first.fingerprint and again.class_names == first.class_names
    assert again.split == first.split and again.split.startswith("signer-split")
    for part in ("train", "val", "test"):
        a, b = getattr(first, part), getattr(again, part)
        assert np.array_equal(a.features, b.features) and np.array_equal(a.mask, b.mask)
        assert np.array_equal(a.labels, b.labels) and list(a.signers) == list(b.signers)
        assert b.fingerprint() == a.fingerprint()
    files[0].write_bytes(b"corrupt")  # a derived file: rebuilt, not an error
    assert load_splits_cached(TINY_DATA, 0, isolated_home).fingerprint == first.fingerprint
    assert load_splits_cached(TINY_DATA, 1, isolated_home).fingerprint != first.fingerprint
