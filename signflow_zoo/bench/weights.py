"""Where a preset's weights come from: the zoo cache, MLflow's Model Registry, or training here (then
registered, so that other hosts pull them instead of training their own); or a model file the user gives
(``bench --model``, :class:`ModelFile`).

One path for ``bench`` (per preset, :meth:`Weights.obtain`) and for ``signflow-zoo train``
(:func:`train_preset`, also ``signflow_zoo.train_preset``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from signflow_zoo.backends import mlflow_models
from signflow_zoo.backends.runner import BUILTIN_ARTIFACT_KINDS, Artifacts, RunnerOptions
from signflow_zoo.common.cachefiles import atomic_write_text, exclusive, temp_path, zoo_home
from signflow_zoo.common.documents import loads_json
from signflow_zoo.common.errors import CheckpointError, ModelFileError, SignFlowError
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


def command_inputs(data: str, zoo_file: str | os.PathLike | None, home: Path | None = None,
                   files: Sequence[tuple[str, str | os.PathLike | None]] = ()) -> list[tuple[str, Path]]:
    """What ``train`` and ``bench`` read, that an output of theirs must never replace: the zoo file, the data
    set's folder (its existing files), the zoo home's caches and result files (the existing files of its
    folders in :data:`ZOO_HOME_FOLDERS`) and ``files`` (``(description, path)``, e.g. ``bench --model``'s),
    as ``check_output_file`` takes them."""
    from signflow_zoo.model.zoo import ZOO_ENV_VAR

    inputs: list[tuple[str, Path]] = [(what, Path(f)) for what, f in files if f]
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


# -- a model given by its file (bench --model) --------------------------------------------------------------
MODEL_PRESET_PREFIX = "model:"  # the records' ``preset`` of a model file: model:<file stem>
ONNX_REFERENCE_BACKEND = "onnx-cpu"  # the parity reference of a model given as ONNX only (no speedups: no torch-eager)
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def model_preset_name(path: str | os.PathLike) -> str:
    """``model:<file stem>``, the stem's characters other than letters, digits, ``.``, ``_``, ``-`` as ``_``."""
    stem = _UNSAFE_NAME.sub("_", Path(path).stem).strip("_.") or "model"
    return MODEL_PRESET_PREFIX + stem[:64]


def _preview(names: Sequence[str], n: int = 6) -> str:
    shown = ", ".join(repr(x) for x in list(names)[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


class ModelFile:
    """A model benched from its file instead of a zoo preset (``bench --model FILE [--labels FILE]``).

    A signflow-zoo checkpoint (``.pt``/``.pth``) is exported like a preset's cached checkpoint
    (:func:`~signflow_zoo.backends.artifacts.build_artifacts`) and PyTorch fp32 is its parity reference. An ONNX
    file is benched as it is (:func:`~signflow_zoo.backends.artifacts.artifacts_from_model_file`, plus the
    optimized graph derived from it as for a preset); a backend that needs a PyTorch checkpoint is then
    ``unavailable`` (an ONNX file cannot be turned back into one) and the reference is ONNX Runtime's CPU provider
    on the file itself (:data:`ONNX_REFERENCE_BACKEND`), which the records say (``params.reference``).

    Everything is read here, before any data is loaded: the file's metadata (``model_kwargs`` must describe a
    SignTransformer), and its labels, from the file or from ``labels`` (a labels file, which wins).
    """

    def __init__(self, path: str | os.PathLike, labels: str | os.PathLike | None = None,
                 log: Callable[[str], None] | None = None):
        from signflow_zoo.model.export import file_sha256, read_metadata
        from signflow_zoo.model.labels import read_labels
        from signflow_zoo.model.network import model_kwargs_problem

        self.path = Path(path)
        self.log = log or (lambda msg: None)
        if not self.path.is_file():
            raise ModelFileError(f"--model {self.path}: model file not found")
        suffix = self.path.suffix.lower()
        if suffix in (".pt", ".pth"):
            from signflow_zoo.model.checkpoint import read_checkpoint

            self.kind = "torch"
            self.meta: dict[str, Any] = read_checkpoint(self.path)[1]  # its model_kwargs checked there
        elif suffix == ".onnx":
            self.kind = "onnx"
            self.meta = read_metadata(self.path)
            problem = model_kwargs_problem(self.meta.get("model_kwargs"))
            if problem:
                raise ModelFileError(f"--model {self.path}: {problem}; bench --model reads the model's sizes from the "
                                     "metadata signflow-zoo writes into its ONNX files (signflow-zoo export)")
        else:
            raise ModelFileError(f"--model {self.path}: unknown model file type {suffix!r}; expected a signflow-zoo "
                                 "checkpoint (.pt) or an ONNX file (.onnx)")
        self.sha256 = file_sha256(self.path)
        self.kwargs: dict[str, Any] = dict(self.meta["model_kwargs"])
        self.num_classes = int(self.kwargs["num_classes"])
        carried = self.meta.get("labels")
        self.labels_file = Path(labels) if labels is not None else None
        if self.labels_file is not None:
            self.labels = read_labels(self.labels_file)
        elif isinstance(carried, list) and carried:
            self.labels = [str(x) for x in carried]
        else:
            raise ModelFileError(f"--model {self.path}: the file carries no labels; give them with --labels FILE "
                                 "(one per line, in output order)")
        if len(self.labels) != self.num_classes:
            source = self.labels_file or self.path
            raise ModelFileError(f"--model {self.path}: {len(self.labels)} labels ({source}) for a model with "
                                 f"{self.num_classes} outputs; give one label per output, in output order")
        shown = [str(x) for x in carried] if isinstance(carried, list) else []
        if self.labels_file is not None and shown and shown != self.labels and shown != [str(i) for i in range(len(shown))]:
            self.log(f"note: the labels of {self.labels_file} replace the {len(shown)} the model file carries")
        self.name = model_preset_name(self.path)
        self.entry = self._entry()

    def _entry(self):
        from signflow_zoo.model.zoo import ZooEntry

        k = self.kwargs
        return ZooEntry(name=self.name, d_model=int(k["d_model"]), heads=int(k["nhead"]), layers=int(k["num_layers"]),
                        dim_ff=int(k["dim_feedforward"]), dropout=float(k.get("dropout", 0.0)),
                        feature_dropout=float(k.get("feature_dropout", 0.0)),
                        pooling_dropout=float(k.get("pooling_dropout", 0.0)), use_case=f"model file {self.path.name}",
                        source=str(self.path))

    @property
    def num_params(self) -> int:
        """The model's parameter count, from its sizes (the same count PyTorch gives for its weights)."""
        from signflow_zoo.model.zoo import parameter_count

        k = self.kwargs
        return parameter_count(int(k["d_model"]), int(k["nhead"]), int(k["num_layers"]), int(k["dim_feedforward"]),
                               self.num_classes, int(k["input_dim"]), int(k["max_rel_distance"]))

    @property
    def reference(self) -> str:
        """The parity reference: PyTorch fp32 on the checkpoint, or ONNX Runtime's CPU provider on an ONNX file."""
        return "torch-eager" if self.kind == "torch" else ONNX_REFERENCE_BACKEND

    def config(self) -> dict[str, Any]:
        """What the result document's ``config`` says of the model (no zoo presets were selected)."""
        return {"presets": None, "model_sha256": self.sha256, "model_reference": self.reference}

    def params(self) -> dict[str, Any]:
        """What every record of the model carries in ``params``."""
        ref = ("torch-eager: PyTorch fp32 on the checkpoint" if self.kind == "torch" else
               f"{ONNX_REFERENCE_BACKEND}: ONNX Runtime's CPU provider on the model file (an ONNX-only model has no "
               "PyTorch reference)")
        return {"model_file": str(self.path), "model_sha256": self.sha256, "model_kind": self.kind,
                "model_preset": str(self.meta.get("preset") or ""), "reference": ref,
                "labels_file": str(self.labels_file) if self.labels_file else None}

    def match_data(self, splits):
        """``splits`` with its labels numbered in the model's output order; :class:`LabelsError` naming both lists
        when the model's labels and the data set's classes are not the same names."""
        from signflow_zoo.model.labels import LabelsError

        data = list(splits.class_names)
        if sorted(data) != sorted(self.labels):
            in_data, in_model = set(data), set(self.labels)
            only_model = [x for x in self.labels if x not in in_data]
            only_data = [x for x in data if x not in in_model]
            raise LabelsError(
                f"--model {self.path.name}: its labels are not the classes of --data {splits.spec}: the model has "
                f"{len(self.labels)} ({_preview(self.labels)}), the data set {len(data)} ({_preview(data)}); only in the "
                f"model: {_preview(only_model) or 'none'}; only in the data: {_preview(only_data) or 'none'}"
                + ("; give the model's labels with --labels FILE" if self.labels_file is None else ""))
        if data != self.labels:
            self.log(f"note: the data set lists the model's {len(data)} classes in another order; its labels are "
                     "renumbered in the model's output order")
        return splits.in_label_order(self.labels)

    def artifacts(self, exporter: str, home: Path, log: Callable[[str], None]) -> tuple[Artifacts, dict[str, Any]]:
        """The model's artifacts (built or found in the cache) and its metadata."""
        from signflow_zoo.backends.artifacts import artifacts_from_model_file, build_artifacts

        if self.kind == "torch":
            arts = build_artifacts(self.path, exporter=exporter, home=home, log=log)
        else:
            if isinstance(self.meta.get("labels"), list):
                arts = artifacts_from_model_file(self.path)
            else:  # labels from --labels only
                optimized = bool(self.meta.get("optimized"))
                arts = Artifacts(preset=str(self.meta.get("preset", "")), num_classes=self.num_classes,
                                 labels=list(self.labels), model_kwargs=self.kwargs,
                                 hashes={"onnx-optimized" if optimized else "onnx": self.sha256})
                arts.onnx = self.path
                arts.onnx_optimized = self.path if optimized else None
            arts.hashes.setdefault("onnx", self.sha256)  # an optimized file is both: the same bytes
            arts.workdir = home / "artifacts" / f"{self.sha256[:16]}-model-file"  # never beside the user's file
            arts.workdir.mkdir(parents=True, exist_ok=True)
            if arts.onnx_optimized is None:
                self._optimize(arts, log)
        arts.labels = list(self.labels)
        return arts, self.meta

    def _optimize(self, arts: Artifacts, log: Callable[[str], None]) -> None:
        """The optimized graph derived from the ONNX file, as :func:`build_artifacts` derives a preset's (cached)."""
        from signflow_zoo.model.export import file_sha256, optimize_onnx_model

        assert arts.workdir is not None
        opt_path, info_path = arts.workdir / "model.optimized.onnx", arts.workdir / "info.json"
        with exclusive(arts.workdir, use="artifact", what="ONNX optimization", log=log):
            info: Any = {}
            if info_path.is_file():
                try:
                    info = loads_json(info_path.read_text(), info_path.name)
                except (OSError, ValueError):
                    info = {}
            rec = info.get("optimize") if isinstance(info, dict) else None
            if not (isinstance(rec, dict) and opt_path.is_file() and file_sha256(opt_path) == rec.get("sha256")):
                log(f"optimizing the ONNX graph of {self.path.name} (transformer fusions + ORT offline extended "
                    "optimization) ...")
                rep = optimize_onnx_model(self.path, opt_path, num_heads=int(self.kwargs["nhead"]),
                                          hidden_size=int(self.kwargs["d_model"]))
                info = {"optimize": rep.to_dict(), "model_sha256": self.sha256}
                atomic_write_text(info_path, json.dumps(info, indent=1))
                rec = info["optimize"]
        arts.onnx_optimized = opt_path
        arts.hashes["onnx-optimized"] = str(rec["sha256"])
        arts.info["optimize"] = rec

    def missing_artifact(self, arts: Artifacts, kind: str, registry) -> str | None:
        """Why a backend consuming ``kind`` cannot run on this model (the artifact its kind is built from is one
        the file does not give), or None. Kinds that are not known are left to the artifact build to report."""
        seen: set[str] = set()
        root = kind
        while root not in BUILTIN_ARTIFACT_KINDS and root not in seen:
            seen.add(root)
            try:
                root = registry.artifact_kind(root).source
            except Exception:  # noqa: BLE001 - an unknown or broken kind: ensure_artifact names it
                return None
        given = {"torch": arts.checkpoint, "onnx": arts.onnx, "onnx-optimized": arts.onnx_optimized}
        if root not in given or given[root] is not None:
            return None
        via = "" if root == kind else f" (artifact {kind!r} is built from {root!r})"
        if root == "torch":
            return (f"needs a PyTorch checkpoint{via}; the model file {self.path.name} is ONNX, which cannot be "
                    "turned back into one: bench the .pt checkpoint it was exported from for this backend")
        return f"needs the {root!r} artifact{via}, which the model file {self.path.name} does not give"

    def reference_runner(self, arts: Artifacts, threads: int):
        """The parity reference of an ONNX-only model: ONNX Runtime's CPU provider on the plain graph, prepared."""
        from signflow_zoo.backends.builtin.onnx_cpu import OnnxCpuRunner

        runner = OnnxCpuRunner(RunnerOptions(threads=threads))
        runner.prepare(arts)
        return runner
