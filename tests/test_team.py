"""Team scale, with real parts: the MLflow server exactly as docker-compose.yml declares it, on a real
PostgreSQL cluster started here; several benches at once on one zoo home; the server killed mid-bench;
a server behind basic auth; trained weights shared through the Model Registry."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import team_servers as ts
from conftest import TINY_DATA, TINY_ZOO
from signflow_zoo.cli.commands import main
from signflow_zoo.results.files import COMPLETE_TAG

pytestmark = pytest.mark.slow

BACKENDS = "torch-eager,onnx-cpu"
CHILD_METRICS = {"latency_p50_ms_b1", "latency_p99_ms_b1", "throughput_seq_s_b1", "accuracy_top1", "parity_max_abs"}
CHILD_PARAMS = {"preset", "backend", "host", "artifact_sha256", "result_id"}


# -- servers ----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def compose_env() -> dict[str, str]:
    """The values a user puts in .env: .env.example's, with a fresh database password."""
    env = ts.env_example()
    env["POSTGRES_PASSWORD"] = secrets.token_hex(12)
    return env


@pytest.fixture(scope="session")
def postgres(compose_env):
    bindir = ts.postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
                    "(apt-get install -y postgresql; .ci/run installs it)")
    pytest.importorskip("psycopg2", reason="psycopg2-binary is needed to talk to PostgreSQL (pip install -e '.[dev]')")
    cluster = ts.PostgresCluster(bindir, compose_env["POSTGRES_USER"], compose_env["POSTGRES_PASSWORD"])
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def team_server(postgres, compose_env, tmp_path_factory):
    """The compose file's MLflow server on the PostgreSQL cluster, shared by this module's tests."""
    postgres.create_database(compose_env["POSTGRES_DB"])
    server = ts.MlflowServer(postgres, compose_env["POSTGRES_DB"], tmp_path_factory.mktemp("team-server"), compose_env)
    yield server
    server.kill()


@pytest.fixture
def on_server(team_server, monkeypatch):
    """This test tracks to the team server (restarted first if an earlier test left it killed)."""
    if team_server.proc.poll() is not None:
        team_server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_server.uri)
    return team_server


def zoo_file(tmp_path: Path, name: str) -> Path:
    """The tiny zoo entry under a name of this test's own (registered models are per name)."""
    p = tmp_path / f"zoo-{name}.toml"
    p.write_text(TINY_ZOO.replace('name = "tiny"', f'name = "{name}"'))
    return p


def bench_argv(zoo: Path, preset: str, *extra: str, backends: str = BACKENDS) -> list[str]:
    return ["--zoo", str(zoo), "bench", "--preset", preset, "--data", TINY_DATA, "--quick", "--min-time", "0.05",
            "--batch-sizes", "1", "--backends", backends, "--exporter", "legacy", "--no-progress", "--no-stream",
            "--epochs", "1", *extra]


def warm_argv(zoo: Path, *extra: str, backends: str = BACKENDS) -> list[str]:
    """The tiny entry that `warm_home` holds trained (no training in the test)."""
    return ["--zoo", str(zoo), "bench", "--preset", "tiny", "--data", TINY_DATA, "--quick", "--min-time", "0.05",
            "--batch-sizes", "1", "--backends", backends, "--exporter", "legacy", "--no-progress", "--no-stream",
            "--no-train", *extra]


def cli(argv: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "signflow_zoo.cli", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def runs_of(uri: str, experiment: str = "signflow-zoo", kind: str = "bench-record", deleted: bool = False):
    from mlflow.entities import ViewType

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], f"tags.`signflow_zoo.kind` = '{kind}'", max_results=1000,
                              run_view_type=ViewType.ALL if deleted else ViewType.ACTIVE_ONLY)


def assert_complete(uri: str, docs: list[dict]) -> None:
    """Every parent and child run of these result files is in the store, once, complete and FINISHED."""
    client = MlflowClient(uri)
    children = runs_of(uri)
    by_result = {}
    for run in children:
        by_result.setdefault(run.data.tags["signflow_zoo.result_id"], []).append(run)
    for doc in docs:
        assert doc["tracking"]["uploaded"] is True, doc["result_file"]
        parent = client.get_run(doc["tracking"]["parent_run_id"])
        assert parent.info.status == "FINISHED" and parent.data.tags.get(COMPLETE_TAG) == "1"
        assert parent.data.tags["host"] == doc["environment"]["host"] and "config.presets" in parent.data.params
        for rec in doc["records"]:
            runs = by_result.get(rec["result_id"], [])
            assert len(runs) == 1, (rec["backend"], len(runs))  # recorded once: nothing lost, nothing doubled
            run = runs[0]
            assert run.info.status == "FINISHED" and run.data.tags.get(COMPLETE_TAG) == "1"
            assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert CHILD_PARAMS <= set(run.data.params), rec["backend"]
            assert CHILD_METRICS <= set(run.data.metrics), (rec["backend"], CHILD_METRICS - set(run.data.metrics))
            assert run.data.metrics["latency_p50_ms_b1"] == pytest.approx(rec["latency"]["1"]["p50_ms"])


def result_docs(home: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((home / "results").glob("bench-*.json"))]


# -- 1. the compose file ------------------------------------------------------------------------------
def test_compose_file_is_pinned_and_not_exposed():
    import yaml

    compose = yaml.safe_load(ts.COMPOSE.read_text())
    pg, ml = compose["services"]["postgres"], compose["services"]["mlflow"]
    assert "@sha256:" in pg["image"] and ":16." in pg["image"]  # tag and digest
    assert "pgdata:/var/lib/postgresql/data" in pg["volumes"] and "pgdata" in compose["volumes"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"]) and "ports" not in pg  # the database is not published
    assert compose["networks"]["backend"]["internal"] is True
    assert ml["build"]["dockerfile"] == "mlflow.Dockerfile" and "/health" in " ".join(ml["healthcheck"]["test"])
    dockerfile = (ts.REPO / "deploy" / "mlflow.Dockerfile").read_text()
    assert "FROM ghcr.io/mlflow/mlflow:v3.17.2" in dockerfile and "psycopg2-binary==2.9.13" in dockerfile
    # published on loopback by default; overridable
    assert ml["ports"] == ["${MLFLOW_BIND:-127.0.0.1}:${MLFLOW_PORT:-5000}:5000"]
    assert ts.interpolate(ml["ports"][0], {}) == "127.0.0.1:5000:5000"
    # no credential in the file, none committed; compose refuses to start without a password
    text = ts.COMPOSE.read_text()
    assert "mlflow:mlflow@" not in text and "pip install" not in text
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        ts.compose_mlflow(ts.env_example())
    assert ts.env_example()["POSTGRES_PASSWORD"] == ""
    assert ".env" in (ts.REPO / ".gitignore").read_text().splitlines()
    # MLflow's protections on, with safe defaults: no wildcard hosts or origins
    cmd, environment = ts.compose_mlflow({"POSTGRES_PASSWORD": "x"})
    hosts = cmd[cmd.index("--allowed-hosts") + 1].split(",")
    origins = cmd[cmd.index("--cors-allowed-origins") + 1].split(",")
    assert "*" not in hosts and "*" not in origins and "--disable-security-middleware" not in cmd
    assert all(h.startswith(("localhost", "127.0.0.1")) for h in hosts)
    assert "--serve-artifacts" in cmd and "x" not in " ".join(cmd)  # the password is not on the command line
    assert environment["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://mlflow:x@postgres:5432/")


def test_compose_server_on_postgresql_tracks_a_bench_and_refuses_foreign_hosts(on_server, warm_home, tiny_zoo_file,
                                                                               capsys):
    # the flags the compose file passes exist in this MLflow (the server is running with them)
    assert main(warm_argv(tiny_zoo_file)) == 0
    assert "tracked in MLflow" in capsys.readouterr().err
    docs = result_docs(warm_home)
    assert_complete(on_server.uri, docs)
    assert docs[0]["tracking"]["uri"] == on_server.uri
    # DNS-rebinding protection: an API call under a foreign Host header is refused; /health is exempt
    api = on_server.uri + "/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(api, headers={"Host": "attacker.example"}), timeout=10)
    assert err.value.code == 403
    health = urllib.request.Request(on_server.uri + "/health", headers={"Host": "attacker.example"})
    assert urllib.request.urlopen(health, timeout=10).status == 200
    # CORS: a state-changing call from a foreign origin is refused, from the allowed origin it is not
    create = on_server.uri + "/api/2.0/mlflow/experiments/create"
    body = json.dumps({"name": "cors-probe"}).encode()
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(create, data=body, method="POST", headers={
            "Content-Type": "application/json", "Origin": "https://attacker.example"}), timeout=10)
    assert err.value.code == 403
    assert MlflowClient(on_server.uri).get_experiment_by_name("cors-probe") is None


# -- 3. concurrency ---------------------------------------------------------------------------------
def _other_lines(err: str) -> str:
    """stderr without the run-stability warning: benches timing at once on two cores are unstable by
    construction and say so (tests/test_stability.py proves that warning); nothing else may warn."""
    return "\n".join(line for line in err.splitlines() if not line.startswith("warning: results of this run are unstable"))


def test_four_cold_benches_on_one_home_train_once_and_lose_nothing(on_server, tmp_path, isolated_home, capsys):
    """Four benches start at once on one empty zoo home: one trains and exports (the others wait on the
    locks and reuse), every run is recorded complete, and report tells the hosts apart."""
    zoo = zoo_file(tmp_path, "tiny-crowd")
    procs = []
    for i in range(4):
        env = {**os.environ, "SIGNFLOW_ZOO_HOST": f"crowd-{i}"}
        procs.append(cli(bench_argv(zoo, "tiny-crowd", backends="onnx-cpu"), env))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err and "warning" not in _other_lines(err).lower(), err[-3000:]
    errs = "".join(err for _, err in outs)
    assert errs.count("tiny-crowd: training") == 1  # the checkpoint lock: trained once
    assert errs.count("exporting tiny-crowd to ONNX") == 1  # the export lock: exported once
    assert errs.count("cached checkpoint") == 3
    assert errs.count("registered the weights as signflow-zoo-tiny-crowd version 1") == 1
    docs = result_docs(isolated_home)
    assert len(docs) == 4 and {d["environment"]["host"] for d in docs} == {f"crowd-{i}" for i in range(4)}
    assert_complete(on_server.uri, docs)
    # no cache file collided: one checkpoint, one artifact folder, no temp file left anywhere
    assert len(list((isolated_home / "checkpoints").glob("tiny-crowd-*.pt"))) == 1
    assert len(list((isolated_home / "data").glob("synthetic-*.npz"))) == 1
    assert [p for p in isolated_home.rglob("*") if ".tmp" in p.name or p.name.startswith(".registry-")] == []
    info = json.loads(next((isolated_home / "artifacts").glob("*/info.json")).read_text())
    assert info["optimize"]["sha256"] and info["export"]["sha256"]
    shas = {r["params"]["artifact_sha256"] for d in docs for r in d["records"] if r["backend"] == "onnx-cpu"}
    assert len(shas) == 1  # all four measured the same file
    # report aggregates the four hosts, one row per (backend, host)
    capsys.readouterr()
    assert main(["report", "--format", "json", "--preset", "tiny-crowd"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted((r["backend"], r["host"]) for r in rows) == [("onnx-cpu", f"crowd-{i}") for i in range(4)]
    assert main(["report", "--format", "json", "--preset", "tiny-crowd", "--host", "crowd-2"]) == 0
    assert {r["host"] for r in json.loads(capsys.readouterr().out)} == {"crowd-2"}


def test_two_benches_on_one_fresh_sqlite_store_lose_nothing(warm_home, tiny_zoo_file, tmp_path):
    """Two processes create and write one new local SQLite store at once (MLflow's table creation races
    without the store lock); both invocations are recorded complete."""
    db = tmp_path / "shared.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    argv = warm_argv(tiny_zoo_file, backends="onnx-cpu")
    procs = [cli(argv, {**env, "SIGNFLOW_ZOO_HOST": f"lite-{i}"}) for i in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0 and "tracked in MLflow" in err and "warning" not in _other_lines(err).lower(), err[-3000:]
    docs = result_docs(warm_home)
    assert len(docs) == 2
    assert_complete(f"sqlite:///{db}", docs)


# -- 4. faults ------------------------------------------------------------------------------------------
def test_server_killed_mid_bench_loses_nothing_and_sync_uploads_once(on_server, warm_home, tiny_zoo_file):
    env = {**os.environ, "SIGNFLOW_ZOO_HOST": "killed-host"}
    argv = [*warm_argv(tiny_zoo_file), "--min-time", "1.5"]  # slow enough to be killed under
    proc = subprocess.Popen([sys.executable, "-m", "signflow_zoo.cli", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:  # wait until the bench is timing, then kill the server under it
        seen.append(line)
        if "timing batch" in line:
            on_server.kill()
            break
    rest, _ = proc.communicate(timeout=600)
    output = "".join(seen) + rest
    assert on_server.proc.poll() is not None, "the server was never killed: " + output[-2000:]
    assert proc.returncode == 0, output[-3000:]
    assert "warning" in output and "signflow-zoo sync" in output and "Traceback" not in output
    docs = result_docs(warm_home)
    assert len(docs) == 1 and docs[0]["tracking"]["uploaded"] is False and "in_progress" not in docs[0]["tracking"]
    assert {r["backend"] for r in docs[0]["records"]} == set(BACKENDS.split(","))
    on_server.start()  # same port, same PostgreSQL store
    assert main(["sync"]) == 0
    assert main(["sync"]) == 0  # twice: nothing duplicated
    assert_complete(on_server.uri, result_docs(warm_home))


def test_upload_cut_off_after_a_run_was_created_is_replaced_by_sync(on_server, warm_home, tiny_zoo_file, capsys,
                                                                     monkeypatch):
    """The connection to the server dies after a child run was created but before its metrics were
    logged (here: the proxy in front of the server goes away): that run must not count as uploaded."""
    from signflow_zoo.results.files import read_result, upload
    from signflow_zoo.results.tracking import Tracker

    assert main(warm_argv(tiny_zoo_file, "--no-track")) == 0
    path = next((warm_home / "results").glob("bench-*.json"))
    doc = read_result(path)
    proxy = ts.BasicAuthProxy(on_server.port, None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    tracker = Tracker("signflow-zoo")
    real_log_batch = tracker.log_batch

    def dying_log_batch(run_id, **kw):
        if "metrics" in kw:  # a child run: created, its metrics not logged yet
            proxy.cut()
        return real_log_batch(run_id, **kw)

    tracker.log_batch = dying_log_batch
    with pytest.warns(RuntimeWarning, match="log_batch failed"):
        assert upload(doc, path, tracker) is False
    assert json.loads(path.read_text())["tracking"]["uploaded"] is False
    half = [r for r in runs_of(on_server.uri) if r.data.tags["signflow_zoo.result_id"] in
            {rec["result_id"] for rec in doc["records"]}]
    assert len(half) == 1 and not half[0].data.metrics and COMPLETE_TAG not in half[0].data.tags
    proxy.close()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", on_server.uri)
    assert main(["sync"]) == 0 and "uploaded 1" in capsys.readouterr().out
    assert_complete(on_server.uri, result_docs(warm_home))
    assert MlflowClient(on_server.uri).get_run(half[0].info.run_id).info.lifecycle_stage == "deleted"


# -- 6. credentials -------------------------------------------------------------------------------------
def test_a_password_in_the_tracking_uri_works_and_is_never_shown_or_stored(on_server, warm_home, tiny_zoo_file,
                                                                           monkeypatch, capsys):
    password = "pw-" + secrets.token_hex(8)
    proxy = ts.BasicAuthProxy(on_server.port, "alice", password)
    good = f"http://alice:{password}@127.0.0.1:{proxy.port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": good.replace("alice:", "alice:wrong-"), "SIGNFLOW_ZOO_HOST": "auth-host"}
    try:
        # a wrong password: refused by the proxy; the bench still finishes and keeps its results
        p = cli(warm_argv(tiny_zoo_file), env)
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0 and "HTTP 401" in err and "signflow-zoo sync" in err, err[-3000:]
        assert proxy.refused > 0 and proxy.passed == 0
        # the right one: every call (the /health probe included) carries it as basic auth
        p = cli(["sync"], {**env, "MLFLOW_TRACKING_URI": good})
        out2, err2 = p.communicate(timeout=600)
        assert p.returncode == 0 and "uploaded 1 result file(s)" in out2, err2[-3000:]
        assert proxy.passed > 0 and proxy.refused == 1
        # report through the proxy (in this process: its environment is restored afterwards)
        for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.setenv(var, "")
            monkeypatch.delenv(var)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", good)
        capsys.readouterr()
        assert main(["report", "--format", "json", "--host", "auth-host"]) == 0
        printed = capsys.readouterr()
        rows = json.loads(printed.out)
        assert {(r["backend"], r["host"]) for r in rows} == {(b, "auth-host") for b in BACKENDS.split(",")}
    finally:
        proxy.close()
    # the password appears nowhere: outputs, files, the store's params and tags
    texts = [out, err, out2, err2, printed.out, printed.err]
    texts += [p.read_text(errors="replace") for p in warm_home.rglob("*") if p.is_file() and p.suffix in (".json", ".md")]
    (doc,) = result_docs(warm_home)
    assert doc["tracking"]["uri"] == f"http://alice:***@127.0.0.1:{proxy.port}"
    run = MlflowClient(on_server.uri).get_run(doc["tracking"]["parent_run_id"])
    texts.append(json.dumps([run.data.params, run.data.tags]))
    assert len(texts) > 8 and all(password not in t for t in texts)


def test_redaction_and_basic_auth_probe_units(on_server):
    from signflow_zoo.common.errors import TrackingError
    from signflow_zoo.results.tracking import check_reachable, redact, split_credentials

    assert split_credentials("http://bob:p%40ss@host:5000/x") == ("http://host:5000/x", "bob", "p@ss")
    assert split_credentials("sqlite:///a.db") == ("sqlite:///a.db", None, None)
    assert redact("failed: https://bob:hunter22@h/api and postgresql://u:pw123@db:5432/m") == \
        "failed: https://bob:***@h/api and postgresql://u:***@db:5432/m"
    proxy = ts.BasicAuthProxy(on_server.port, "bob", "right-pass")
    try:
        check_reachable(f"http://bob:right-pass@127.0.0.1:{proxy.port}")
        with pytest.raises(TrackingError, match="HTTP 401") as err:
            check_reachable(f"http://bob:wrong-pass@127.0.0.1:{proxy.port}")
        assert "wrong-pass" not in str(err.value) and "bob:***@" in str(err.value)
    finally:
        proxy.close()


# -- 7. shared weights ------------------------------------------------------------------------------------
@pytest.mark.parametrize("store", ["postgresql", "sqlite"])
def test_weights_trained_on_one_host_are_pulled_by_another(store, request, tmp_path, monkeypatch, capsys):
    if store == "postgresql":
        uri = request.getfixturevalue("on_server").uri
    else:
        uri = f"sqlite:///{tmp_path / 'shared-registry.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    name = f"tiny-share-{store}"
    zoo = zoo_file(tmp_path, name)
    docs = {}
    for host in ("host-a", "host-b"):
        home = tmp_path / host
        monkeypatch.setenv("SIGNFLOW_ZOO_HOME", str(home))
        monkeypatch.setenv("SIGNFLOW_ZOO_HOST", host)
        capsys.readouterr()
        assert main(bench_argv(zoo, name, "--json", str(tmp_path / f"{host}.json"))) == 0
        docs[host] = (json.loads((tmp_path / f"{host}.json").read_text()), capsys.readouterr().err)
    (doc_a, err_a), (doc_b, err_b) = docs["host-a"], docs["host-b"]
    assert f"{name}: training" in err_a and f"registered the weights as signflow-zoo-{name} version 1" in err_a
    assert f"{name}: training" not in err_b and f"pulled signflow-zoo-{name} version 1" in err_b
    assert "exporting" not in err_b  # the registered ONNX export was pulled too
    sha = lambda doc: {r["backend"]: r["params"]["artifact_sha256"] for r in doc["records"]}  # noqa: E731
    assert sha(doc_a) == sha(doc_b) and all(sha(doc_a).values())  # both hosts measured the same files
    ckpt_a = next((tmp_path / "host-a" / "checkpoints").glob("*.pt"))
    ckpt_b = tmp_path / "host-b" / "checkpoints" / ckpt_a.name  # where checkpoint_path expects it
    assert ckpt_b.read_bytes() == ckpt_a.read_bytes()
    client = MlflowClient(uri)
    mv = client.get_model_version_by_alias(f"signflow-zoo-{name}", "latest-trained")
    assert mv.tags["checkpoint_sha256"] == sha(doc_a)["torch-eager"] and mv.tags["onnx_sha256"] == sha(doc_a)["onnx-cpu"]
    assert mv.tags["trained_on"] == "host-a" and mv.tags["data_fingerprint"] and mv.tags["model_version"]
    assert mv.tags["feature_version"] and json.loads(mv.tags["training_config"])["num_epochs"] == 1
    if store != "sqlite":
        return
    # `train --from-registry` pulls the same weights into another cache instead of training
    monkeypatch.setenv("SIGNFLOW_ZOO_HOME", str(tmp_path / "host-d"))
    assert main(["--zoo", str(zoo), "train", "--preset", name, "--data", TINY_DATA, "--epochs", "1",
                 "--from-registry"]) == 0
    assert (tmp_path / "host-d" / "checkpoints" / ckpt_a.name).read_bytes() == ckpt_a.read_bytes()
    assert json.loads(capsys.readouterr().out)["from_registry"] is True
    # a registered file that no longer matches its sha256 is an error naming it, never used
    weights = Path(client.get_run(mv.run_id).info.artifact_uri) / "weights" / ckpt_a.name
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    monkeypatch.setenv("SIGNFLOW_ZOO_HOME", str(tmp_path / "host-c"))
    assert main(bench_argv(zoo, name, "--from-registry")) == 2
    err = capsys.readouterr().err
    assert ckpt_a.name in err and "does not match the registered" in err and "Traceback" not in err
    assert not (tmp_path / "host-c" / "checkpoints" / ckpt_a.name).exists()
    # --from-registry never trains: another config has no registered version
    assert main(bench_argv(zoo, name, "--from-registry", "--seed", "5")) == 2
    err = capsys.readouterr().err
    assert "no registered version" in err and f"{name}: training" not in err
    assert not list((tmp_path / "host-c" / "checkpoints").glob("*.pt"))
