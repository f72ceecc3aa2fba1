"""`sync` that survives one bad file, a store switch and a held lock.

Each result file is handled on its own: a file nested too deeply, of the wrong shape or refused by the store is
named with its reason and the others are uploaded (checked in the real SQLite MLflow store); a file uploaded to
one store is uploaded again to the next one; a lock held by a stopped (Ctrl-Z) process, or held too long by a
live one, ends the wait with a message naming the lock and its holder instead of a silent hang.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from signflow_zoo.cli.commands import main
from signflow_zoo.common import cachefiles
from signflow_zoo.common.cachefiles import atomic_write_text, exclusive, is_locked, lock_holder, lock_path
from signflow_zoo.common.errors import LockTimeout
from signflow_zoo.results import files as result_files
from signflow_zoo.results import tracking
from signflow_zoo.results.files import read_result, write_result
from signflow_zoo.results.store import COMPLETE_TAG, EXPERIMENT

pytestmark = pytest.mark.slow  # MLflow stores and child processes: a few seconds each

SCHEMA1_FILE = Path(__file__).parent / "data" / "bench-schema1.json"

HOLD = """
import sys, time
from signflow_zoo.common.cachefiles import exclusive
with exclusive(sys.argv[1], what="held by the test"):
    print("held", flush=True)
    sys.stdin.readline()
"""


def result_doc(**tracking_fields) -> dict:
    """A valid schema-2 result of one record (from the schema-1 fixture), with fresh ids."""
    doc = read_result(SCHEMA1_FILE)
    doc["invocation_id"] = uuid.uuid4().hex[:12]
    doc["records"] = doc["records"][1:2]  # onnx-cpu, with latency: one child run
    for rec in doc["records"]:
        rec["result_id"] = uuid.uuid4().hex
    doc["tracking"] = {"uploaded": False, "experiment": EXPERIMENT, **tracking_fields}
    return doc


def results_dir(home: Path) -> Path:
    folder = home / "results"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def runs_of(doc: dict, uri: str | None = None, experiment: str = EXPERIMENT) -> list:
    client = MlflowClient(uri) if uri else MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    result_id = doc["records"][0]["result_id"]
    return client.search_runs([exp.experiment_id], f"tags.`signflow_zoo.result_id` = '{result_id}'")


def hold_lock(target: Path) -> subprocess.Popen:
    """A child process holding ``target``'s lock until its stdin is closed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def end(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGCONT)
    proc.kill()
    proc.wait(timeout=30)


def store_db(tmp_path: Path) -> Path:
    return tmp_path / "mlflow.db"  # conftest's MLFLOW_TRACKING_URI


def test_one_bad_file_never_stops_the_others(isolated_home, capsys):
    results = results_dir(isolated_home)
    # nested 5000 levels deep: a RecursionError traceback before
    deep = result_doc()
    deep["records"][0]["describe"]["deep"] = "DEEP"
    (results / "bench-1-deep.json").write_text(json.dumps(deep).replace('"DEEP"', "[" * 5000 + "]" * 5000))
    # a drift reading of 0 ms: a ZeroDivisionError before; the ratio is unknown now, the results are uploaded
    drift0 = result_doc()
    drift0["drift"] = {"readings": [{"at": "start", "ms": 0.0, "time": "t0"}, {"at": "end", "ms": 2.0, "time": "t1"}]}
    write_result(drift0, results / "bench-2-drift0.json")
    # "tracking": "pending" (a string, not an object): an AttributeError before
    pending = result_doc()
    pending["tracking"] = "pending"
    write_result(pending, results / "bench-3-tracking-string.json")
    # a describe() key MLflow refuses and a 10,000-character value: pending forever, with every later file, before
    odd = result_doc()
    odd["records"][0]["describe"].update({"threads(intra)": 2, "build_info": "x" * 10_000})
    write_result(odd, results / "bench-4-odd-describe.json")
    valid = result_doc()
    write_result(valid, results / "bench-5-valid.json")

    assert main(["sync"]) == 1  # documented: 1 when a file was skipped
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    assert f"{results / 'bench-1-deep.json'}: skipped, not a readable JSON file: nested 5004 levels deep; at most 64" in out.err
    assert f"{results / 'bench-3-tracking-string.json'}: skipped, 'tracking' is str 'pending', not an object" in out.err
    assert "bench-2-drift0.json" not in out.err and "bench-4-odd-describe.json" not in out.err
    assert "uploaded 3 result file(s); 2 skipped (named above)" in out.out

    for doc in (drift0, odd, valid):
        runs = runs_of(doc)
        assert len(runs) == 1 and runs[0].data.tags[COMPLETE_TAG] == "1" and runs[0].data.metrics
    assert "drift_ratio" not in runs_of(drift0)[0].data.metrics
    tags = runs_of(odd)[0].data.tags
    assert tags["describe.threads_intra_"] == "2"  # the refused characters became _
    cut = tags["describe.build_info"]
    assert len(cut) <= tracking.MAX_TAG_LEN and cut.endswith("[cut from 10000 characters]") and cut.startswith("xxx")
    for name in ("bench-2-drift0.json", "bench-4-odd-describe.json", "bench-5-valid.json"):
        rec = json.loads((results / name).read_text())["tracking"]
        assert rec["uploaded"] is True and list(rec["uploads"]) == [tracking.store_key(os.environ["MLFLOW_TRACKING_URI"])]
    assert not list(results.glob("*.lock"))

    assert main(["sync"]) == 1  # again: the bad files are named again, nothing is uploaded twice
    out = capsys.readouterr()
    assert "uploaded 0 result file(s); 2 skipped" in out.out and "bench-1-deep.json" in out.err
    assert len(runs_of(valid)) == 1


def test_a_refused_upload_is_named_and_the_next_files_still_go(isolated_home, capsys, monkeypatch):
    """The store refuses one file's data (here: keys sent as they are): that file is named, the tracker is not
    turned off for the files after it."""
    results = results_dir(isolated_home)
    refused = result_doc()
    refused["records"][0]["describe"]["threads(intra)"] = 2
    write_result(refused, results / "bench-1-refused.json")
    write_result(result_doc(experiment="x" * 600), results / "bench-2-bad-experiment.json")  # MLflow allows 500
    later = [result_doc() for _ in range(2)]
    for i, doc in enumerate(later):
        write_result(doc, results / f"bench-{i + 3}-later.json")
    monkeypatch.setattr(tracking, "mlflow_key", str)  # no clean-up: MLflow's own validation refuses the key

    assert main(["sync"]) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    line = next(ln for ln in out.err.splitlines() if "bench-1-refused.json" in ln)
    assert "skipped, the tracking store refused it" in line and "threads(intra)" in line
    line = next(ln for ln in out.err.splitlines() if "bench-2-bad-experiment.json" in ln)
    assert "skipped, the tracking store refused experiment 'xxx" in line and "maximum length of 500" in line
    assert "uploaded 2 result file(s); 2 skipped" in out.out
    assert all(len(runs_of(doc)) == 1 for doc in later)
    assert json.loads((results / "bench-1-refused.json").read_text())["tracking"]["uploaded"] is False


def test_a_store_that_is_down_costs_one_probe(isolated_home, capsys, monkeypatch):
    results = results_dir(isolated_home)
    for i, experiment in enumerate(("team-a", "team-b", "team-a")):
        write_result(result_doc(experiment=experiment), results / f"bench-{i}.json")
    probes = []
    real = tracking.check_reachable
    monkeypatch.setattr(tracking, "check_reachable", lambda uri, *a, **k: probes.append(uri) or real(uri, *a, **k))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there

    assert main(["sync"]) == 1
    out = capsys.readouterr()
    assert "3 still pending" in out.err and "unreachable" in out.err and "Traceback" not in out.err
    assert len(probes) == 1


def test_a_file_uploaded_to_one_store_is_uploaded_to_the_next(isolated_home, tmp_path, capsys, monkeypatch):
    results = results_dir(isolated_home)
    store_a, store_b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    doc = result_doc()
    path = write_result(doc, results / "bench-switch.json")
    # a file of the previous version: uploaded, to the store its `uri` names, without `uploads`
    old = result_doc(uploaded=True, uri=store_a)
    old_path = write_result(old, results / "bench-old.json")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_a)
    assert main(["sync"]) == 0 and "uploaded 1 result file(s); nothing pending" in capsys.readouterr().out
    assert len(runs_of(doc, store_a)) == 1
    assert main(["sync"]) == 0 and "uploaded 0 result file(s)" in capsys.readouterr().out

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_b)
    assert main(["sync"]) == 0 and "uploaded 2 result file(s)" in capsys.readouterr().out
    assert len(runs_of(doc, store_b)) == 1 and len(runs_of(old, store_b)) == 1
    tr = json.loads(path.read_text())["tracking"]
    key_a, key_b = tracking.store_key(store_a), tracking.store_key(store_b)
    assert set(tr["uploads"]) == {key_a, key_b}  # still records store A
    assert tr["uploads"][key_a]["parent_run_id"] != tr["uploads"][key_b]["parent_run_id"]
    assert set(json.loads(old_path.read_text())["tracking"]["uploads"]) == {key_a, key_b}  # its old record kept
    assert main(["sync"]) == 0 and "uploaded 0 result file(s)" in capsys.readouterr().out

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_a)  # back to A: both are there already
    assert main(["sync"]) == 0 and "uploaded 0 result file(s)" in capsys.readouterr().out


def test_a_store_lock_held_by_a_stopped_bench_ends_sync_with_its_pid(isolated_home, tmp_path, capsys):
    write_result(result_doc(), results_dir(isolated_home) / "bench-x.json")
    holder = hold_lock(store_db(tmp_path))
    try:
        os.kill(holder.pid, signal.SIGSTOP)  # Ctrl-Z
        t0 = time.monotonic()
        assert main(["sync"]) == 1
        took = time.monotonic() - t0
        err = capsys.readouterr().err
        assert took < 15, took
        assert f"{lock_path(store_db(tmp_path))} is held by pid {holder.pid} (python -c)" in err, err
        assert "which is stopped (Ctrl-Z): resume it with `fg`" in err and "1 still pending" in err
        assert "Traceback" not in err
    finally:
        end(holder)


def test_a_live_holder_past_the_timeout_is_named(isolated_home, tmp_path, capsys, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    holder = hold_lock(target)
    try:
        info = lock_holder(target)
        assert info["pid"] == holder.pid and info["what"] == "held by the test" and is_locked(target)
        monkeypatch.setattr(cachefiles, "NOTICE_AFTER", 0.2)
        told: list[str] = []
        t0 = time.monotonic()
        with pytest.raises(LockTimeout) as caught:
            with exclusive(target, timeout=0.8, log=told.append):
                pass
        assert 0.8 <= time.monotonic() - t0 < 5
        msg = str(caught.value)
        assert msg.startswith(f"{lock_path(target)}: gave up after") and f"pid {holder.pid} (python -c: held by the test)" in msg
        assert "SIGNFLOW_ZOO_LOCK_TIMEOUT" in msg and caught.value.holder["pid"] == holder.pid
        assert len(told) == 1 and f"waiting for {lock_path(target)}: held by pid {holder.pid}" in told[0]
        # through sync: the store's lock, its bound from the environment
        write_result(result_doc(), results_dir(isolated_home) / "bench-x.json")
        store_holder = hold_lock(store_db(tmp_path))
        try:
            monkeypatch.setenv(cachefiles.LOCK_TIMEOUT_ENV, "0.5")
            assert main(["sync"]) == 1
            err = capsys.readouterr().err
            assert f"{lock_path(store_db(tmp_path))}: gave up after" in err and f"pid {store_holder.pid}" in err
            assert "Traceback" not in err
        finally:
            end(store_holder)
    finally:
        end(holder)
    with exclusive(target, timeout=0.1) as held:  # free again: the kernel dropped the lock with its holder
        assert held and lock_holder(target)["pid"] == os.getpid()
    assert lock_holder(target) == {} and not is_locked(target)


def test_lock_timeout_setting_and_durable_writes(tmp_path, monkeypatch):
    monkeypatch.delenv(cachefiles.LOCK_TIMEOUT_ENV, raising=False)
    assert cachefiles.lock_timeout("store") < cachefiles.lock_timeout("training")
    monkeypatch.setenv(cachefiles.LOCK_TIMEOUT_ENV, "inf")
    assert cachefiles.lock_timeout("store") == float("inf")
    monkeypatch.setenv(cachefiles.LOCK_TIMEOUT_ENV, "soon")
    with pytest.raises(cachefiles.SignFlowError, match="SIGNFLOW_ZOO_LOCK_TIMEOUT='soon'"):
        cachefiles.lock_timeout()
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(cachefiles.os, "fsync", lambda fd: synced.append(fd) or real(fd))
    atomic_write_text(tmp_path / "r.json", "{}")
    assert len(synced) == 2  # the data before the rename, the folder after it
    assert (tmp_path / "r.json").read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_mlflow_keys_and_values_are_made_acceptable():
    assert tracking.mlflow_key("describe.threads(intra)") == "describe.threads_intra_"
    assert tracking.mlflow_key("latency_p50_ms_b1") == "latency_p50_ms_b1"  # an accepted key is unchanged
    assert tracking.mlflow_key("describe.a//b") == "describe.a__b" and tracking.mlflow_key("describe.a/") == "describe.a_"
    long = tracking.mlflow_key("k" * 300)
    assert len(long) == tracking.MAX_KEY_LEN and long != tracking.mlflow_key("k" * 301)
    entries = tracking.mlflow_entries({"a(b)": "1", "a_b_": "2", "v": "y" * 9000}, tracking.MAX_TAG_LEN)
    assert list(entries) == ["a_b_", "a_b__2", "v"] and len(entries["v"]) == tracking.MAX_TAG_LEN
    assert result_files.uploaded_to({"uploaded": True, "uri": "http://me:***@host:5000"},
                                    tracking.store_key("http://me:secret@host:5000"))
