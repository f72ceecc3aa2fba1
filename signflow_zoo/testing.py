"""Conformance checks for backend plugin authors.

Run them on your own backend from your plugin's tests::

    from signflow_zoo.testing import check_runner
    from my_plugin import MyRunner

    def test_conforms(tmp_path):
        report = check_runner(MyRunner, tmp_path)
        assert report.ok, report.problems

``check_runner`` builds a tiny SignTransformer, exports it (plain and optimized ONNX, weights-only
checkpoint), builds the artifact kind the runner consumes when a plugin registered it (through
:func:`~signflow_zoo.backends.kinds.ensure_artifact`, from ``registry``: by default the installed plugins),
and checks: availability is an :class:`Availability` with a reason when unavailable; prepare and run give
float32 logits [batch, classes] at several batch sizes and frame counts; outputs agree with the PyTorch
fp32 reference within the tolerance of the declared precision; a wrong input shape or dtype raises
:class:`~signflow_zoo.common.errors.InputError`; describe() names the backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from signflow_zoo.backends.kinds import ensure_artifact
from signflow_zoo.common.errors import InputError
from signflow_zoo.common.tensors import FEATURE_DIM
from signflow_zoo.backends.parity import compare
from signflow_zoo.backends.runner import Artifacts, Availability, BackendUnavailable, Runner, RunnerOptions, validate_runner_class

if TYPE_CHECKING:
    from signflow_zoo.plugins import PluginRegistry

SHAPES = ((1, 64), (3, 32), (8, 64))


@dataclass
class ConformanceReport:
    backend: str
    available: bool
    reason: str = ""
    problems: list[str] = field(default_factory=list)
    parity: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def tiny_artifacts(folder: str | Path, num_classes: int = 7, seed: int = 0) -> Artifacts:
    """A small trained-free model as every artifact kind, for tests (about a second to build)."""
    import torch

    from signflow_zoo.model.export import serving_metadata
    from signflow_zoo.model.checkpoint import save_checkpoint
    from signflow_zoo.model.export import export_to_onnx, file_sha256, optimize_onnx_model
    from signflow_zoo.model.network import SignTransformer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = SignTransformer(num_classes=num_classes, d_model=48, nhead=4, num_layers=2, dim_feedforward=96).eval()
    labels = [f"sign-{i}" for i in range(num_classes)]
    meta = {"preset": "conformance-tiny", "labels": labels}
    ckpt = save_checkpoint(folder / "tiny.pt", model, meta)
    sm = serving_metadata({**meta, "model_kwargs": model.init_kwargs})
    onnx_path = folder / "tiny.onnx"
    export_to_onnx(model, onnx_path, metadata=sm, exporter="legacy", verify=False)
    opt = optimize_onnx_model(onnx_path, folder / "tiny.optimized.onnx", 4, 48)
    return Artifacts(preset="conformance-tiny", num_classes=num_classes, labels=labels, model_kwargs=model.init_kwargs,
                     checkpoint=ckpt, onnx=onnx_path, onnx_optimized=Path(opt.dst), workdir=folder,
                     hashes={"torch": file_sha256(ckpt), "onnx": file_sha256(onnx_path), "onnx-optimized": opt.sha256})


class RandomCalibration:
    """Calibration clips for the kit, which has no training split: random features like its test inputs."""

    fingerprint = "conformance-random-v1"

    def __call__(self, n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rng = np.random.default_rng(1)
        for start in range(0, n, 8):
            b = min(8, n - start)
            yield rng.standard_normal((b, 64, FEATURE_DIM)).astype(np.float32), rng.random((b, 64)) > 0.1


def bench_artifacts(preset: str, folder: str | Path, num_classes: int = 20, seed: int = 0) -> Artifacts:
    """A zoo preset's artifacts with untrained weights (inference costs the same as trained), for benchmarks
    and the regression gate: weights-only checkpoint, ONNX (legacy exporter, dynamic axes) and its optimized
    graph, in ``folder``."""
    import torch

    from signflow_zoo.model.export import serving_metadata
    from signflow_zoo.model.checkpoint import save_checkpoint
    from signflow_zoo.model.export import export_to_onnx, file_sha256, optimize_onnx_model
    from signflow_zoo.model.network import build_model
    from signflow_zoo.model.zoo import get_model_config

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    entry = get_model_config(preset)
    model = build_model(entry, num_classes=num_classes).eval()
    labels = [f"s{i}" for i in range(num_classes)]
    ckpt = save_checkpoint(folder / "m.pt", model, {"preset": preset, "labels": labels})
    meta = serving_metadata({"preset": preset, "labels": labels, "model_kwargs": model.init_kwargs})
    export_to_onnx(model, folder / "m.onnx", metadata=meta, exporter="legacy", verify=False)
    opt = optimize_onnx_model(folder / "m.onnx", folder / "m.opt.onnx", entry.heads, entry.d_model)
    return Artifacts(preset=preset, num_classes=num_classes, labels=labels, model_kwargs=model.init_kwargs,
                     checkpoint=ckpt, onnx=folder / "m.onnx", onnx_optimized=Path(opt.dst), workdir=folder,
                     hashes={"torch": file_sha256(ckpt), "onnx": file_sha256(folder / "m.onnx"),
                             "onnx-optimized": opt.sha256})


def check_runner(cls: type[Runner], folder: str | Path, artifacts: Artifacts | None = None,
                 options: RunnerOptions | None = None, registry: PluginRegistry | None = None) -> ConformanceReport:
    """Check a backend class against the Runner contract on a tiny model; ``report.problems`` says what failed."""
    import torch

    if registry is None:
        from signflow_zoo.plugins import get_registry

        registry = get_registry()
    try:
        validate_runner_class(cls, registry.kind_names())
    except Exception as exc:  # noqa: BLE001
        return ConformanceReport(getattr(cls, "name", repr(cls)), False, problems=[str(exc)])
    try:
        av = cls.availability()
    except Exception as exc:  # noqa: BLE001
        return ConformanceReport(cls.name, False, problems=[f"availability() raised {type(exc).__name__}: {exc}"])
    if not isinstance(av, Availability):
        return ConformanceReport(cls.name, False, problems=[f"availability() must return Availability, got {av!r}"])
    if not av.ok:
        rep = ConformanceReport(cls.name, False, av.reason)
        if not av.reason.strip():
            rep.problems.append("an unavailable backend must say why (availability().reason is empty)")
        return rep
    arts = artifacts or tiny_artifacts(folder)
    # a copy: the kind built here must not leak into the caller's (perhaps shared) artifacts
    arts = replace(arts, hashes=dict(arts.hashes), info=dict(arts.info), paths=dict(arts.paths))
    try:
        ensure_artifact(arts, cls.artifact, registry, home=Path(folder), calibration=RandomCalibration(),
                        log=lambda msg: None)
    except BackendUnavailable as exc:
        return ConformanceReport(cls.name, False, f"artifact {cls.artifact!r}: {exc}")
    runner = cls(options or RunnerOptions(threads=1))
    try:
        runner.prepare(arts)
    except BackendUnavailable as exc:
        return ConformanceReport(cls.name, False, f"prepare: {exc}")
    problems: list[str] = []
    ref = arts.torch_model("cpu")
    rng = np.random.default_rng(0)
    outs, refs = [], []
    for b, t in SHAPES:
        x = rng.standard_normal((b, t, FEATURE_DIM)).astype(np.float32)
        m = rng.random((b, t)) > 0.1
        try:
            y = runner.run(x, m)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"run at batch={b}, frames={t} raised {type(exc).__name__}: {exc}")
            continue
        if not isinstance(y, np.ndarray):
            problems.append(f"run must return a numpy array, got {type(y).__name__}")
            continue
        if y.shape != (b, arts.num_classes):
            problems.append(f"run at batch={b}, frames={t} returned shape {y.shape}, expected {(b, arts.num_classes)}")
            continue
        if y.dtype != np.float32:
            problems.append(f"run must return float32 logits, got {y.dtype}")
        with torch.inference_mode():
            refs.append(ref(torch.from_numpy(x), torch.from_numpy(m)).numpy())
        outs.append(np.asarray(y, np.float32))
    parity = {}
    if outs:
        res = compare(np.concatenate(outs), np.concatenate(refs), cls.precision, cls.tolerance)
        parity = res.to_dict()
        if not res.ok:
            problems.append(f"parity with the PyTorch reference failed: {res.message}")
    for bad, what in (((np.zeros((2, 64, 100), np.float32), None), f"features with 100 instead of {FEATURE_DIM} columns"),
                      ((np.zeros((64, FEATURE_DIM), np.float32), None), "a 2-D features array"),
                      ((np.zeros((2, 64, FEATURE_DIM), np.float64), None), "float64 features"),
                      ((np.zeros((2, 64, FEATURE_DIM), np.float32), np.ones((2, 10), bool)), "a mask of the wrong shape")):
        try:
            runner.run(*bad)
            problems.append(f"run accepted {what}; it must raise InputError")
        except InputError:
            pass
        except Exception as exc:  # noqa: BLE001
            problems.append(f"run on {what} raised {type(exc).__name__} instead of InputError: {exc}")
    desc = runner.describe()
    if not isinstance(desc, dict) or desc.get("backend") != cls.name:
        problems.append(f"describe() must return a dict with backend={cls.name!r}, got {desc!r}")
    runner.close()
    return ConformanceReport(cls.name, True, av.reason, problems, parity)
