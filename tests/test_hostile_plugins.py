"""Plugins that hang, abort, leak threads or print: the CLI still answers, lists them, and keeps its output clean.

Real plugin modules written to a folder and named in SIGNFLOW_ZOO_PLUGINS, run through the real CLI in a
fresh process (``python -m signflow_zoo.cli``) with a timeout, so that a regression fails here instead of
hanging the test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

PLUGINS = {
    # availability() never returns
    "sfz_hang_availability": """
        import time
        from signflow_zoo.api import Availability, Runner, hookimpl

        class Hang(Runner):
            name = "hang-availability"

            @classmethod
            def availability(cls):
                time.sleep(3600)
                return Availability.yes()

        @hookimpl
        def register_runners(register):
            register(Hang)
        """,
    # kills the interpreter as it is imported
    "sfz_abort_at_import": """
        import os
        os.abort()
        """,
    # prints everywhere (Python and fd 1), builds its kind fine, and leaves a thread that never ends
    "sfz_chatty": """
        import os, shutil, threading, time
        from signflow_zoo.api import ArtifactKind, OrtRunner, hookimpl

        print("chatty: hello from import")
        threading.Thread(target=time.sleep, args=(3600,), name="chatty-forever").start()  # not a daemon

        class ChattyOnnx(ArtifactKind):
            name = "chatty-onnx"
            source = "onnx"
            version = "1"
            main_file = "model.onnx"

            def build(self, ctx):
                print("chatty: building")
                os.write(1, b"chatty: raw bytes on fd 1 while building\\n")
                shutil.copy(ctx.source, ctx.dest / "model.onnx")
                return {}

        class Chatty(OrtRunner):
            name = "chatty"
            artifact = "chatty-onnx"

            @classmethod
            def availability(cls):
                print("chatty: available")
                return super().availability()

            def prepare(self, artifacts):
                os.write(1, b"chatty: raw bytes on fd 1 in prepare\\n")
                super().prepare(artifacts)

            def infer(self, features, mask):
                print("chatty: infer")
                return super().infer(features, mask)

        @hookimpl
        def register_artifact_kinds(register):
            register(ChattyOnnx)

        @hookimpl
        def register_runners(register):
            register(Chatty)
        """,
    # its artifact kind's build() aborts half-way
    "sfz_build_abort": """
        import os
        from signflow_zoo.api import ArtifactKind, OrtRunner, hookimpl

        class AbortOnnx(ArtifactKind):
            name = "abort-onnx"
            source = "onnx"
            version = "1"
            main_file = "model.onnx"

            def build(self, ctx):
                (ctx.dest / "half.bin").write_bytes(b"half a model")
                os.abort()

        class AbortBuild(OrtRunner):
            name = "abort-build"
            artifact = "abort-onnx"

        @hookimpl
        def register_artifact_kinds(register):
            register(AbortOnnx)

        @hookimpl
        def register_runners(register):
            register(AbortBuild)
        """,
}
PROBE_TIMEOUT = 2  # SIGNFLOW_ZOO_PLUGIN_TIMEOUT for these tests
BOUND = 90  # no command here may take longer (the default timeout alone would be 60 s)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_artifacts):
    """One folder of plugins, one zoo home (the probe's verdicts are kept there), a model file and a clip."""
    from signflow_zoo.data.synthetic import SyntheticSpec, generate

    root = tmp_path_factory.mktemp("hostile")
    (root / "plugins").mkdir()
    for name, src in PLUGINS.items():
        (root / "plugins" / f"{name}.py").write_text(textwrap.dedent(src))
    clips, _ = generate(SyntheticSpec(num_classes=2, num_signers=1, clips_per_signer_per_class=1, seed=5))
    np.save(root / "clip.npy", clips[0].raw)
    env = {**os.environ, "SIGNFLOW_ZOO_HOME": str(root / "home"), "SIGNFLOW_ZOO_PLUGINS": ",".join(PLUGINS),
           "SIGNFLOW_ZOO_PLUGIN_TIMEOUT": str(PROBE_TIMEOUT),
           "PYTHONPATH": os.pathsep.join(p for p in (str(root / "plugins"), os.environ.get("PYTHONPATH")) if p)}
    for var in ("SIGNFLOW_ZOO_PLUGIN_ISOLATION", "SIGNFLOW_ZOO_PLUGIN_REPROBE"):
        env.pop(var, None)
    # the installed plugins (OpenVINO's import alone can take longer than PROBE_TIMEOUT) are not what is tested
    env["SIGNFLOW_ZOO_BLOCK_PLUGINS"] = ",".join(ep.name for ep in metadata.entry_points(group="signflow_zoo"))
    return {"root": root, "home": root / "home", "env": env, "model": tiny_artifacts.onnx, "clip": root / "clip.npy"}


def cli(hostile, *argv) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "signflow_zoo.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=BOUND, env=hostile["env"], cwd=hostile["root"], check=False)
    return proc, time.monotonic() - t0


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


@pytest.mark.slow
def test_backends_lists_a_hanging_and_an_aborting_plugin_as_broken_and_the_others_as_usual(hostile):
    proc, took = cli(hostile, "backends", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # the chatty plugin printed, but not here
    errors = {b["plugin"]: b["error"] for b in out["broken_plugins"]}
    assert errors["sfz_abort_at_import"].startswith("crashed at import (SIGABRT); not loaded")
    assert errors["sfz_hang_availability"].startswith(
        f"timeout after {PROBE_TIMEOUT} s in availability() of backend 'hang-availability' "
        "(SIGNFLOW_ZOO_PLUGIN_TIMEOUT); not loaded")
    rows = {r["name"]: r for r in out["backends"]}
    assert "hang-availability" not in rows
    assert rows["chatty"]["available"] and rows["abort-build"]["available"] and rows["onnx-cpu"]["available"]
    assert "chatty: hello from import" in proc.stderr  # its availability() was asked in the probe's child
    assert "'chatty-forever' still running" in proc.stderr  # and the process ended anyway
    assert took < 60, took
    # the verdicts are kept: the next command pays neither the crash nor the timeout again
    kept = json.loads((hostile["home"] / "plugins" / "probe.json").read_text())["verdicts"]
    assert {v["plugin"] for v in kept.values()} >= set(PLUGINS)
    proc, took = cli(hostile, "backends")
    assert proc.returncode == 0, proc.stderr
    assert "broken plugin sfz_abort_at_import (SIGNFLOW_ZOO_PLUGINS): crashed at import (SIGABRT)" in proc.stdout
    assert "chatty: available" in proc.stderr and "chatty:" not in proc.stdout  # asked here this time


@pytest.mark.slow
def test_predict_with_a_build_that_aborts_fails_in_one_line_and_leaves_no_temporary_folder(hostile):
    before = files_under(hostile["home"] / "artifacts")
    proc, _ = cli(hostile, "predict", hostile["clip"], "--model", hostile["model"], "--backend", "abort-build",
                  "--format", "json")
    assert proc.returncode == 2 and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("signflow-zoo predict: error:")]
    assert errors == [("signflow-zoo predict: error: building artifact kind 'abort-onnx' of plugin 'sfz_build_abort' "
                       "(SIGNFLOW_ZOO_PLUGINS) for conformance-tiny crashed (SIGABRT); nothing was cached")], proc.stderr
    assert "Traceback" not in proc.stderr
    after = files_under(hostile["home"] / "artifacts")
    assert after - before <= {"kinds", "kinds/abort-onnx"}, after - before  # the folder it was to go in, empty


@pytest.mark.slow
def test_predict_and_stream_json_stay_parseable_and_exit_despite_a_plugin_thread(hostile):
    proc, took = cli(hostile, "predict", hostile["clip"], "--model", hostile["model"], "--backend", "chatty",
                     "--format", "json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["backend"] == "chatty" and len(res["predictions"]) == 1
    for line in ("chatty: building", "raw bytes on fd 1 while building", "raw bytes on fd 1 in prepare",
                 "chatty: infer", "'chatty-forever' still running"):
        assert line in proc.stderr
    assert took < 60, took
    proc, _ = cli(hostile, "stream", hostile["clip"], "--model", hostile["model"], "--backend", "chatty",
                  "--format", "json", "--no-realtime")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert "summary" in lines[-1] and "chatty: infer" in proc.stderr


# -- in process: the pieces ---------------------------------------------------------------------------
def test_availability_that_hangs_in_process_is_a_timeout(monkeypatch):
    """An inline plugin is not probed, but its availability() is still bounded."""
    from signflow_zoo.api import Availability, Runner, hookimpl
    from signflow_zoo.plugins import PluginRegistry, describe_backends

    release = threading.Event()

    class Stuck(Runner):
        name = "stuck"

        @classmethod
        def availability(cls):
            release.wait(30)
            return Availability.yes()

    class Plugin:
        @hookimpl
        def register_runners(self, register):
            register(Stuck)

    monkeypatch.setenv("SIGNFLOW_ZOO_PLUGIN_TIMEOUT", "0.2")
    reg = PluginRegistry([Plugin()], builtins=False, entry_points=False, environment=False)
    try:
        t0 = time.monotonic()
        rows, broken = describe_backends(reg)
        assert time.monotonic() - t0 < 5
        assert not rows[0]["available"] and broken[0]["error"] == "stuck: timeout after 0.2 s in availability()"
    finally:
        release.set()


def test_a_dead_builders_temporary_folder_is_removed_by_the_next_build(tiny_artifacts, tmp_path):
    from signflow_zoo.api import ArtifactKind, ensure_artifact, hookimpl
    from signflow_zoo.backends.kinds import _host_tag
    from signflow_zoo.plugins import PluginRegistry

    class Copy(ArtifactKind):
        name = "copy-for-stale"
        source = "onnx"
        version = "1"
        main_file = "model.onnx"

        def build(self, ctx):
            (ctx.dest / "model.onnx").write_bytes(ctx.source.read_bytes())

    class Plugin:
        @hookimpl
        def register_artifact_kinds(self, register):
            register(Copy)

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    parent = tmp_path / "artifacts" / "kinds" / Copy.name
    stale = parent / f".0123abcd-tmp-{_host_tag()}-{dead.pid}-x1y2"
    live = parent / f".0123abcd-tmp-{_host_tag()}-{os.getpid()}-x1y2"
    elsewhere = parent / f".0123abcd-tmp-otherhost-{dead.pid}-x1y2"
    for folder in (stale, live, elsewhere):
        folder.mkdir(parents=True)
        (folder / "half.bin").write_bytes(b"half")
    reg = PluginRegistry([Plugin()], builtins=False, entry_points=False, environment=False)
    arts = replace(tiny_artifacts, paths={}, hashes=dict(tiny_artifacts.hashes), info={})
    path = ensure_artifact(arts, Copy.name, reg, home=tmp_path, log=lambda msg: None)
    assert sorted(p.name for p in parent.iterdir()) == sorted([path.parent.name, live.name, elsewhere.name])
