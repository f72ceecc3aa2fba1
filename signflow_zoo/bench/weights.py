"""Where a preset's weights come from: the zoo cache, MLflow's Model Registry, or training here (then
registered, so that other hosts pull them instead of training their own).

One path for ``bench`` (per preset, :meth:`Weights.obtain`) and for ``signflow-zoo train``
(:func:`train_preset`, also ``signflow_zoo.train_preset``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

from signflow_zoo.backends import mlflow_models
from signflow_zoo.common.cachefiles import exclusive, temp_path, zoo_home
from signflow_zoo.common.errors import CheckpointError, SignFlowError
from signflow_zoo.model.presets import TrainedPreset, default_checkpoint, training_config
from signflow_zoo.model.presets import train_preset as fit_preset
from signflow_zoo.model.zoo import ZooEntry
from signflow_zoo.results.tracking import Tracker, redact


# the zoo home's folders of cached and recorded files (a home may be a folder that holds other files too)
ZOO_HOME_FOLDERS = ("checkpoints", "artifacts", "data", "machine", "results")


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

        with exclusive(path, use="training", what=f"checkpoint of {entry.name}", log=self.log):
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


def command_inputs(data: str, zoo_file: str | os.PathLike | None, home: Path | None = None) -> list[tuple[str, Path]]:
    """What ``train`` and ``bench`` read, that an output of theirs must never replace: the zoo file, the data
    set's folder (its existing files) and the zoo home's caches and result files (the existing files of its
    folders in :data:`ZOO_HOME_FOLDERS`), as ``check_output_file`` takes them."""
    from signflow_zoo.model.zoo import ZOO_ENV_VAR

    inputs: list[tuple[str, Path]] = []
    zf = zoo_file or os.environ.get(ZOO_ENV_VAR)
    if zf:
        inputs.append(("the zoo file this command reads", Path(zf)))
    scheme, sep, rest = (data or "").strip().partition(":")
    folder = rest.partition("?")[0].strip()
    if sep and scheme in ("signflow", "lsfb", "pose") and folder:
        inputs.append((f"the data set {scheme}:{folder}", Path(folder)))
    home = home or zoo_home()
    inputs += [(f"the zoo home's {sub} folder", home / sub) for sub in ZOO_HOME_FOLDERS]
    return inputs


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


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
    out = None
    if output is not None:  # before the data is read and the model trained; a symlink is written through
        out = check_output_file(output, "--output", command_inputs(data, zoo_file))
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
        if out is not None and not _same_file(cached, out):
            tmp = temp_path(out)  # a copy, then a rename: the output is the old file or the new one, never half
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(cached, tmp)
                os.replace(tmp, out)
            finally:
                tmp.unlink(missing_ok=True)
        return {"preset": entry.name, "checkpoint": str(out or cached), "from_registry": True}
    trained = weights.train(entry, splits, config, out, register=track and out is None)
    return trained.summary()
