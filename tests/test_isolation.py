"""Every backend runs in its own worker process: a crash, a hang, an error at one batch size or a broken
plugin becomes that backend's row, and every other backend completes."""

import signal

import pytest

import faulty_backends
from conftest import TINY_DATA
from signflow_zoo.bench.harness import BenchConfig, run_bench
from signflow_zoo.plugins import PluginRegistry

pytestmark = pytest.mark.slow

BACKENDS = "onnx-cpu,test-crash,test-hang,test-fail-batch,test-broken-availability"


@pytest.fixture
def faulty_registry():
    return PluginRegistry([faulty_backends], entry_points=False)


def test_misbehaving_backends_become_rows_and_the_others_complete(tiny_zoo_file, warm_home, faulty_registry):
    cfg = BenchConfig.quick(presets="tiny", backends=BACKENDS, data=TINY_DATA, exporter="legacy", track=False,
                            stream=False, plots=False, zoo_file=str(tiny_zoo_file), progress=False,
                            batch_sizes=(1, faulty_backends.TRIGGER_BATCH))
    cfg.timing.timeout = 3.0
    cfg.timing.min_time = 0.05
    doc = run_bench(cfg, log=lambda msg: None, registry=faulty_registry)
    recs = {r["backend"]: r for r in doc["records"]}
    b, trig = "1", str(faulty_backends.TRIGGER_BATCH)

    ok = recs["onnx-cpu"]
    assert ok["status"] == "ok" and set(ok["latency"]) == {b, trig}
    assert ok["memory"]["added_mb"] >= 0 and ok["memory"]["peak_mb"] >= ok["memory"]["baseline_mb"]

    crash = recs["test-crash"]
    assert crash["status"] == "crashed"
    assert signal.SIGSEGV.name in crash["reason"] and "test-crash" in crash["reason"]
    assert b in crash["latency"] and trig not in crash["latency"]  # what was measured before the crash is kept
    assert crash["parity"]["ok"] and crash["accuracy"]["n"] > 0

    hang = recs["test-hang"]
    assert hang["status"] == "timeout" and "--timeout 3" in hang["reason"]
    assert b in hang["latency"] and trig not in hang["latency"]

    partial = recs["test-fail-batch"]
    assert partial["status"] == "ok"
    assert b in partial["latency"] and trig not in partial["latency"]
    assert "MemoryError" in partial["latency_errors"][trig]
    assert partial["memory"]["peak_mb"] > 0  # the worker lived on

    broken = recs["test-broken-availability"]
    assert broken["status"] == "broken" and "driver query exploded" in broken["reason"]


def test_a_backend_class_that_cannot_reach_a_worker_is_a_clear_failure(tiny_zoo_file, warm_home):
    from signflow_zoo import hookimpl
    from signflow_zoo.api import OrtRunner

    class LocalRunner(OrtRunner):  # defined in a function: not importable by a worker process
        name = "test-local"

    class Plugin:
        @hookimpl
        def register_runners(self, register):
            register(LocalRunner)

    reg = PluginRegistry([Plugin()], entry_points=False)
    cfg = BenchConfig.quick(presets="tiny", backends="test-local", data=TINY_DATA, exporter="legacy", track=False,
                            stream=False, plots=False, zoo_file=str(tiny_zoo_file), progress=False, batch_sizes=(1,))
    doc = run_bench(cfg, log=lambda msg: None, registry=reg)
    (rec,) = doc["records"]
    assert rec["status"] == "failed" and "module level" in rec["reason"]
