"""Where a preset's weights come from: the zoo cache, MLflow's Model Registry, or training here (then
registered, so that other hosts pull them instead of training their own).

One path for ``bench`` (per preset, :meth:`Weights.obtain`) and for ``signflow-zoo train``
(:func:`train_preset`, also ``signflow_zoo.train_preset``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from signflow_zoo.backends import mlflow_models
from signflow_zoo.common.cachefiles import exclusive, zoo_home
from signflow_zoo.common.errors import CheckpointError, SignFlowError
from signflow_zoo.model.presets import TrainedPreset, default_checkpoint, training_config
from signflow_zoo.model.presets import train_preset as fit_preset
from signflow_zoo.model.zoo import ZooEntry
from signflow_zoo.results.tracking import Tracker, redact


class Weights:
    """Finds or makes the weights of zoo entries; the Model Registry is contacted once, when first needed."""

    def __init__(self, exporter: str = "dynamo", home: Path | None = None, log: Callable[[str], None] | None = None):
        self.exporter = exporter
        self.home = home or zoo_home()
        self.log = log or (lambda msg: None)
        self._tracker: Tracker | None = None

    def tracker(self) -> Tracker:
        """The Model Registry's tracker (``.active`` False, with ``.reason``, when the store is unreachable)."""
        if self._tracker is None:
            self._tracker = mlflow_models.registry_tracker()
        return self._tracker

    def pull(self, entry: ZooEntry, path: Path, required: bool = False) -> bool:
        """The registered weights matching ``path``'s cache key, fetched to ``path``: True when found. With
        ``required`` an unreachable or failing store is an error; without, a warning and False (train here)."""
        tracker = self.tracker()
        if not tracker.active:
            if required:
                raise CheckpointError(f"--from-registry: the Model Registry is not reachable ({tracker.reason})")
            return False
        try:
            return mlflow_models.pull(tracker, entry.name, path, self.exporter, self.home, self.log) is not None
        except SignFlowError:
            raise
        except Exception as exc:  # noqa: BLE001 - the store failed: train here (or stop, if told to use it)
            if required:
                raise CheckpointError(f"--from-registry: pulling {entry.name} failed: {redact(str(exc))}") from None
            self.log(f"warning: {entry.name}: Model Registry lookup failed ({redact(str(exc))}); training here")
            return False

    def train(self, entry: ZooEntry, splits, config, path: Path | None, *, register: bool,
              evaluate_test: bool = True) -> TrainedPreset:
        """Train ``entry`` into ``path`` (None: the zoo cache); with ``register``, share it through the registry."""
        trained = fit_preset(entry, splits, config, path, evaluate_test=evaluate_test, log=self.log)
        if register:
            mlflow_models.register_checkpoint(trained.checkpoint, self.exporter, self.home, self.log, self.tracker())
        return trained

    def obtain(self, entry: ZooEntry, splits, config, path: Path, *, retrain: bool = False, no_train: bool = False,
               from_registry: bool = False, track: bool = True) -> tuple[Path, dict[str, Any]]:
        """Cache -> Model Registry -> train (then register). One process at a time per checkpoint: the
        others wait on its lock, then reuse what it made instead of training it again."""
        from signflow_zoo.model.checkpoint import read_checkpoint

        with exclusive(path):
            if path.exists() and not retrain:
                _, meta = read_checkpoint(path)  # a corrupt cache file is an error naming it, never a silent retrain
                self.log(f"{entry.name}: cached checkpoint {path}")
                return path, meta
            if not retrain and (track or from_registry) and self.pull(entry, path, required=from_registry):
                return path, read_checkpoint(path)[1]
            if from_registry:
                raise CheckpointError(
                    f"--from-registry: no registered version of {mlflow_models.model_name(entry.name)} matches "
                    f"preset {entry.name!r} with this data and training config ({path.name}); run bench without "
                    "--from-registry on one machine to train and register it"
                )
            if no_train:
                raise CheckpointError(
                    f"no cached checkpoint for preset {entry.name!r} with this data and training config ({path}); "
                    "run without --no-train to train it, or `signflow-zoo train --preset " + entry.name + "`"
                )
            trained = self.train(entry, splits, config, path, register=track, evaluate_test=False)
            return trained.checkpoint, trained.metadata


def train_preset(preset: str, data: str = "synthetic", *, output: str | Path | None = None, epochs: int | None = None,
                 seed: int = 0, learning_rate: float | None = None, batch_size: int | None = None, track: bool = True,
                 progress: bool = True, from_registry: bool = False, zoo_file: str | None = None,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train the zoo entry ``preset`` on ``data`` and save a weights-only checkpoint; what ``signflow-zoo train`` does.

    ``output`` defaults to the zoo cache, where ``bench`` finds it; a trained cache checkpoint is registered in
    MLflow's Model Registry when ``track``. With ``from_registry`` the registered weights of this preset, data and
    training config are pulled instead (an error when the registry has none). Returns a JSON-ready summary:
    preset, checkpoint, training time, epochs, validation and held-out accuracy.
    """
    from signflow_zoo.common.output_paths import check_output_file
    from signflow_zoo.data.loading import load_data
    from signflow_zoo.model.zoo import Zoo

    entry = Zoo.load(zoo_file).get(preset)
    if output is not None:
        check_output_file(output, "--output")  # before the data is read and the model trained
    config = training_config(entry, epochs=epochs, seed=seed, learning_rate=learning_rate, batch_size=batch_size,
                             track=track, progress=progress)
    splits = load_data(data, seed=seed)
    weights = Weights(log=log)
    if from_registry:
        cached = default_checkpoint(entry, splits, config)
        if not cached.exists() and not weights.pull(entry, cached, required=True):
            raise CheckpointError(f"--from-registry: no registered version of {mlflow_models.model_name(entry.name)} "
                                  "matches this data and training config; train it without --from-registry on one "
                                  "machine")
        if output:
            shutil.copyfile(cached, output)
        return {"preset": entry.name, "checkpoint": str(output or cached), "from_registry": True}
    trained = weights.train(entry, splits, config, Path(output) if output is not None else None,
                            register=track and output is None)
    return trained.summary()
