"""``bench --cluster`` on a real Ray cluster: a head and a worker node started here on 127.0.0.1, each with its own
``signflow-zoo-host`` label and zoo home, results in a real MLflow server on loopback. The command runs as a user
runs it (``python -m signflow_zoo``, a child process), against the cluster's address.

Ray's own test cluster (``ray.cluster_utils.Cluster``) with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps every
node and socket on 127.0.0.1 (``ray start`` would use the machine's interface address)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import TINY_DATA, TINY_ZOO
from test_bench import _free_port, _start_mlflow_server

# before Ray is imported (it reads these then); the driver children inherit them. Every node and socket on 127.0.0.1,
# and no usage report to Ray's server (it would reach another address, even to say that reporting is off)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_USAGE_STATS_REPORT_URL"] = "http://127.0.0.1:9/"
ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' (CI installs it)")

pytestmark = pytest.mark.slow

from signflow_zoo.cluster.nodes import HOST_LABEL  # noqa: E402

BACKENDS = "onnx-cpu,torch-eager"


@pytest.fixture(scope="module")
def cluster_env(tmp_path_factory):
    """A MLflow server and a 2-node Ray cluster (alpha: head, beta: worker), one CPU each, both on loopback."""
    from ray.cluster_utils import Cluster

    root = tmp_path_factory.mktemp("cluster")
    port = _free_port()
    (root / "tiny-zoo.toml").write_text(TINY_ZOO)
    head = {"num_cpus": 1, "labels": {HOST_LABEL: "alpha"}, "env_vars": {"SIGNFLOW_ZOO_HOME": str(root / "home-alpha")},
            "include_dashboard": False}
    with ThreadPoolExecutor(1) as pool:  # the server starts while the cluster does
        starting = pool.submit(_start_mlflow_server, root, port)
        try:
            cluster = Cluster(initialize_head=True, head_node_args=head)
        finally:
            server = starting.result()
    assert cluster.address.startswith("127.0.0.1:"), cluster.address  # no test may reach another address
    env = {"root": root, "uri": f"http://127.0.0.1:{port}", "cluster": cluster, "address": cluster.address,
           "nodes": {"beta": _add_beta(cluster, root)}}
    try:
        yield env
    finally:
        cluster.shutdown()
        server.terminate()
        server.wait(timeout=30)


def _add_beta(cluster, root: Path):
    node = cluster.add_node(num_cpus=1, labels={HOST_LABEL: "beta"},
                            env_vars={"SIGNFLOW_ZOO_HOME": str(root / "home-beta")})
    cluster.wait_for_nodes(timeout=120)  # a replaced beta: after the cluster has marked the old one dead
    return node


def _command(env, *extra: str) -> list[str]:
    return [sys.executable, "-m", "signflow_zoo.cli", "--zoo", str(env["root"] / "tiny-zoo.toml"), "bench",
            "--cluster", env["address"], "--preset", "tiny", "--data", TINY_DATA, "--backends", BACKENDS, "--quick",
            "--min-time", "0.05", "--exporter", "legacy", "--no-progress", "--no-stream", "--batch-sizes", "1",
            "--experiment", env["experiment"], *extra]


def _run(env, *extra: str, uri: str | None = None, **kw) -> subprocess.CompletedProcess:
    child_env = {**os.environ, "MLFLOW_TRACKING_URI": uri or env["uri"],
                 "SIGNFLOW_ZOO_HOME": str(env["root"] / "home-driver")}
    return subprocess.run(_command(env, *extra), env=child_env, capture_output=True, text=True, timeout=600, **kw)


def _start_until_benching(env, host: str, *extra: str) -> subprocess.Popen:
    """The command in the background, returned once ``host``'s bench has started (its result file's lock exists)."""
    child_env = {**os.environ, "MLFLOW_TRACKING_URI": env["uri"], "SIGNFLOW_ZOO_HOME": str(env["root"] / "home-driver")}
    proc = subprocess.Popen(_command(env, *extra), env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if list((env["root"] / f"home-{host}").glob("results/bench-*.json.lock")):
            return proc
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"{host}'s bench did not start: " + proc.communicate()[1][-3000:])


def _records(env, cluster_run: str | None = None) -> list[dict]:
    from signflow_zoo.report import collect_records

    from mlflow import MlflowClient

    return collect_records(experiment=env["experiment"], client=MlflowClient(env["uri"]), latest=False,
                           cluster_run=cluster_run)


def _report(env, monkeypatch, capsys, *args: str) -> str:
    """``signflow-zoo report ARGS`` on the cluster's store (in this process: it touches no Ray): its stdout."""
    from signflow_zoo.cli.commands import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["uri"])
    capsys.readouterr()
    assert main(["report", "--experiment", env["experiment"], *args]) == 0
    return capsys.readouterr().out


def _document(stdout: str) -> dict:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("cluster run "))
    return json.loads(Path(line.rsplit("document: ", 1)[1].strip()).read_text())


def test_every_host_benches_once_trained_weights_and_one_table(cluster_env, monkeypatch, capsys):
    env = {**cluster_env, "experiment": "cluster-all"}
    # credentials in the URI (the server has no login and ignores them): they reach the nodes, never the output
    # onnx-cuda too: no GPU on these nodes, so its cells are unavailable with the reason, as in a local bench
    # --epochs 3: weights of their own (no other test trains them), so "trained here" holds in any test order
    res = _run(env, "--hosts", "all", "--backends", BACKENDS + ",onnx-cuda", "--epochs", "3",
               uri=env["uri"].replace("http://", "http://zoo:s3cret-pw@"))
    assert res.returncode == 0, res.stderr[-4000:]
    doc = _document(res.stdout)
    assert doc["state"] == "complete" and {h["name"] for h in doc["hosts"]} == {"alpha", "beta"}
    assert sorted((c["host"], c["backend"], c["status"]) for c in doc["cells"]) == [
        ("alpha", "onnx-cpu", "ok"), ("alpha", "onnx-cuda", "unavailable"), ("alpha", "torch-eager", "ok"),
        ("beta", "onnx-cpu", "ok"), ("beta", "onnx-cuda", "unavailable"), ("beta", "torch-eager", "ok")]
    # one record per cell in the store, each node's linked to the cluster run, each with its own host class
    recs = _records(env, doc["cluster_run_id"])
    assert sorted((r["host"], r["backend"]) for r in recs) == [
        ("alpha", "onnx-cpu"), ("alpha", "onnx-cuda"), ("alpha", "torch-eager"),
        ("beta", "onnx-cpu"), ("beta", "onnx-cuda"), ("beta", "torch-eager")]
    assert all(r.get("reason") for r in recs if r["backend"] == "onnx-cuda")
    assert all(r.get("host_class") and r["cluster_run_id"] == doc["cluster_run_id"] for r in recs)
    # trained once, on one node (one registered version of these weights); the other pulled it (its home had none)
    (weights,) = doc["weights"]
    assert weights["source"] == "trained" and weights["trained_on"] == "alpha"
    from mlflow import MlflowClient

    versions = [v for v in MlflowClient(env["uri"]).search_model_versions("name = 'signflow-zoo-tiny'")
                if v.tags.get("signflow_zoo.cache_key") == weights["key"]]
    assert [v.version for v in versions] == [str(weights["version"])]
    beta_lines = [ln for ln in res.stderr.splitlines() if "signflow-zoo:beta" in ln]
    assert any(f"pulled signflow-zoo-tiny version {weights['version']}" in ln for ln in beta_lines), res.stderr[-3000:]
    assert not any("training" in ln for ln in beta_lines)
    assert "\x1b[" not in res.stderr  # no colour codes in a pipe
    assert "s3cret-pw" not in res.stdout + res.stderr and "tracked in MLflow (http://zoo:***@127.0.0.1" in res.stderr
    # the by-host table has both hosts as columns
    assert "alpha" in res.stdout and "beta" in res.stdout and "within-host" in res.stdout
    shown = _report(env, monkeypatch, capsys, "--by-host")
    header = next(ln for ln in shown.splitlines() if ln.startswith("preset"))
    assert "alpha" in header and "beta" in header
    # (the same command again, now complete, opens a new cluster run: test_a_cluster_run_is_resumed_...)


def test_a_node_killed_mid_run_leaves_its_cells_lost_and_a_rerun_fills_only_them(cluster_env, monkeypatch, capsys):
    env = {**cluster_env, "experiment": "cluster-kill"}
    cluster = env["cluster"]
    proc = _start_until_benching(env, "beta", "--hosts", "all")
    try:
        cluster.remove_node(env["nodes"]["beta"], allow_graceful=False)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-4000:]
    doc = _document(out)
    cells = {(c["host"], c["backend"]): c for c in doc["cells"]}
    assert doc["state"] == "incomplete"
    assert cells["alpha", "onnx-cpu"]["status"] == "ok" and cells["alpha", "torch-eager"]["status"] == "ok"
    assert {cells["beta", b]["status"] for b in ("onnx-cpu", "torch-eager")} == {"lost"}
    assert "node lost mid-run" in cells["beta", "onnx-cpu"]["reason"]
    assert "did not run" in out and "beta / tiny / onnx-cpu: lost" in out
    assert sorted(r["host"] for r in _records(env, doc["cluster_run_id"])) == ["alpha", "alpha"]
    shown = _report(env, monkeypatch, capsys, "--by-host", "--cluster-run", doc["cluster_run_id"])
    assert "lost" in shown and "node lost mid-run" in shown

    # beta comes back (a new node, same label): the same command runs beta's two cells only, in the same cluster run
    env["nodes"]["beta"] = _add_beta(cluster, env["root"])
    res = _run(env, "--hosts", "all")
    assert res.returncode == 0, res.stderr[-4000:]
    again = _document(res.stdout)
    assert again["cluster_run_id"] == doc["cluster_run_id"] and again["resumed"] and again["state"] == "complete"
    assert "2 cell(s) to run on 1 host(s)" in res.stderr
    recs = _records(env, doc["cluster_run_id"])
    cells_run = sorted((r["host"], r["backend"]) for r in recs)
    assert cells_run == [("alpha", "onnx-cpu"), ("alpha", "torch-eager"), ("beta", "onnx-cpu"), ("beta", "torch-eager")]
    assert all(r["status"] == "ok" for r in recs)  # nothing lost, nothing twice


def test_an_unknown_host_is_an_error_naming_the_clusters_hosts(cluster_env):
    env = {**cluster_env, "experiment": "cluster-errors"}
    bad_host = _run(env, "--hosts", "alpha,gamma")
    assert bad_host.returncode == 2 and "no alive node named 'gamma'" in bad_host.stderr
    assert "alpha, beta" in bad_host.stderr and "Traceback" not in bad_host.stderr


def test_ctrl_c_cancels_the_tasks_and_keeps_the_cells_for_a_rerun(cluster_env):
    env = {**cluster_env, "experiment": "cluster-interrupt"}
    proc = _start_until_benching(env, "alpha", "--hosts", "alpha")
    try:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    docs = sorted((env["root"] / "home-driver" / "results" / "cluster").glob("cluster-*.json"), key=os.path.getmtime)
    doc = json.loads(docs[-1].read_text())
    assert doc["state"] == "incomplete"
    assert {c["status"] for c in doc["cells"]} == {"lost"} and "cancelled" in doc["cells"][0]["reason"]
    time.sleep(3)  # a task that outlived its cancel would have logged its records by now
    assert _records(env, doc["cluster_run_id"]) == []
    # (the same command again fills the cells, as after a lost node: the test above)


def test_a_cluster_run_is_resumed_unless_complete_or_its_driver_is_alive(cluster_env, monkeypatch):
    """The store side of resuming (no Ray): a live driver's run is not shared, a dead one's is taken over, a complete
    one is not reopened, and --no-resume always opens a new one."""
    from signflow_zoo.cluster.runs import HEARTBEAT_TAG, ClusterRuns
    from signflow_zoo.common.errors import ClusterError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", cluster_env["uri"])
    runs = ClusterRuns("cluster-runs")
    first = runs.open("k1", ["a", "b"], {"presets": "tiny"})
    assert not first.resumed
    with pytest.raises(ClusterError, match=r"is running now .*--no-resume"):
        runs.open("k1", ["a"], {})
    runs.tracker.client.set_tag(first.run_id, HEARTBEAT_TAG, "0")  # its driver died long ago
    taken = runs.open("k1", ["a"], {})
    assert taken.run_id == first.run_id and taken.resumed and taken.previous_hosts == ["a", "b"]
    other = runs.open("k1", ["a"], {}, resume=False)
    assert other.run_id != first.run_id and not other.resumed
    runs.finish(other.run_id, {"state": "complete", "cells": [], "unchecked_hosts": []}, None)
    assert runs.open("k1", ["a"], {}).run_id not in (first.run_id, other.run_id)  # newest complete: a new run
