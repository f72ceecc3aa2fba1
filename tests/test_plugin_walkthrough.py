"""docs/plugins.md "Write a backend plugin": its files, written to an empty folder, make a working plugin."""

import importlib
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"

pytestmark = pytest.mark.slow


def readme_files() -> dict[str, str]:
    """The files the page shows as "`my-backend/<path>`:" followed by a fenced block."""
    text = README.read_text()
    return dict(re.findall(r"^`(my-backend/[\w./-]+)`:\n\n```\w*\n(.*?)```", text, flags=re.S | re.M))


def test_the_readme_shows_a_whole_plugin():
    assert sorted(readme_files()) == ["my-backend/my_backend/__init__.py", "my-backend/pyproject.toml",
                                      "my-backend/test_my_backend.py"]


def write_readme_files(folder: Path) -> None:
    for rel, body in readme_files().items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(body)


def test_the_readme_plugin_loads_by_module_name_and_passes_its_conformance_test(tmp_path):
    write_readme_files(tmp_path)
    folder = tmp_path / "my-backend"
    env = {**os.environ, "PYTHONPATH": str(folder), "SIGNFLOW_ZOO_PLUGINS": "my_backend",
           "SIGNFLOW_ZOO_HOME": str(tmp_path / "home")}
    env.pop("SIGNFLOW_ZOO_BLOCK_PLUGINS", None)
    proc = subprocess.run([sys.executable, "-m", "signflow_zoo.cli", "backends", "--json"], capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    row = next(r for r in out["backends"] if r["name"] == "my-backend")
    assert row["available"] and row["artifact"] == "onnx-ort-basic" and row["package"] == "SIGNFLOW_ZOO_PLUGINS"
    assert not [b for b in out["broken_plugins"] if b["plugin"] == "my_backend"]
    # the page's own test file, run by pytest as the plugin's author would
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_backend.py"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


def test_the_readme_plugin_kind_is_built_and_differs_from_its_source(tmp_path, tiny_artifacts):
    """In-process, with a registry built for the test: the kind really is an optimized graph."""
    from signflow_zoo.api import ensure_artifact
    from signflow_zoo.plugins import PluginRegistry
    from signflow_zoo.testing import check_runner

    write_readme_files(tmp_path)
    sys.path.insert(0, str(tmp_path / "my-backend"))
    try:
        module = importlib.import_module("my_backend")
    finally:
        sys.path.remove(str(tmp_path / "my-backend"))
    reg = PluginRegistry([module], entry_points=False, environment=False)
    report = check_runner(reg.get("my-backend").cls, tmp_path / "kit", artifacts=tiny_artifacts, registry=reg)
    assert report.ok and report.available, report.problems
    arts = replace(tiny_artifacts, hashes=dict(tiny_artifacts.hashes), info={}, paths={})
    path = ensure_artifact(arts, "onnx-ort-basic", reg, home=tmp_path / "home", log=lambda m: None)
    assert arts.hashes["onnx-ort-basic"] != arts.hashes["onnx"] and path.stat().st_size > 0
    assert arts.info["onnx-ort-basic"]["build"]["level"] == "basic"
