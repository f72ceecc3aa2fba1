"""Naming and selecting a Ray cluster's nodes as bench hosts, the cluster command's key, and the command's user
errors that come before any cluster is reached: no Ray cluster needed (tests/test_cluster.py starts one)."""

from __future__ import annotations

import pytest

from signflow_zoo.bench.harness import BenchConfig
from signflow_zoo.cluster.nodes import HOST_LABEL, alive_nodes, check_address, name_of, select
from signflow_zoo.cluster.runs import command_key
from signflow_zoo.cluster.task import NodeJob, node_environment
from signflow_zoo.common.errors import ClusterError


def raw(node_id: str, *, label: str | None = None, resource: str | None = None, hostname: str = "vm", cpus: float = 4,
        gpus: float = 0, alive: bool = True) -> dict:
    res = {"CPU": cpus, "memory": 1e9, **({"GPU": gpus} if gpus else {})}
    if resource:
        res[f"{HOST_LABEL}:{resource}"] = 1.0
    return {"NodeID": node_id, "Alive": alive, "NodeManagerAddress": "10.0.0." + node_id[-1],
            "NodeManagerHostname": hostname, "Resources": res, "Labels": {HOST_LABEL: label} if label else {}}


def test_a_node_is_named_by_label_then_resource_then_hostname():
    assert name_of(raw("n1", label="lab-1", resource="other", hostname="h")) == ("lab-1", "label")
    assert name_of(raw("n2", resource="gpu-a", hostname="h")) == ("gpu-a", "resource")
    assert name_of(raw("n3", hostname="box-7")) == ("box-7", "hostname")


def test_alive_nodes_sorted_with_their_resources_and_the_cpu_less_head_left_out():
    nodes, notes = alive_nodes([raw("n1", label="zeta", cpus=8, gpus=1), raw("n2", label="alpha"),
                                raw("n3", label="dead", alive=False), raw("n4", label="head", cpus=0)])
    assert [n.name for n in nodes] == ["alpha", "zeta"]
    assert (nodes[1].cpus, nodes[1].gpus, nodes[1].threads) == (8, 1, 8)
    assert notes == ["node head has no CPUs in Ray (num-cpus 0): not a bench host"]


def test_two_nodes_of_one_name_or_a_bad_name_are_errors_saying_how_to_name_them():
    with pytest.raises(ClusterError, match=r"two nodes are named 'vm'.*--labels signflow-zoo-host=NAME"):
        alive_nodes([raw("n1"), raw("n2")])  # two nodes on one hostname, no labels
    with pytest.raises(ClusterError, match=r"host name 'a b'.*letters, digits"):
        alive_nodes([raw("n1", label="a b")])


def test_select_all_some_or_an_unknown_host():
    nodes, _ = alive_nodes([raw("n1", label="a"), raw("n2", label="b"), raw("n3", label="c")])
    assert [n.name for n in select(nodes, "all")] == ["a", "b", "c"]
    assert [n.name for n in select(nodes, "c, a,c")] == ["c", "a"]
    with pytest.raises(ClusterError, match=r"no alive node named 'x'; the cluster's hosts are a, b, c"):
        select(nodes, "a,x")
    with pytest.raises(ClusterError, match="no alive node with CPUs"):
        select([], "all")


@pytest.mark.parametrize("address", ["auto", "127.0.0.1:6379", "ray://head.internal:10001", "[::1]:6379"])
def test_addresses_accepted(address):
    assert check_address(address) == address


@pytest.mark.parametrize("address", ["", "head", "http://head:6379", "head:0", "head:99999", "a b:1"])
def test_addresses_refused_with_the_forms(address):
    with pytest.raises(ClusterError, match=r"auto.*HOST:PORT.*ray://HOST:PORT"):
        check_address(address)


def test_the_command_key_ignores_outputs_and_hosts_but_not_what_is_measured():
    base = BenchConfig(presets="tiny", backends="onnx-cpu")
    assert command_key(base) == command_key(BenchConfig(presets="tiny", backends="onnx-cpu", json_path="x.json",
                                                        progress=False))
    assert command_key(base) != command_key(BenchConfig(presets="tiny", backends="onnx-cpu", seed=1))
    assert command_key(base) != command_key(BenchConfig(presets="tiny", backends="torch-eager"))


def test_a_node_job_never_shows_its_credentials_and_restores_the_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///local.db")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    job = NodeJob(name="lab-1", cluster_run_id="r1", config=BenchConfig(),
                  tracking_env={"MLFLOW_TRACKING_URI": "http://zoo:s3cret@mlflow:5000",
                                "MLFLOW_TRACKING_PASSWORD": "s3cret"})
    assert "s3cret" not in repr(job) and "s3cret" not in str(job)
    import os

    with node_environment(job):
        assert os.environ["MLFLOW_TRACKING_URI"] == "http://zoo:s3cret@mlflow:5000"
        assert os.environ["SIGNFLOW_ZOO_HOST"] == "lab-1"
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///local.db" and "MLFLOW_TRACKING_PASSWORD" not in os.environ


def _bench_cluster(*extra: str) -> list[str]:
    return ["bench", "--preset", "lightweight", "--no-progress", *extra]


def test_cluster_user_errors_exit_2_in_one_line_before_any_cluster_is_reached(monkeypatch, tmp_path, capsys):
    from signflow_zoo.cli.commands import main

    from test_bench import _free_port

    def error(*args: str) -> str:
        assert main(_bench_cluster(*args)) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    # the conftest's store is a local SQLite file: the nodes could not reach it
    assert "is a file on this machine" in error("--cluster", "127.0.0.1:6379")
    assert "HOST:PORT" in error("--cluster", "no-port")
    assert "go with --cluster" in error("--hosts", "a,b")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    assert "--no-track with --cluster" in error("--cluster", "127.0.0.1:6379", "--no-track")
    # the tracking server down: refused before the cluster is touched
    err = error("--cluster", "127.0.0.1:6379")
    assert "tracking store is not reachable" in err and "connecting" not in err


def test_an_unreachable_cluster_is_one_clear_line_not_minutes_of_retries(monkeypatch, capsys):
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' (CI installs it)")
    from signflow_zoo.cluster.driver import ClusterBench

    from test_bench import _free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # never reached: connecting fails first
    bench = ClusterBench(BenchConfig(), f"127.0.0.1:{_free_port()}", log=lambda msg: None)
    with pytest.raises(ClusterError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:\d+ \(Connection refused\)"):
        bench.connect()


def test_a_resumed_run_keeps_the_missing_cells_of_hosts_not_selected_now(monkeypatch):
    from signflow_zoo.cluster.driver import ClusterBench
    from signflow_zoo.cluster.nodes import Node
    from signflow_zoo.cluster.runs import ClusterRun

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # never contacted here
    a = Node("n1", "a", "label", 2, 0, "10.0.0.1", "a")
    earlier = [{"host": "b", "preset": "tiny", "backend": "onnx-cpu", "status": "lost", "reason": "node lost", "ran": False},
               {"host": "b", "preset": "tiny", "backend": "x", "status": "unavailable", "reason": "not installed",
                "ran": True}]

    def document(previous_hosts, done):
        bench = ClusterBench(BenchConfig(presets="tiny"), "127.0.0.1:6379", hosts="a", log=lambda msg: None)
        bench.cells = {("a", "tiny", "onnx-cpu"): {"status": "ok", "run_id": "r-a"}}
        bench.done = done
        run = ClusterRun("run", "key", resumed=True, previous_cells=earlier, previous_hosts=previous_hosts)
        return bench.document(run, [a], {}, [], "now")

    doc = document(["a", "b"], {})  # --hosts a: b's lost cell is still missing, so the run is not complete
    cells = {(c["host"], c["backend"]): c for c in doc["cells"]}
    assert doc["state"] == "incomplete" and not cells["b", "onnx-cpu"]["ran"]
    assert "not selected now" in cells["b", "onnx-cpu"]["reason"] and cells["b", "x"]["ran"]
    # b's cell was filled by another attempt in the meantime (the store has it): complete
    doc = document(["a", "b"], {("b", "tiny", "onnx-cpu"): {"status": "ok", "run_id": "r-b"}})
    assert doc["state"] == "complete" and doc["unchecked_hosts"] == []
    # a host an earlier attempt selected, whose cells no document recorded (its driver died): not complete
    doc = document(["a", "b", "c"], {("b", "tiny", "onnx-cpu"): {"status": "ok", "run_id": "r-b"}})
    assert doc["state"] == "incomplete" and doc["unchecked_hosts"] == ["c"]


def test_retrain_and_model_files_are_refused_on_a_cluster(monkeypatch):
    from signflow_zoo.cluster.driver import ClusterBench

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with pytest.raises(ClusterError, match="--retrain with --cluster"):
        ClusterBench(BenchConfig(retrain=True), "auto")
