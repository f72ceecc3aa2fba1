"""The gate's worker: one process per (version, backend), running the code of one version of signflow-zoo.

Started by :mod:`gate_versions` as ``python gate_worker.py`` with ``PYTHONPATH`` naming that version's source
tree first, so ``import signflow_zoo`` is the version under test (the base commit's or the working tree's)
while this file, the timing loop and the schedule that drives it are the same for both versions: the gate
compares the versions' code, not two ways of measuring it.

Requests arrive on stdin and answers leave on the original stdout as pickled ``(command, args)`` /
``("ok", value)`` / ``("err", kind, message, trace)`` messages; anything a plugin prints goes to stderr, so
it cannot break the protocol. The commands are those the harness's schedule sends to a backend worker
(``load``, ``warmup``, ``time``, ``unload``, ``close``) plus ``prepare``, ``build`` and ``pipeline``.

Only stable names of signflow-zoo are used (the plugin registry, ``signflow_zoo.api``, the streaming
pipeline), with the module paths of older layouts as fallbacks, so a base commit from before a move of
modules still runs.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def _attr(*candidates: str):
    """The first importable ``module:name`` of ``candidates`` (newer layouts first)."""
    errors = []
    for spec in candidates:
        module, _, name = spec.partition(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            errors.append(f"{spec}: {exc}")
    raise ImportError("none of " + "; ".join(errors))


def build_artifacts(preset: str, folder: str, kinds: list[str], num_classes: int = 20):
    """This version's artifacts of ``preset`` (untrained weights: inference costs the same), with the plugin
    kinds in ``kinds`` built by this version's ``ensure_artifact``; pickled to ``folder/artifacts.pkl``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    try:
        make = _attr("signflow_zoo.testing:bench_artifacts")
        arts = make(preset, out, num_classes=num_classes)
    except ImportError:  # a version from before bench_artifacts: the same recipe with its module paths
        import torch

        torch.manual_seed(0)
        entry = _attr("signflow_zoo.zoo:get_model_config")(preset)
        model = _attr("signflow_zoo.model:build_model")(entry, num_classes=num_classes).eval()
        labels = [f"s{i}" for i in range(num_classes)]
        ckpt = _attr("signflow_zoo.checkpoint:save_checkpoint")(out / "m.pt", model, {"preset": preset, "labels": labels})
        meta = _attr("signflow_zoo.artifacts:serving_metadata")({"preset": preset, "labels": labels,
                                                                 "model_kwargs": model.init_kwargs})
        _attr("signflow_zoo.export:export_to_onnx")(model, out / "m.onnx", metadata=meta, exporter="legacy", verify=False)
        _attr("signflow_zoo.export:optimize_onnx_model")(out / "m.onnx", out / "m.opt.onnx", entry.heads, entry.d_model)
        arts = _attr("signflow_zoo.api:Artifacts")(
            preset=preset, num_classes=num_classes, labels=labels, model_kwargs=model.init_kwargs, checkpoint=ckpt,
            onnx=out / "m.onnx", onnx_optimized=out / "m.opt.onnx", workdir=out)
    from signflow_zoo.api import ensure_artifact
    from signflow_zoo.plugins import get_registry

    calibration = _attr("signflow_zoo.testing:RandomCalibration")()
    errors = {}
    for kind in kinds:
        try:
            ensure_artifact(arts, kind, get_registry(), home=out, calibration=calibration, log=lambda msg: None)
        except Exception as exc:  # noqa: BLE001 - e.g. a kind this version does not know: its backends are not compared
            errors[kind] = f"{type(exc).__name__}: {exc}"
    (out / "artifacts.pkl").write_bytes(pickle.dumps(arts))
    return {"hashes": {kind: arts.hashes.get(kind, "") for kind in ["onnx", *kinds]}, "errors": errors}


class GateWorker:
    def __init__(self) -> None:
        # the version under test's Runner and pipeline (whichever signflow_zoo is first on PYTHONPATH)
        self.runner: Any = None
        self.batches: dict = {}
        self.pipe: Any = None
        self.payloads: list = []

    def build(self, preset: str, folder: str, kinds: list[str]):
        return build_artifacts(preset, folder, kinds)

    def prepare(self, backend: str, artifacts_file: str, threads: int):
        from signflow_zoo.api import RunnerOptions
        from signflow_zoo.plugins import get_registry

        arts = pickle.loads(Path(artifacts_file).read_bytes())
        cls = get_registry().get(backend).cls
        runner = cls(RunnerOptions(threads=threads))
        runner.prepare(arts)
        runner.prepared = True
        self.runner = runner
        init = importlib.import_module("signflow_zoo").__file__
        assert init is not None  # a regular package, with an __init__.py
        return {"class": f"{cls.__module__}.{cls.__qualname__}", "signflow_zoo": str(Path(init).parent)}

    def load(self, key, features, mask) -> None:
        self.batches[key] = (features, mask)

    def unload(self, key) -> None:
        self.batches.pop(key, None)

    def _fn(self, key):
        x, m = self.batches[key]
        run, runner = self.runner.run, self.runner
        sync = runner.synchronize if getattr(runner, "asynchronous", False) else None
        if sync is None:
            return lambda: run(x, m)
        return lambda: (run(x, m), sync())

    def warmup(self, key, max_calls: int, max_seconds: float) -> list[int]:
        fn, clock = self._fn(key), time.perf_counter_ns
        out: list[int] = []
        start = clock()
        while len(out) < max_calls:
            t0 = clock()
            fn()
            out.append(clock() - t0)
            if len(out) >= 2 and clock() - start >= max_seconds * 1e9:
                break
        return out

    def time(self, key, min_calls: int, min_seconds: float, discard: int):
        fn, clock = self._fn(key), time.perf_counter_ns
        for _ in range(discard):
            fn()
        out: list[int] = []
        spent, min_ns = 0, int(min_seconds * 1e9)
        while len(out) < min_calls or spent < min_ns:
            t0 = clock()
            fn()
            dt = clock() - t0
            out.append(dt)
            spent += dt
        return out, discard

    # -- the streaming pipeline's per-frame cost, with a model that costs nothing -----------------
    def pipeline_prepare(self, classes: int = 10) -> int:
        import numpy as np

        Runner = _attr("signflow_zoo.api:Runner")
        Pipeline = _attr("signflow_zoo:SignFlowInferencePipeline", "signflow_zoo.pipeline:SignFlowInferencePipeline")
        PipelineConfig = _attr("signflow_zoo:PipelineConfig", "signflow_zoo.pipeline:PipelineConfig")
        stream_from_clips = _attr("signflow_zoo.serve.replay:stream_from_clips", "signflow_zoo.replay:stream_from_clips",
                                  "signflow_zoo.pipeline:stream_from_clips")
        payload_from_raw = _attr("signflow_zoo.serve.payload:payload_from_raw", "signflow_zoo.payload:payload_from_raw")
        SyntheticSpec = _attr("signflow_zoo.data.synthetic:SyntheticSpec", "signflow_zoo.synthetic:SyntheticSpec")
        generate = _attr("signflow_zoo.data.synthetic:generate", "signflow_zoo.synthetic:generate")

        class NullRunner(Runner):  # type: ignore[misc,valid-type]  # the version under test's Runner
            name = "gate-null"

            def __init__(self, n):
                super().__init__()
                self.out = np.zeros((1, n), np.float32)
                self.out[0, 0] = 5.0
                self.prepared = True

            def infer(self, features, mask):
                return self.out

        clips, names = generate(SyntheticSpec(num_classes=classes, num_signers=1, clips_per_signer_per_class=1, seed=11))
        rows, _ = stream_from_clips(clips, rest_frames=20)
        self.payloads = [payload_from_raw(r) for r in rows]
        self.pipe = Pipeline.from_runner(NullRunner(len(names)), names, PipelineConfig())
        return len(self.payloads)

    def pipeline(self) -> float:
        """Mean ms of one ``process_frame`` over the whole replayed stream."""
        self.pipe.reset()
        t0 = time.perf_counter_ns()
        for p in self.payloads:
            self.pipe.process_frame(p)
        return (time.perf_counter_ns() - t0) / len(self.payloads) / 1e6

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()


def serve() -> None:
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a plugin's print() goes to stderr, never into the protocol
    worker = GateWorker()
    while True:
        try:
            cmd, args = pickle.load(proto_in)
        except (EOFError, OSError):
            break
        reply: tuple[Any, ...]
        try:
            reply = ("ok", getattr(worker, cmd)(*args))
        except BaseException as exc:  # noqa: BLE001 - every failure is the gate's to report
            reply = ("err", type(exc).__name__, str(exc).strip()[:2000], traceback.format_exc(limit=8))
        pickle.dump(reply, proto_out)
        proto_out.flush()
        if cmd == "close":
            break


if __name__ == "__main__":
    serve()
