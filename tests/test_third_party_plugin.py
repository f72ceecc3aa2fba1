"""The example third-party plugin, installed with pip into this environment like a user would."""

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from signflow_zoo.api import cpu_flags

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "plugins" / "signflow-zoo-ort-int8"
DIST = "signflow-zoo-ort-int8"


@pytest.fixture(scope="module")
def installed_plugin():
    try:
        metadata.version(DIST)
        was_installed = True
    except metadata.PackageNotFoundError:
        was_installed = False
    if not was_installed:
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
                               str(PLUGIN_DIR)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    yield
    if not was_installed:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", DIST], capture_output=True, timeout=300)


@pytest.mark.slow  # over 2 s: out of the fast loop (-m 'not slow'), still in CI
def test_backends_lists_the_installed_plugin(installed_plugin):
    proc = subprocess.run([sys.executable, "-m", "signflow_zoo.cli", "backends", "--json"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)["backends"]}
    assert rows["onnx-int8"]["package"] == f"{DIST} 0.1.0" and rows["onnx-int8"]["plugin"] == "ort_int8"
    assert rows["onnx-int8"]["precision"] == "int8" and rows["onnx-int8"]["available"]


def test_plugin_passes_the_conformance_checks(installed_plugin, tmp_path, tiny_artifacts):
    from signflow_zoo.plugins import PluginRegistry
    from signflow_zoo.testing import check_runner

    # the registry the class came from: the process-wide one may predate the fixture's pip install
    reg = PluginRegistry()
    report = check_runner(reg.get("onnx-int8").cls, tmp_path, artifacts=tiny_artifacts, registry=reg)
    assert report.available and report.ok, report.problems
    assert report.parity["max_abs"] > 0  # really quantized: not bit-identical to fp32


def test_the_quantized_graph_is_an_artifact_kind_built_once(installed_plugin, tmp_path, tiny_artifacts):
    from dataclasses import replace

    from signflow_zoo.api import ensure_artifact
    from signflow_zoo.plugins import PluginRegistry

    reg = PluginRegistry(environment=False)
    assert reg.artifact_kinds["onnx-int8-dynamic"].plugin.name == "ort_int8"
    logs: list[str] = []
    for _ in range(2):
        arts = replace(tiny_artifacts, hashes=dict(tiny_artifacts.hashes), info={}, paths={})
        path = ensure_artifact(arts, "onnx-int8-dynamic", reg, home=tmp_path, log=logs.append)
    assert len(logs) == 1 and path.parent.parent == tmp_path / "artifacts" / "kinds" / "onnx-int8-dynamic"
    assert path.stat().st_size < tiny_artifacts.onnx.stat().st_size  # int8 weights are smaller
    vnni = bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())
    assert arts.info["onnx-int8-dynamic"]["build"] == {"weight_type": "QInt8", "op_types": ["MatMul", "Gemm"],
                                                       "reduce_range": not vnni}  # 7-bit weights without VNNI
    assert arts.info["onnx-int8-dynamic"]["host_choices"] == {"reduce_range": not vnni}


@pytest.mark.slow  # over 2 s: out of the fast loop (-m 'not slow'), still in CI
def test_plugin_runs_through_bench_parity(installed_plugin, tiny_zoo_file, tmp_path):
    # a model trained enough to be decisive, and 16 held-out clips beside the 5 random parity inputs: with 2 epochs
    # and 8 clips, int8 flipped 2 of 13 near-tied argmaxes in 2 of 9 runs (agreement 0.85 < the 0.90 policy)
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "signflow_zoo.cli", "--zoo", str(tiny_zoo_file), "bench", "--preset",
                           "tiny", "--backends", "onnx-cpu,onnx-int8", "--data", "synthetic:classes=4,signers=6,clips=4,seed=1",
                           "--quick", "--epochs", "6", "--min-time", "0.05", "--exporter", "legacy", "--no-track",
                           "--no-progress", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    recs = {r["backend"]: r for r in json.loads(out.read_text())["records"]}
    int8 = recs["onnx-int8"]
    assert int8["status"] == "ok", int8["reason"]
    assert int8["plugin"].startswith("ort_int8 (signflow-zoo-ort-int8")
    assert int8["parity"]["precision"] == "int8" and int8["parity"]["samples"] > 0
    assert int8["latency"]["1"]["p50_ms"] > 0
