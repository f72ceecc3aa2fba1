import json
import textwrap

import numpy as np
import pytest

from signflow_zoo import hookimpl
from signflow_zoo.cli import main
from signflow_zoo.errors import BackendError, InputError
from signflow_zoo.plugins import PluginRegistry, get_registry
from signflow_zoo.runners import Runner
from signflow_zoo.testing import check_runner

BUILTIN = ["torch-eager", "onnx-cpu", "onnx-cuda", "onnx-optimized"]
REGISTERED = get_registry().names()


def test_builtins_are_registered_as_plugins():
    reg = PluginRegistry()
    for name in BUILTIN:
        assert name in reg.names()
        assert reg.get(name).plugin.package == "built-in"
    assert not reg.broken


@pytest.mark.parametrize("backend", REGISTERED)
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

    from signflow_zoo import ort as ort_common

    real = ort.get_available_providers()
    if "CUDAExecutionProvider" in real:
        pytest.skip("this machine's onnxruntime really has CUDA; the fallback cannot be provoked")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider"] + real)
    ort_common.probe_provider.cache_clear()
    try:
        av = get_registry().get("onnx-cuda").cls.availability()
    finally:
        ort_common.probe_provider.cache_clear()
    assert not av.ok
    assert "CUDAExecutionProvider" in av.reason and ("bound CPUExecutionProvider" in av.reason or "failed" in av.reason)


def test_onnx_cuda_prepare_refuses_a_cpu_session(monkeypatch, tiny_artifacts):
    import onnxruntime as ort

    from signflow_zoo.runners import BackendUnavailable

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("real CUDA provider present")
    runner = get_registry().get("onnx-cuda").cls()
    with pytest.raises(BackendUnavailable, match="instead of CUDAExecutionProvider"):
        runner.prepare(tiny_artifacts)


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


def _load_with(monkeypatch, *plugins):
    return PluginRegistry(plugins=plugins)


def test_registration_rejects_non_runner_and_duplicates(monkeypatch):
    class Dup(Runner):
        name = "onnx-cpu"

    reg = _load_with(monkeypatch, _Plugin(NotARunner), _Plugin(Dup), _Plugin(GoodRunner))
    errors = {b.name: b.error for b in reg.broken}
    assert "expects a Runner subclass" in errors["inline-0"]
    assert "already registered" in errors["inline-1"]
    assert "good-one" in reg.names() and "onnx-cpu" in reg.names()


def test_a_plugin_failing_midway_is_reported_and_rolled_back(monkeypatch):
    class Half(Runner):
        name = "half-registered"

    reg = _load_with(monkeypatch, _Plugin(Half, fail=RuntimeError("boom")))
    assert "half-registered" not in reg.names()
    assert any("boom" in b.error for b in reg.broken)
    assert set(BUILTIN) <= set(reg.names())


def _fake_distribution(tmp_path, module_src: str, name="fakeplug"):
    """A real installed-distribution layout on sys.path: dist-info with an entry point + module."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(module_src))
    dist = tmp_path / f"{name}-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text(f"[signflow_zoo]\n{name} = {name}\n")
    return tmp_path


def test_entry_point_plugin_is_discovered_with_its_distribution(tmp_path, monkeypatch, capsys):
    src = """
    from signflow_zoo import hookimpl
    from signflow_zoo.default_plugins.onnx_cpu import OnnxCpuRunner

    class Copy(OnnxCpuRunner):
        name = "onnx-cpu-copy"

    @hookimpl
    def register_runners(register):
        register(Copy)
    """
    monkeypatch.syspath_prepend(str(_fake_distribution(tmp_path, src)))
    reg = PluginRegistry()
    assert reg.get("onnx-cpu-copy").plugin.package == "fakeplug 0.3"
    monkeypatch.setenv("SIGNFLOW_ZOO_BLOCK_PLUGINS", "fakeplug")
    assert "onnx-cpu-copy" not in PluginRegistry().names()


def test_broken_entry_point_plugin_is_reported_and_others_work(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(_fake_distribution(tmp_path, "raise ImportError('missing dependency xyz')\n", "brokenplug")))
    reg = PluginRegistry()
    assert [b.name for b in reg.broken] == ["brokenplug"] and "missing dependency xyz" in reg.broken[0].error
    assert set(BUILTIN) <= set(reg.names())
    import signflow_zoo.plugins as P

    monkeypatch.setattr(P, "_registry", reg)
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "broken plugin brokenplug" in out and "missing dependency xyz" in out and "onnx-cpu" in out


def test_blocking_a_builtin_by_name(monkeypatch):
    monkeypatch.setenv("SIGNFLOW_ZOO_BLOCK_PLUGINS", "onnx_cuda")
    assert "onnx-cuda" not in PluginRegistry().names()


def test_unknown_backend_is_a_clear_error(capsys):
    with pytest.raises(BackendError, match="unknown backend 'tensorrt'.*onnx-cpu"):
        get_registry().select("onnx-cpu,tensorrt")


def test_runner_refuses_bad_input_with_expected_shape(tiny_artifacts):
    runner = get_registry().get("onnx-cpu").cls()
    with pytest.raises(BackendError, match="prepare"):
        runner.run(np.zeros((1, 64, 469), np.float32))
    runner.prepare(tiny_artifacts)
    with pytest.raises(InputError, match=r"\[batch, frames, 469\], got \[1, 64, 12\]"):
        runner.run(np.zeros((1, 64, 12), np.float32))
    with pytest.raises(InputError, match="numpy array"):
        runner.run([[0.0]])
    out = runner.run(np.zeros((2, 30, 469), np.float32))
    assert out.shape == (2, tiny_artifacts.num_classes)
    assert runner.describe()["provider"] == "CPUExecutionProvider"
