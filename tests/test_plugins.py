import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from signflow_zoo import hookspecs
from signflow_zoo.api import FEATURE_DIM, ArtifactKind, Availability, OrtRunner, Runner, Tolerance, hookimpl
from signflow_zoo.cli.commands import main
from signflow_zoo.common.errors import BackendError, InputError
from signflow_zoo.backends.parity import compare
from signflow_zoo.plugins import PluginRegistry, get_registry
from signflow_zoo.testing import check_runner

BUILTIN = ["torch-eager", "onnx-cpu", "onnx-cuda", "onnx-cuda-graph", "onnx-cuda-graph-fp16", "onnx-optimized",
           "torch-compile", "torch-compile-bf16", "onnx-tensorrt"]
REGISTERED = get_registry().names()
ROOT = Path(__file__).resolve().parents[1]
HOOKS = [n for n in dir(hookspecs) if n.startswith("register_")]


def registry(*plugins) -> PluginRegistry:
    """Built-ins plus ``plugins``; nothing from entry points or the environment."""
    return PluginRegistry(plugins, entry_points=False, environment=False)


def test_builtins_are_registered_as_plugins_in_order():
    reg = registry()
    assert reg.names() == BUILTIN
    assert all(reg.get(name).plugin.package == "built-in" for name in BUILTIN)
    assert not reg.broken and [p.name for p in reg.plugins] == [
        "torch_eager", "onnx_cpu", "onnx_cuda", "onnx_optimized", "torch_compile", "onnx_tensorrt"]
    assert PluginRegistry(builtins=False, entry_points=False, environment=False).names() == []


# OpenVINO compiles per check (2-7 s each): in CI, not in the fast loop (tests/test_lowp_plugins.py covers them too)
@pytest.mark.parametrize("backend", [pytest.param(n, marks=pytest.mark.slow) if n.startswith("openvino") else n
                                     for n in REGISTERED])
def test_every_registered_backend_conforms(backend, tmp_path, tiny_artifacts):
    """Shapes, dtypes, parity within the declared precision, InputError on bad input, an honest reason."""
    cls = get_registry().get(backend).cls
    report = check_runner(cls, tmp_path, artifacts=tiny_artifacts)
    assert report.ok, report.problems
    if not report.available:
        assert report.reason  # unavailable says why
    else:
        assert report.parity["samples"] == 12


def test_cpu_backends_available_and_cuda_unavailable_here(capsys):
    import torch

    assert main(["backends", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["backends"]}
    for name in ("torch-eager", "onnx-cpu", "onnx-optimized"):
        assert rows[name]["available"], rows[name]
    if not torch.cuda.is_available():
        assert not rows["onnx-cuda"]["available"] and "CUDAExecutionProvider" in rows["onnx-cuda"]["reason"]


def test_onnx_cuda_reports_silent_cpu_fallback(monkeypatch):
    """onnxruntime-gpu on a machine without CUDA lists the provider and then falls back to CPU."""
    import onnxruntime as ort

    from signflow_zoo.backends.ort import probe_provider

    real = ort.get_available_providers()
    if "CUDAExecutionProvider" in real:
        pytest.skip("this machine's onnxruntime really has CUDA; the fallback cannot be provoked")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider"] + real)
    probe_provider.cache_clear()
    try:
        av = registry().availability("onnx-cuda")
    finally:
        probe_provider.cache_clear()
    assert not av.ok and not av.broken
    assert "CUDAExecutionProvider" in av.reason and ("bound CPUExecutionProvider" in av.reason or "failed" in av.reason)


def test_onnx_cuda_prepare_refuses_a_cpu_session(tiny_artifacts):
    import onnxruntime as ort

    from signflow_zoo.api import BackendUnavailable

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("real CUDA provider present")
    runner = registry().get("onnx-cuda").cls()
    with pytest.raises(BackendUnavailable, match="instead of CUDAExecutionProvider"):
        runner.prepare(tiny_artifacts)
    assert not runner.prepared


# -- registration: isolation, ordering, built-in names ------------------------------------------------
class NotARunner:
    name = "nope"


class GoodRunner(Runner):
    name = "good-one"
    artifact = "onnx"


class _Plugin:
    def __init__(self, *classes, fail=None):
        self.classes, self.fail = classes, fail

    @hookimpl
    def register_runners(self, register):
        for c in self.classes:
            register(c)
        if self.fail:
            raise self.fail


class _FirstPlugin(_Plugin):
    @hookimpl(tryfirst=True)
    def register_runners(self, register):
        super().register_runners(register)


def _named(base, name, **attrs):
    return type(f"R_{name.replace('-', '_')}", (base,), {"name": name, **attrs})


def test_registration_rejects_non_runner_and_duplicates():
    dup = _named(Runner, "onnx-cpu")
    reg = registry(_Plugin(NotARunner), _Plugin(dup), _Plugin(GoodRunner))
    errors = {b.name: b.error for b in reg.broken}
    assert "expects a Runner subclass" in errors["inline-0"]
    assert "'onnx-cpu' is already registered by built-in plugin 'onnx_cpu'" in errors["inline-1"]
    assert "good-one" in reg.names() and reg.get("onnx-cpu").plugin.package == "built-in"


@pytest.mark.parametrize("plugin_cls", [_Plugin, _FirstPlugin], ids=["plain", "tryfirst"])
def test_a_plugin_cannot_evict_a_builtin(plugin_cls):
    thief = _named(OrtRunner, "onnx-optimized", artifact="onnx")
    reg = registry(plugin_cls(thief))
    assert reg.get("onnx-optimized").cls.artifact == "onnx-optimized" and reg.get("onnx-optimized").plugin.name == "onnx_optimized"
    assert [b.name for b in reg.broken] == ["inline-0"]
    assert "already registered by built-in plugin 'onnx_optimized'" in reg.broken[0].error


def test_third_party_hooks_run_in_pluggy_order():
    """Later-registered plugins first, unless a hook says tryfirst: the first to claim a name keeps it."""
    a, b = _named(Runner, "contested", summary="a"), _named(Runner, "contested", summary="b")
    assert registry(_Plugin(a), _Plugin(b)).get("contested").cls.summary == "b"
    reg = registry(_FirstPlugin(a), _Plugin(b))
    assert reg.get("contested").cls.summary == "a"
    assert "already registered by plugin 'inline-0'" in reg.broken[0].error and reg.broken[0].name == "inline-1"


def test_a_plugin_failing_midway_is_reported_and_rolled_back():
    reg = registry(_Plugin(_named(Runner, "half-registered"), fail=RuntimeError("boom")))
    assert "half-registered" not in reg.names()
    assert reg.broken[0].error == "RuntimeError: boom"
    assert reg.names() == BUILTIN


def test_system_exit_while_registering_is_isolated_but_keyboard_interrupt_is_not():
    reg = registry(_Plugin(GoodRunner, fail=SystemExit(4)), _Plugin(_named(Runner, "fine")))
    assert reg.broken[0].error == "SystemExit: 4" and "good-one" not in reg.names() and "fine" in reg.names()
    with pytest.raises(KeyboardInterrupt):
        registry(_Plugin(fail=KeyboardInterrupt()))


def test_unknown_hook_name_is_reported():
    class Typo:
        @hookimpl
        def register_runner(self, register):  # missing "s"
            pass

    reg = registry(Typo())
    assert "unknown hook register_runner; hooks: register_artifact_kinds, register_runners" in reg.broken[0].error


def test_availability_that_raises_is_a_broken_reason():
    class Exploding(Runner):
        name = "exploding"

        @classmethod
        def availability(cls):
            raise SystemExit("probe called sys.exit")

    class Liar(Runner):
        name = "liar"

        @classmethod
        def availability(cls):
            return True

    reg = registry(_Plugin(Exploding, Liar))
    av = reg.availability("exploding")
    assert not av.ok and av.broken and av.reason == "availability() raised SystemExit: probe called sys.exit"
    assert reg.availability("liar").broken and "returned True" in reg.availability("liar").reason
    assert reg.availability("onnx-cpu").ok and not reg.availability("onnx-cpu").broken


# -- required modules ----------------------------------------------------------------------------------
def test_a_missing_required_module_makes_the_backend_unavailable_with_its_name():
    calls = []

    class NeedsMissing(Runner):
        name = "needs-missing"
        requires = ("json", "module_that_does_not_exist_xyz")

        @classmethod
        def availability(cls):
            calls.append(cls.name)  # never reached: the requirement is checked first
            return Availability.yes("here")

    plain = _named(Runner, "plain-needs-missing", requires=("module_that_does_not_exist_xyz",))  # base availability()
    fine = _named(Runner, "needs-json", requires=("json",))
    reg = registry(_Plugin(NeedsMissing, plain, fine))
    assert {"needs-missing", "plain-needs-missing", "needs-json"} <= set(reg.names()) and not reg.broken
    for name in ("needs-missing", "plain-needs-missing"):
        av = reg.availability(name)
        assert not av.ok and not av.broken, av
        assert av.reason.startswith("module_that_does_not_exist_xyz is not importable: ")
        assert "No module named 'module_that_does_not_exist_xyz'" in av.reason
        assert "install the package that provides the module 'module_that_does_not_exist_xyz'" in av.reason
    assert NeedsMissing.availability() == reg.availability("needs-missing") and calls == []
    assert reg.availability("needs-json").ok and NeedsMissing.requires == ("json", "module_that_does_not_exist_xyz")
    report = check_runner(NeedsMissing, None)  # the kit: unavailable, with the reason, is conforming
    assert report.ok and not report.available and "module_that_does_not_exist_xyz" in report.reason


def test_a_missing_builtin_requirement_says_how_to_install_it(monkeypatch):
    """The built-ins declare torch / onnxruntime; a missing one is named with its pip package."""
    import sys

    reg = registry()
    assert reg.get("torch-eager").cls.requires == ("torch",) and reg.get("torch-compile-bf16").cls.requires == ("torch",)
    assert all(reg.get(n).cls.requires == ("onnxruntime",) for n in BUILTIN if n.startswith("onnx-"))
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    for name in ("torch-eager", "torch-compile"):
        av = reg.availability(name)
        assert not av.ok and not av.broken and av.reason.startswith("PyTorch (torch) is not importable: ")
        assert "pip install torch" in av.reason
    for name in ("onnx-cpu", "onnx-cuda", "onnx-tensorrt"):
        av = reg.availability(name)
        assert not av.ok and not av.broken and av.reason.startswith("ONNX Runtime (onnxruntime) is not importable: ")
        assert "pip install onnxruntime, or onnxruntime-gpu" in av.reason


def test_requires_must_be_module_names():
    bad = [_named(Runner, "req-str", requires="torch"), _named(Runner, "req-int", requires=(1,)),
           _named(Runner, "req-empty", requires=("",))]
    reg = registry(*(_Plugin(c) for c in bad))
    assert len(reg.broken) == 3 and all("requires must be a tuple of module names" in b.error for b in reg.broken)


# -- precision -------------------------------------------------------------------------------------
def test_a_new_precision_needs_its_own_tolerance_and_builtin_ones_keep_theirs():
    int4 = _named(Runner, "int4-no-tol", precision="int4")
    int4_ok = _named(Runner, "int4-tol", precision="int4", tolerance=Tolerance(None, 0.8))
    loose_fp32 = _named(Runner, "loose-fp32", precision="fp32", tolerance=Tolerance(1.0, 0.0))
    reg = registry(_Plugin(int4), _Plugin(int4_ok), _Plugin(loose_fp32))
    errors = " | ".join(b.error for b in reg.broken)
    assert "precision 'int4' is not one of fp32, tf32, fp16, bf16, int8; declare its parity tolerance" in errors
    assert "precision 'fp32' has a fixed parity tolerance" in errors
    assert reg.names()[-1] == "int4-tol"
    ref = np.eye(10, dtype=np.float32) * 5
    noisy = ref + 0.5
    assert compare(noisy, ref, "int4", int4_ok.tolerance).ok  # top-1 kept: within the declared tolerance
    assert not compare(noisy, ref, "fp32", int4_ok.tolerance).ok  # the table's fp32 wins over a given tolerance


# -- prepared flag -----------------------------------------------------------------------------------
def test_the_base_class_marks_a_runner_prepared(tiny_artifacts):
    class New(OrtRunner):
        name = "new-style"

    class Old(OrtRunner):
        name = "old-style"

        def prepare(self, artifacts):
            super().prepare(artifacts)
            self.prepared = True  # what plugins written before the base class did it still works

    class FailsLate(OrtRunner):
        name = "fails-late"

        def prepare(self, artifacts):
            super().prepare(artifacts)
            raise BackendError("after the session was made")

    x = np.zeros((1, 8, FEATURE_DIM), np.float32)
    for cls in (New, Old):
        runner = cls()
        assert not runner.prepared
        runner.prepare(tiny_artifacts)
        assert runner.prepared and runner.run(x).shape == (1, tiny_artifacts.num_classes)
    runner = FailsLate()
    with pytest.raises(BackendError, match="after the session"):
        runner.prepare(tiny_artifacts)
    assert not runner.prepared
    with pytest.raises(BackendError, match="call prepare"):
        runner.run(x)


# -- entry points and SIGNFLOW_ZOO_PLUGINS ----------------------------------------------------------
def _fake_distribution(folder, module_src: str, name="fakeplug"):
    """A real installed-distribution layout on sys.path: dist-info with an entry point + module."""
    (folder / f"{name}.py").write_text(textwrap.dedent(module_src))
    dist = folder / f"{name}-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text(f"[signflow_zoo]\n{name} = {name}\n")
    return folder


COPY_PLUGIN = """
from signflow_zoo.api import OrtRunner, hookimpl

class Copy(OrtRunner):
    name = "{backend}"

@hookimpl
def register_runners(register):
    register(Copy)
"""


def test_entry_point_plugin_is_discovered_with_its_distribution(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(_fake_distribution(tmp_path, COPY_PLUGIN.format(backend="onnx-cpu-copy"))))
    reg = PluginRegistry(environment=False)
    assert reg.get("onnx-cpu-copy").plugin.package == "fakeplug 0.3"
    assert "onnx-cpu-copy" not in PluginRegistry(entry_points=False, environment=False).names()
    monkeypatch.setenv("SIGNFLOW_ZOO_BLOCK_PLUGINS", "fakeplug")
    assert "onnx-cpu-copy" not in PluginRegistry().names()


def test_environment_plugins_load_after_entry_points_and_can_be_blocked(tmp_path, monkeypatch):
    (tmp_path / "sfz_env_first.py").write_text(COPY_PLUGIN.format(backend="env-copy"))
    (tmp_path / "sfz_env_second.py").write_text(COPY_PLUGIN.format(backend="env-copy"))
    monkeypatch.syspath_prepend(str(_fake_distribution(tmp_path, COPY_PLUGIN.format(backend="env-copy"), "epplug")))
    monkeypatch.setenv("SIGNFLOW_ZOO_PLUGINS", "sfz_env_first, sfz_env_second ,sfz_env_missing")
    reg = PluginRegistry()
    # registered after the entry points, and pluggy calls the last registered first: the env plugin wins
    assert reg.get("env-copy").plugin.name == "sfz_env_second"
    errors = {b.name: b.error for b in reg.broken}
    assert errors["sfz_env_missing"].startswith("ModuleNotFoundError: No module named 'sfz_env_missing'")
    assert "already registered by plugin 'sfz_env_second'" in errors["epplug"]
    assert reg.get("env-copy").plugin.package == "SIGNFLOW_ZOO_PLUGINS"
    monkeypatch.setenv("SIGNFLOW_ZOO_BLOCK_PLUGINS", "sfz_env_second,sfz_env_first,epplug")
    assert "env-copy" not in PluginRegistry().names()
    assert PluginRegistry(environment=False).get("env-copy").plugin.name == "epplug"  # environment ignored


BAD_PLUGINS = {
    "sfz_exit_at_import": "raise SystemExit(3)\n",
    "sfz_exit_in_register": """
        from signflow_zoo.api import hookimpl

        @hookimpl
        def register_runners(register):
            raise SystemExit("no GPU, giving up")
        """,
    "sfz_thief": """
        from signflow_zoo.api import OrtRunner, hookimpl

        class Thief(OrtRunner):
            name = "onnx-cpu"
            summary = "a third-party onnx-cpu"

        @hookimpl(tryfirst=True)
        def register_runners(register):
            register(Thief)
        """,
    "sfz_bad_availability": """
        from signflow_zoo.api import Runner, hookimpl

        class Bad(Runner):
            name = "bad-availability"

            @classmethod
            def availability(cls):
                raise RuntimeError("probe exploded")

        @hookimpl
        def register_runners(register):
            register(Bad)
        """,
    "sfz_good": COPY_PLUGIN.format(backend="env-good"),
}


@pytest.mark.slow  # over 2 s: out of the fast loop (-m 'not slow'), still in CI
def test_backends_command_lists_every_kind_of_broken_plugin_and_runs_the_rest(tmp_path):
    """In a fresh process, as the harness's workers will: everything reaches it through the environment."""
    for name, src in BAD_PLUGINS.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(src))
    _fake_distribution(tmp_path, "raise ImportError('missing dependency xyz')\n", "brokenplug")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "SIGNFLOW_ZOO_PLUGINS": ",".join(BAD_PLUGINS)}
    env.pop("SIGNFLOW_ZOO_BLOCK_PLUGINS", None)
    run = [sys.executable, "-m", "signflow_zoo.cli", "backends"]
    proc = subprocess.run([*run, "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    rows = {r["name"]: r for r in out["backends"]}
    errors = {b["plugin"]: b["error"] for b in out["broken_plugins"]}
    assert rows["onnx-cpu"]["plugin"] == "onnx_cpu" and rows["onnx-cpu"]["available"]
    assert rows["env-good"]["available"] and rows["env-good"]["package"] == "SIGNFLOW_ZOO_PLUGINS"
    assert not rows["bad-availability"]["available"]
    assert errors["sfz_bad_availability"] == "bad-availability: availability() raised RuntimeError: probe exploded"
    assert errors["sfz_exit_at_import"] == "SystemExit: 3"
    assert errors["sfz_exit_in_register"] == "SystemExit: no GPU, giving up"
    assert "'onnx-cpu' is already registered by built-in plugin 'onnx_cpu'" in errors["sfz_thief"]
    assert errors["brokenplug"] == "ImportError: missing dependency xyz"
    text = subprocess.run(run, capture_output=True, text=True, timeout=120, env=env)
    assert text.returncode == 0 and "broken plugin sfz_exit_at_import (SIGNFLOW_ZOO_PLUGINS): SystemExit: 3" in text.stdout


def test_blocking_a_builtin_by_name(monkeypatch):
    monkeypatch.setenv("SIGNFLOW_ZOO_BLOCK_PLUGINS", "onnx_cuda,signflow_zoo.backends.builtin.torch_eager")
    assert PluginRegistry(entry_points=False).names() == ["onnx-cpu", "onnx-optimized", "torch-compile",
                                                          "torch-compile-bf16", "onnx-tensorrt"]


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(BackendError, match="unknown backend 'tensorrt'.*onnx-cpu"):
        registry().select("onnx-cpu,tensorrt")


def test_runner_refuses_bad_input_with_expected_shape(tiny_artifacts):
    runner = registry().get("onnx-cpu").cls()
    with pytest.raises(BackendError, match="prepare"):
        runner.run(np.zeros((1, 64, FEATURE_DIM), np.float32))
    runner.prepare(tiny_artifacts)
    with pytest.raises(InputError, match=r"\[batch, frames, 469\], got \[1, 64, 12\]"):
        runner.run(np.zeros((1, 64, 12), np.float32))
    with pytest.raises(InputError, match="numpy array"):
        runner.run([[0.0]])
    out = runner.run(np.zeros((2, 30, FEATURE_DIM), np.float32))
    assert out.shape == (2, tiny_artifacts.num_classes)
    assert runner.describe()["provider"] == "CPUExecutionProvider"


# -- artifact kinds in the registry ---------------------------------------------------------------
def _kind(name, source="onnx", **attrs):
    return type(f"K_{name.replace('-', '_')}", (ArtifactKind,),
                {"name": name, "source": source, "version": "1", "main_file": "model.onnx", **attrs})


class _KindPlugin:
    def __init__(self, *kinds, runners=()):
        self.kinds, self.runners = kinds, runners

    @hookimpl
    def register_artifact_kinds(self, register):
        for k in self.kinds:
            register(k)

    @hookimpl
    def register_runners(self, register):
        for r in self.runners:
            register(r)


def test_kinds_register_before_runners_so_a_backend_may_use_another_plugins_kind():
    user = _named(OrtRunner, "uses-b", artifact="kind-b")
    reg = registry(_KindPlugin(runners=[user]), _KindPlugin(_kind("kind-a")), _KindPlugin(_kind("kind-b", "kind-a")))
    assert not reg.broken
    assert reg.kind_names() == ["torch", "onnx", "onnx-optimized", "onnx-fp16", "kind-b", "kind-a"]
    assert reg.get("uses-b").cls is user and reg.artifact_kind("kind-b").source == "kind-a"
    with pytest.raises(BackendError, match="unknown artifact kind 'kind-c'; known kinds: torch, onnx, onnx-optimized"):
        reg.artifact_kind("kind-c")


def test_bad_kinds_break_their_plugin_only():
    reg = registry(
        _KindPlugin(_kind("onnx")),  # a built-in kind's name
        _KindPlugin(_kind("orphan", "nowhere"), _kind("sibling")),  # an unknown source: the plugin goes
        _KindPlugin(_kind("loop-a", "loop-b"), _kind("loop-b", "loop-a")),
        _KindPlugin(_kind("no-file", main_file="")),
        _KindPlugin(_kind("escape", main_file="../x.onnx")),
        _KindPlugin(_kind("fine"), runners=[_named(OrtRunner, "uses-fine", artifact="fine")]),
        _KindPlugin(runners=[_named(OrtRunner, "uses-missing", artifact="orphan")]),
    )
    errors = [b.error for b in reg.broken]
    assert reg.kind_names()[4:] == ["fine"] and "uses-fine" in reg.names() and "uses-missing" not in reg.names()
    assert any("artifact kind 'onnx' is built in" in e for e in errors)
    assert any("artifact kind 'orphan': unknown source kind 'nowhere' (orphan)" in e for e in errors)
    assert any("a cycle" in e for e in errors)
    assert any("must set main_file" in e for e in errors)
    assert any("main_file must be a file name inside dest" in e for e in errors)
    assert any("backend 'uses-missing': artifact must be one of torch, onnx, onnx-optimized, onnx-fp16, fine" in e for e in errors)


# -- the contract is documented and tested (each hook) --------------------------------------------------
@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_one_line_docstring_a_readme_entry_and_a_test(hook):
    doc = (getattr(hookspecs, hook).__doc__ or "").strip()
    assert doc and "\n" not in doc, f"{hook}: give it a one-line docstring"
    guide = (ROOT / "docs" / "plugins.md").read_text()
    section = guide[guide.index("## Write a backend plugin"):]
    section = section[:section.index("\n## ", 1)]
    assert re.search(rf"`{hook}\(register\)`", section), f"document {hook} in docs/plugins.md 'Write a backend plugin'"
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    assert f"def {hook}(" in tests, f"no test implements {hook}"
