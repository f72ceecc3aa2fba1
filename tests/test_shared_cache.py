"""One zoo home and one results folder shared by several processes: locks, corrupt cache files named and
rebuilt, and `sync` choosing what to upload (never a file a bench is still writing, never stopping on a
malformed one), on the local SQLite store."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY_DATA
from signflow_zoo.common.cachefiles import exclusive, is_locked, lock_path, temp_path
from signflow_zoo.cli.commands import main
from signflow_zoo.results.files import COMPLETE_TAG, scan_results

pytestmark = pytest.mark.slow


def bench_argv(zoo_file, *extra):
    return ["--zoo", str(zoo_file), "bench", "--preset", "tiny", "--data", TINY_DATA, "--quick", "--min-time", "0.05",
            "--batch-sizes", "1", "--backends", "torch-eager,onnx-cpu,onnx-optimized", "--exporter", "legacy",
            "--no-progress", "--no-stream", "--no-train", *extra]


HOLD = """
import sys
from signflow_zoo.common.cachefiles import exclusive
with exclusive(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.readline()
"""


def hold_lock(target: Path) -> subprocess.Popen:
    """Another process holding ``target``'s lock until its stdin is closed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_waits_on_the_lock_then_reuses_the_target(tmp_path):
    target = tmp_path / "model.pt"
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom pathlib import Path\nfrom signflow_zoo.common.cachefiles import exclusive, atomic_write_text\n"
        "with exclusive(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(1.0)\n"
        "    atomic_write_text(sys.argv[1], 'made once')\n"), str(target)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "held"
    assert is_locked(target)
    t0 = time.monotonic()
    with exclusive(target):  # blocks until the writer is done
        waited = time.monotonic() - t0
        assert target.read_text() == "made once"  # found made: nothing to do twice
    assert writer.wait(timeout=60) == 0 and waited > 0.3
    assert not is_locked(target)
    names = {temp_path(target).name for _ in range(100)}
    assert len(names) == 100 and all(n.startswith(".model.pt.") for n in names)


def test_corrupt_cache_files_are_named_and_rebuilt_never_a_traceback(warm_home, tiny_zoo_file, capsys):
    from signflow_zoo.model.export import file_sha256

    npz = next((warm_home / "data").glob("synthetic-*.npz"))
    folder = next(p for p in (warm_home / "artifacts").glob("*-legacy-op*") if p.is_dir())
    info, opt = folder / "info.json", folder / "model.optimized.onnx"
    npz.write_bytes(npz.read_bytes()[:len(npz.read_bytes()) // 2])  # truncated mid-write
    opt.write_bytes(opt.read_bytes()[: opt.stat().st_size // 2])  # half-written optimized graph
    assert main(bench_argv(tiny_zoo_file, "--no-track", "--backends", "onnx-optimized")) == 0
    err = capsys.readouterr().err
    assert f"{opt}: optimized graph does not match the sha256 recorded in info.json" in err and "Traceback" not in err
    recorded = json.loads(info.read_text())["optimize"]["sha256"]
    assert file_sha256(opt) == recorded
    doc = json.loads(next((warm_home / "results").glob("bench-*.json")).read_text())
    assert doc["records"][0]["status"] == "ok" and doc["records"][0]["params"]["artifact_sha256"] == recorded
    # a truncated record of the export folder: the export is derived data, made again from the checkpoint
    info.write_text(info.read_text()[:40])
    assert main(bench_argv(tiny_zoo_file, "--no-track", "--backends", "onnx-cpu")) == 0
    err = capsys.readouterr().err
    assert f"{info}: unreadable" in err and "exporting tiny to ONNX" in err and "Traceback" not in err
    again = json.loads(info.read_text())
    assert again["export"]["sha256"] == file_sha256(folder / "model.onnx") and again["optimize"]["sha256"]
    with __import__("numpy").load(npz, allow_pickle=False) as z:  # the truncated data cache was rebuilt
        assert "train_features" in z.files


def test_bench_holds_its_result_file_until_it_has_finished(warm_home, tiny_zoo_file):
    from signflow_zoo.bench.harness import Bench, BenchConfig

    seen = {}

    def log(msg):
        if msg.startswith("machine drift"):  # every preset saved, the bench not finished yet
            rep = scan_results(warm_home / "results")
            seen["running"] = list(rep.running)
            seen["doc"] = json.loads(bench.json_path.read_text())

    bench = Bench(BenchConfig.quick(presets="tiny", data=TINY_DATA, zoo_file=str(tiny_zoo_file), backends="onnx-cpu",
                                    track=False, stream=False, progress=False, exporter="legacy", batch_sizes=(1,)),
                  log=log)
    bench.run()
    assert seen["running"] == [bench.json_path]
    assert seen["doc"]["tracking"]["in_progress"]["pid"] > 0
    doc = json.loads(bench.json_path.read_text())
    assert "in_progress" not in doc["tracking"] and not lock_path(bench.json_path).exists()
    assert scan_results(warm_home / "results").pending == [(bench.json_path, "")]


def _copy_as_new_invocation(src: Path, name: str, **tracking) -> Path:
    doc = json.loads(src.read_text())
    doc["invocation_id"] = uuid.uuid4().hex[:12]
    for rec in doc["records"]:
        rec["result_id"] = uuid.uuid4().hex
    doc["tracking"].update(tracking)
    dst = src.with_name(name)
    dst.write_text(json.dumps(doc))
    return dst


def test_sync_uploads_each_file_to_its_experiment_and_names_what_it_skips(warm_home, tiny_zoo_file, capsys):
    assert main(bench_argv(tiny_zoo_file, "--no-track", "--experiment", "team-a")) == 0
    results = warm_home / "results"
    first = next(results.glob("bench-*.json"))
    died = _copy_as_new_invocation(first, "bench-died.json", experiment="team-b",
                                   in_progress={"pid": 2 ** 22 + 7, "host": "elsewhere"})
    running = _copy_as_new_invocation(first, "bench-running.json")
    (results / "bench-truncated.json").write_text(first.read_text()[:100])
    (results / "bench-norecords.json").write_text(json.dumps({"schema": "signflow-zoo/bench/2", "created": "x",
                                                                "invocation_id": "y"}))
    holder = hold_lock(running)  # a bench still writing this file
    try:
        capsys.readouterr()
        assert main(["sync"]) == 1  # malformed files are not silently dropped
        out = capsys.readouterr()
        assert "bench-truncated.json: skipped, not a readable JSON file" in out.err
        assert "bench-norecords.json: skipped, result file has no 'records'" in out.err
        assert "bench-running.json: skipped, a bench is still writing it" in out.err
        assert "bench-died.json: its bench stopped before the end" in out.err
        assert "uploaded 2 result file(s)" in out.out
        assert json.loads(running.read_text())["tracking"]["uploaded"] is False
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert main(["sync"]) == 1 and "uploaded 1 result file(s)" in capsys.readouterr().out  # now it has finished
    assert main(["sync"]) == 1 and "uploaded 0 result file(s)" in capsys.readouterr().out  # nothing twice
    client = MlflowClient()
    for path, experiment in ((first, "team-a"), (died, "team-b"), (running, "team-a")):
        doc = json.loads(path.read_text())
        assert doc["tracking"]["uploaded"] is True and doc["tracking"]["experiment"] == experiment
        exp = client.get_experiment_by_name(experiment)
        for rec in doc["records"]:
            runs = client.search_runs([exp.experiment_id], f"tags.`signflow_zoo.result_id` = '{rec['result_id']}'")
            assert len(runs) == 1 and runs[0].data.tags[COMPLETE_TAG] == "1" and runs[0].data.metrics
    assert json.loads(died.read_text())["tracking"]["interrupted"]["host"] == "elsewhere"
    assert client.get_experiment_by_name("signflow-zoo") is None  # nothing went to the command line's default
