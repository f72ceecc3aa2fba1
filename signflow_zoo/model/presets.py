"""What one can do with a zoo preset from Python, shared by ``signflow-zoo presets``/``train`` and the bench.

* :func:`describe_presets` -- every entry with its parameters counted by building the model;
* :func:`training_config` and :func:`train_preset` -- train a preset on data splits and save its
  weights-only checkpoint (the bench trains through the same function when nothing is cached);
* :func:`check_batch_memory` -- refuse batch sizes whose activations cannot fit in this machine's memory
  before hours of work go into the presets before them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from signflow_zoo.common.errors import SignFlowError
from signflow_zoo.data.features import FEATURE_DIM
from signflow_zoo.common.limits import NUM_CLASSES
from signflow_zoo.model.zoo import Zoo, ZooEntry


def describe_presets(zoo: Zoo | None = None, num_classes: int = 100) -> list[dict[str, Any]]:
    """One dict per zoo entry: sizes, parameters counted by instantiating the model, GFLOP per 64-frame sequence."""
    from signflow_zoo.model.network import build_model, count_parameters, estimate_gflops

    if num_classes not in NUM_CLASSES:
        raise SignFlowError(f"num_classes must be {NUM_CLASSES.what}, got {num_classes!r}")
    rows = []
    for e in zoo if zoo is not None else Zoo.load():
        params = count_parameters(build_model(e, num_classes=num_classes))
        rows.append({"name": e.name, "d_model": e.d_model, "heads": e.heads, "layers": e.layers, "dim_ff": e.dim_ff,
                     "params": params, "gflop_per_seq": round(estimate_gflops(e, num_classes), 3),
                     "use_case": e.use_case})
    return rows


# -- training ----------------------------------------------------------------------------------------


def training_config(entry: ZooEntry, *, epochs: int | None = None, seed: int = 0, learning_rate: float | None = None,
                    batch_size: int | None = None, track: bool = True, progress: bool = True,
                    tags: dict[str, str] | None = None):
    """The :class:`~signflow_zoo.model.training.TrainingConfig` for ``entry``, validated: its default epochs unless given,
    the trainer's defaults for what is not given, MLflow run name and tags naming the preset."""
    from signflow_zoo.model.training import TrainingConfig

    overrides: dict[str, Any] = {}
    if learning_rate is not None:
        overrides["learning_rate"] = learning_rate
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    return TrainingConfig(num_epochs=entry.epochs if epochs is None else epochs, seed=seed, progress=progress,
                          use_mlflow=track, mlflow_run_name=f"train-{entry.name}",
                          mlflow_tags={"preset": entry.name, **(tags or {})}, **overrides).validate()


@dataclass
class TrainedPreset:
    """A trained preset: where its checkpoint is, the checkpoint's metadata and the numbers of the run."""

    preset: str
    checkpoint: Path
    metadata: dict[str, Any]
    result: dict[str, Any]  # SignTrainer.fit's result (train_seconds, epochs_run, val_accuracy, run_id, ...)
    test: dict[str, Any] = field(default_factory=dict)  # held-out top1/macro_f1 when evaluated

    def summary(self) -> dict[str, Any]:
        """What ``signflow-zoo train`` prints: rounded, JSON-ready."""
        out = {"preset": self.preset, "checkpoint": str(self.checkpoint),
               "train_seconds": round(self.result["train_seconds"], 1), "epochs_run": self.result["epochs_run"],
               "val_accuracy": round(self.result["val_accuracy"], 4)}
        if self.test:
            out.update(test_accuracy=round(self.test["top1"], 4), test_macro_f1=round(self.test["macro_f1"], 4))
        for k in ("ece_before", "ece_after", "temperature"):  # the calibration found after training
            out[k] = None if self.result.get(k) is None else round(self.result[k], 4)
        out["mlflow_run_id"] = self.result.get("run_id")
        return out


def default_checkpoint(entry: ZooEntry, splits, config, home: Path | None = None) -> Path:
    """The zoo cache's checkpoint path for this preset, data and training config (what bench looks for)."""
    from signflow_zoo.model.checkpoint import checkpoint_path
    from signflow_zoo.common.cachefiles import zoo_home

    return checkpoint_path(entry, len(splits.class_names), splits.fingerprint, config.cache_key(), home or zoo_home())


def train_preset(entry: ZooEntry, splits, config, output: str | os.PathLike | None = None, *,
                 evaluate_test: bool = True, log: Callable[[str], None] | None = None) -> TrainedPreset:
    """Train ``entry`` on ``splits`` (train, validated on val) and save a weights-only checkpoint.

    ``output`` defaults to the zoo cache (:func:`default_checkpoint`), where ``bench`` finds it. With
    ``evaluate_test`` the held-out split is scored and its top-1 stored in the checkpoint's metadata.
    The output path is checked before training: a path that cannot be written fails first, not after.
    """
    from signflow_zoo.model.checkpoint import read_checkpoint
    from signflow_zoo.model.network import build_model, count_parameters
    from signflow_zoo.common.output_paths import check_output_file
    from signflow_zoo.model.training import SignTrainer

    log = log or (lambda msg: None)
    config.validate()
    path = check_output_file(output, "--output") if output is not None else default_checkpoint(entry, splits, config)
    model = build_model(entry, num_classes=len(splits.class_names))
    log(f"{entry.name}: training {count_parameters(model) / 1e6:.2f}M params for {config.num_epochs} epochs on "
        f"{len(splits.train)} clips, validating on {len(splits.val)} ({splits.spec}) ...")
    trainer = SignTrainer(model, config, class_names=list(splits.class_names),
                          metadata={"preset": entry.name, "data_spec": splits.spec,
                                    "data_fingerprint": splits.fingerprint})
    result = trainer.fit(splits.train, splits.val)
    test = trainer.evaluate(splits.test) if evaluate_test else {}
    trainer.save_model(path, extra={"test_accuracy": test["top1"]} if test else None)
    log(f"{entry.name}: trained in {result['train_seconds']:.0f} s, val top-1 {result['val_accuracy']:.3f} -> {path}")
    return TrainedPreset(entry.name, Path(path), read_checkpoint(path)[1], result, test)


# -- memory --------------------------------------------------------------------------------------------


def inference_bytes(entry: ZooEntry, batch: int, frames: int, num_classes: int = 100) -> int:
    """A rough upper estimate of one forward pass's peak memory at ``batch`` x ``frames`` (float32).

    Inputs (held by the harness, the worker and the runtime), one layer's attention scores and softmax,
    its feed-forward activations and the residual stream; weights are small next to these at large batch.
    Checked against PyTorch's peak resident growth of one forward pass (2026-11-26, this project's 2-core
    machine, 64 frames): lightweight at batch 1024 grew 723 MiB (estimate 1201 MiB), large at batch 512 grew
    1081 MiB (estimate 1349 MiB).
    """
    b, t, d, h, ff = int(batch), int(frames) + 1, entry.d_model, entry.heads, entry.dim_ff
    inputs = 3 * b * frames * (FEATURE_DIM + 1) * 4
    attention = 3 * b * h * t * t * 4
    feed_forward = 3 * b * t * ff * 4
    stream = 8 * b * t * d * 4
    return inputs + attention + feed_forward + stream + b * num_classes * 4


def available_memory() -> int | None:
    """Bytes this machine can give now (``MemAvailable``), or None where it does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_batch_memory(entries: Iterable[ZooEntry], batch_sizes: Iterable[int], frames: int, backends: int = 1,
                       available: int | None = None) -> None:
    """Raise :class:`SignFlowError` when timing a batch size would need more memory than this machine has.

    Every live backend keeps its own worker (and its runtime's memory arena) while a batch size is timed,
    so the estimate counts ``backends`` of them. Where the machine does not say what is free, nothing is checked.
    """
    free = available_memory() if available is None else available
    if not free:
        return
    for entry in entries:
        for b in batch_sizes:
            need = inference_bytes(entry, b, frames) * max(1, backends)
            if need > 0.8 * free:
                raise SignFlowError(
                    f"--batch-sizes {b}: timing preset {entry.name!r} at batch {b} x {frames} frames on {backends} "
                    f"backend(s) needs about {need / 2**30:.1f} GiB, more than this machine has free "
                    f"({free / 2**30:.1f} GiB); use smaller batch sizes or fewer backends")
