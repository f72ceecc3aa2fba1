"""Model files for serving: read their metadata, check it, and choose the backend that runs them.

A model file (``.onnx`` or ``.pt``) carries what serving needs: labels, ``seq_len``, the feature version,
and optionally the calibration the training side found (``calibration_temperature``: a float > 0;
``class_thresholds``: one float in 0..1 per label, in label order, or [] for none). None of it is trusted:
every value is checked here (:func:`serving_info`), and a file whose metadata is nonsense -- or whose ONNX
graph does not take ``features [batch, frames, 469]`` + ``mask`` and return ``[batch, classes]`` -- is
refused with one line naming the file and the problem (:class:`~signflow_zoo.common.errors.ModelFileError`).

**Files without metadata.** A model exported the original SignFlow way (``torch.onnx.export`` of its model:
one input ``landmarks [batch, frames, 469]``, output ``logits``, no metadata) or a checkpoint without labels is
served with the labels (and optionally the calibration) given by the user: ``plan_backend(path,
labels=..., calibration=...)``, ``SignFlowInferencePipeline(path, labels=..., calibration=...)``,
``signflow-zoo predict/stream --labels FILE``. Given labels replace the file's own (a note says so when they
differ) and must be as many as the model's outputs; a graph without a ``mask`` input is fed the features
alone, masked frames zeroed (the original model reads all-zero frames as padding).

Sizes read from metadata are bounded: ``seq_len`` 2..:data:`MAX_SEQ_LEN` (4096 frames, over two minutes
at 30 fps: the model attends over every frame, so more is a broken file, not a long sign) and 1..
:data:`MAX_CLASSES` (100,000) classes.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from signflow_zoo.common.errors import BackendError, ModelFileError, SignFlowError
from signflow_zoo.data.features import FEATURE_DIM, FEATURE_VERSION, SEQ_LEN
from signflow_zoo.model.labels import MAX_LABELS, LabelsError, read_labels
from signflow_zoo.backends.ort import graph_input_names
from signflow_zoo.backends.runner import Artifacts, BackendUnavailable

MAX_SEQ_LEN = 4096
MAX_CLASSES = MAX_LABELS  # 100,000
DEFAULT_LABELS_KEY = "default_labels"  # metadata flag: the labels are "0".."N-1" written by export_to_onnx
_SUFFIXES = (".onnx", ".pt", ".pth")


class CalibrationError(SignFlowError, ValueError):
    """A calibration given for a model file (``calibration=``) is malformed or does not fit its labels."""


@dataclass(frozen=True)
class ServingInfo:
    """The checked serving metadata of one model file."""

    labels: list[str]
    seq_len: int = SEQ_LEN
    calibration_temperature: float | None = None
    class_thresholds: list[float] | None = None
    default_labels: bool = False
    preset: str = ""


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _shown(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def serving_info(source: str | Path, meta: Mapping[str, Any]) -> ServingInfo:
    """Check the serving metadata of ``source`` (a file, or a name for messages); one-line errors."""

    def bad(what: str) -> ModelFileError:
        return ModelFileError(f"{source}: {what}")

    version = meta.get("feature_version", FEATURE_VERSION)
    if version != FEATURE_VERSION:
        raise bad(f"the model was trained on features {version!r}, but this signflow-zoo computes "
                  f"{FEATURE_VERSION!r}; its predictions would be meaningless. Retrain it with this version "
                  "(`signflow-zoo train`), or serve it with the signflow-zoo version it was made with")
    layout = meta.get("input_layout")
    if layout is not None:
        from signflow_zoo.model.export import INPUT_LAYOUT  # imports torch: only for files that state a layout

        if layout != INPUT_LAYOUT:
            raise bad(f"the model expects inputs {layout!r}; this pipeline feeds {INPUT_LAYOUT!r}")

    labels = meta.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise bad("model file has no label list in its metadata (a JSON list of non-empty strings); give the labels "
                  "in output order: `--labels FILE` (predict, stream; a JSON list or one label per line) or "
                  "`SignFlowInferencePipeline(path, labels=[...])`, or export it with "
                  "`export_to_onnx(model, path, labels=[...])` or `signflow-zoo export`")
    if len(labels) > MAX_CLASSES:
        raise bad(f"metadata lists {len(labels)} labels; at most {MAX_CLASSES} classes are supported")
    if len(set(labels)) != len(labels):
        seen: set[str] = set()
        twice = next(x for x in labels if x in seen or seen.add(x))  # type: ignore[func-returns-value]
        raise bad(f"metadata labels repeat {twice!r}; each class needs its own label")

    n = meta.get("num_classes")
    if n is not None:
        if not _is_int(n) or not 1 <= n <= MAX_CLASSES:
            raise bad(f"metadata num_classes must be an integer in 1..{MAX_CLASSES}, got {_shown(n)}")
        if n != len(labels):
            raise bad(f"metadata says {n} classes but lists {len(labels)} labels")

    seq_len = meta.get("seq_len", SEQ_LEN)
    if not _is_int(seq_len) or not 2 <= seq_len <= MAX_SEQ_LEN:
        raise bad(f"metadata seq_len must be an integer in 2..{MAX_SEQ_LEN} (frames per model input), "
                  f"got {_shown(seq_len)}")

    temperature = meta.get("calibration_temperature")
    if temperature is not None and not (_is_number(temperature) and float(temperature) > 0):
        raise bad(f"metadata calibration_temperature must be a finite number > 0, got {_shown(temperature)}")

    thresholds = meta.get("class_thresholds")
    if thresholds == []:  # what training writes when it learned none
        thresholds = None
    if thresholds is not None:
        if not isinstance(thresholds, list) or len(thresholds) != len(labels):
            got = f"a list of {len(thresholds)}" if isinstance(thresholds, list) else _shown(thresholds)
            raise bad(f"metadata class_thresholds must be a list of {len(labels)} numbers (one per label, in label "
                      f"order), got {got}")
        for label, t in zip(labels, thresholds):
            if not (_is_number(t) and 0 <= float(t) <= 1):
                raise bad(f"metadata class_thresholds[{labels.index(label)}] (class {label!r}) must be a number in "
                          f"0..1, got {_shown(t)}")

    default = meta.get(DEFAULT_LABELS_KEY, False)
    return ServingInfo(
        labels=list(labels), seq_len=int(seq_len),
        calibration_temperature=None if temperature is None else float(temperature),
        class_thresholds=None if thresholds is None else [float(t) for t in thresholds],
        default_labels=default is True or str(default).lower() == "true", preset=str(meta.get("preset") or ""),
    )


def _labels_source(labels: Any) -> str:
    return f"--labels {labels}" if isinstance(labels, (str, Path)) else "labels="


def with_given(source: str | Path, meta: Mapping[str, Any], labels: Any = None,
               calibration: Mapping[str, Any] | None = None, notes: list[str] | None = None) -> dict[str, Any]:
    """``meta`` with the labels and calibration the user gave in place of the file's own (unchanged when None).

    ``labels``: a list, or the path of a labels file (:func:`~signflow_zoo.model.labels.read_labels`); they
    must be as many as the file's own labels or ``num_classes`` when it has them (:class:`LabelsError`), and
    replace them (a note in ``notes`` when they differ). ``calibration``: ``{"temperature": T, "thresholds":
    [...] or {label: t}}`` (``class_thresholds`` is the same as ``thresholds``), either key optional; thresholds
    need labels, from the file or given (:class:`CalibrationError`).
    """
    meta = dict(meta)
    if labels is not None:
        given = read_labels(labels)
        what = _labels_source(labels)
        own = meta.get("labels")
        default = meta.get(DEFAULT_LABELS_KEY) in (True, "true", "True") or (
            isinstance(own, list) and own == [str(i) for i in range(len(own))])  # "0".."N-1": no names to replace
        n = meta.get("num_classes")
        if isinstance(own, list) and own and len(own) != len(given):
            raise LabelsError(f"{what}: {len(given)} labels, but {source} lists {len(own)} (one per model output); "
                              "give one label per output, in output order")
        if _is_int(n) and n != len(given):
            raise LabelsError(f"{what}: {len(given)} labels for {source}, whose model has {n} outputs; give one label "
                              "per output, in output order")
        if isinstance(own, list) and own and not default and own != given and notes is not None:
            i = next(i for i, (a, b) in enumerate(zip(own, given)) if a != b)
            notes.append(f"{source}: the labels given ({what}) replace the file's own (first difference: output {i} "
                         f"is {given[i]!r}, the file says {own[i]!r})")
        meta["labels"], meta[DEFAULT_LABELS_KEY] = given, False
        meta.pop("num_classes", None)
    if calibration is not None:
        meta.update(_given_calibration(calibration, meta.get("labels")))
    return meta


def _given_calibration(cal: Any, labels: Any) -> dict[str, Any]:
    """The metadata keys (``calibration_temperature``, ``class_thresholds``) of a calibration given by the user."""
    if not isinstance(cal, Mapping):
        raise CalibrationError(f"calibration: expected a dict {{'temperature': T, 'thresholds': [...] or "
                               f"{{label: t}}}}, got {type(cal).__name__}")
    unknown = sorted(str(k) for k in set(cal) - {"temperature", "thresholds", "class_thresholds"})
    if unknown:
        raise CalibrationError(f"calibration: unknown key(s) {', '.join(unknown)}; known: temperature, thresholds")
    if "thresholds" in cal and "class_thresholds" in cal:
        raise CalibrationError("calibration: give thresholds or class_thresholds (the same thing), not both")
    out: dict[str, Any] = {}
    t = cal.get("temperature")
    if t is not None:
        if not (_is_number(t) and float(t) > 0):
            raise CalibrationError(f"calibration: temperature must be a finite number > 0, got {_shown(t)}")
        out["calibration_temperature"] = float(t)
    th = cal.get("thresholds", cal.get("class_thresholds"))
    if th is None:
        return out
    if not isinstance(labels, list) or not labels:
        raise CalibrationError("calibration: thresholds need the model's labels; give labels= (--labels) too")
    if isinstance(th, Mapping):
        missing = sorted(str(k) for k in th if k not in labels)
        if missing:
            raise CalibrationError(f"calibration: thresholds for labels the model does not have: "
                                   f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        values = [th.get(label, 0.0) for label in labels]  # a label without one: 0, never above the adaptive one
    elif isinstance(th, (list, tuple)):
        if len(th) != len(labels):
            raise CalibrationError(f"calibration: thresholds is a list of {len(th)}, expected {len(labels)} (one per "
                                   "label, in label order), or give a dict {label: threshold}")
        values = list(th)
    else:
        raise CalibrationError(f"calibration: thresholds must be a list (label order) or a dict {{label: threshold}}, "
                               f"got {type(th).__name__}")
    for label, v in zip(labels, values):
        if not (_is_number(v) and 0 <= float(v) <= 1):
            raise CalibrationError(f"calibration: the threshold of {label!r} must be a number in 0..1, got {_shown(v)}")
    out["class_thresholds"] = [float(v) for v in values]
    return out


# Reading files ------------------------------------------------------------------------------------
def _onnx_proto(path: Path):
    """The ONNX graph (weights left out), or None when the ``onnx`` package is not installed."""
    try:
        import onnx
    except ImportError:
        return None
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds for corrupt files
        why = str(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path}: not a loadable ONNX model ({why}); re-export it with `signflow-zoo export`"
                             ) from None


def _checked_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    if path.suffix.lower() not in _SUFFIXES:
        raise ModelFileError(f"{path}: unknown model file type {path.suffix.lower()!r}; expected .onnx "
                             "(ONNX Runtime) or .pt (PyTorch weights-only checkpoint)")
    return path


def read_model_metadata(path: str | Path) -> dict[str, Any]:
    """The serving metadata a model file carries (preset, labels, feature_version, seq_len, ...), unchecked.

    ``.onnx``: its metadata_props, read with the ``onnx`` package (no ONNX Runtime needed), else with
    ONNX Runtime; ``.pt``: the checkpoint's metadata, in the same shape.
    """
    return _read(_checked_file(path))[0]


def _read(path: Path) -> tuple[dict[str, Any], Any]:
    """(metadata, ONNX graph or None): an ONNX file is parsed once for both."""
    if path.suffix.lower() == ".onnx":
        from signflow_zoo.model.export import read_metadata

        proto = _onnx_proto(path)
        if proto is None:
            return read_metadata(path), None
        return read_metadata(path, {p.key: p.value for p in proto.metadata_props}), proto
    from signflow_zoo.common.errors import CheckpointError
    from signflow_zoo.model.export import serving_metadata
    from signflow_zoo.model.checkpoint import read_checkpoint

    try:
        _, meta = read_checkpoint(path)
    except CheckpointError as exc:
        from signflow_zoo.model.original import looks_like_original

        if "not a signflow-zoo checkpoint" in str(exc) and looks_like_original(path):
            raise CheckpointError(f"{path}: an original SignFlow checkpoint (model_state_dict); convert it first: "
                                  f"`signflow-zoo import-original {path} --labels FILE -o model.pt`") from None
        raise
    return {**meta, **serving_metadata(meta)}, None


def _dims(value_info) -> list[int | None] | None:
    """Static dims of a graph input/output (None for a symbolic one), or None when the rank is unknown."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def check_onnx_io(path: str | Path, num_classes: int, proto=None, labels_given: str | None = None) -> None:
    """Refuse a graph that does not take ``features [batch, frames, 469]`` and ``mask [batch, frames]`` (or the
    features alone, under any name: the original SignFlow's export) or does not return ``[batch, num_classes]``
    logits, as far as its declared shapes tell. ``labels_given``: how the user gave the labels, when they did
    (a class count that differs is then a :class:`LabelsError` naming them)."""
    path = Path(path)
    proto = proto if proto is not None else _onnx_proto(path)
    if proto is None:
        return
    weights = {t.name for t in proto.graph.initializer}  # old exports list their weights as inputs too
    inputs = {i.name: _dims(i) for i in proto.graph.input if i.name not in weights}
    want = (f"features float32 [batch, frames, {FEATURE_DIM}] and mask bool [batch, frames], or the features alone "
            "(as the original SignFlow exports)")
    names = graph_input_names(list(inputs))
    if names is None:
        raise ModelFileError(f"{path}: the graph takes inputs {sorted(inputs)}, expected {want}; "
                             "export it with signflow-zoo")
    feats = inputs[names[0]]
    mask = inputs[names[1]] if names[1] is not None else None
    if (feats is not None and (len(feats) != 3 or feats[2] not in (None, FEATURE_DIM))) or (
            mask is not None and len(mask) != 2):
        if names[0] != "features":  # a one-input graph that does not take [batch, frames, 469]
            dims = ["batch" if i == 0 and d is None else d for i, d in enumerate(feats or [])]
            raise ModelFileError(f"{path}: the graph takes inputs {sorted(inputs)}, expected {want}; its input "
                                 f"{names[0]!r} is {dims}")
        shown = f"features {feats}" + (f" and mask {mask}" if names[1] is not None else "")
        raise ModelFileError(f"{path}: the graph takes {shown}, expected {want}")
    if not proto.graph.output:
        raise ModelFileError(f"{path}: the graph has no output")
    out = _dims(proto.graph.output[0])
    if out is not None and (len(out) != 2 or out[1] not in (None, num_classes)):
        shown_out = ["batch" if d is None else d for d in out]
        if labels_given is not None and len(out) == 2:
            raise LabelsError(f"{labels_given}: {num_classes} labels, but {path} has {out[1]} outputs (logits "
                              f"{shown_out}); give one label per output, in output order")
        raise ModelFileError(f"{path}: the graph returns logits of shape {shown_out}, expected [batch, {num_classes}] "
                             f"(one per label in its metadata)")


# Choosing the backend -----------------------------------------------------------------------------
def onnxruntime_missing() -> str | None:
    """Why ONNX Runtime cannot be imported, or None when it can."""
    try:
        import onnxruntime  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken install counts as missing, with its reason
        return f"{type(exc).__name__}: {exc}"
    return None


def _sibling_checkpoint(onnx_path: Path) -> Path | None:
    for suffix in (".pt", ".pth"):
        p = onnx_path.with_suffix(suffix)
        if p.is_file():
            return p
    return None


def _artifact_of_file(path: Path, meta: Mapping[str, Any]) -> str:
    if path.suffix.lower() in (".pt", ".pth"):
        return "torch"
    return "onnx-optimized" if str(meta.get("optimized", "")).lower() in ("true", "1") else "onnx"


@dataclass
class BackendPlan:
    """Which backend serves a model file, from which file, with what checked metadata."""

    backend: str
    model_file: Path
    artifacts: Artifacts
    meta: dict[str, Any]
    info: ServingInfo
    notes: list[str] = field(default_factory=list)


def plan_backend(model_path: str | Path, backend: str | None = None, registry=None, *, labels: Any = None,
                 calibration: Mapping[str, Any] | None = None) -> BackendPlan:
    """Which backend serves ``model_path`` and from which file; raises with a fix when none can.

    ``labels`` (a list or a labels file) and ``calibration`` replace the file's own, for a file without
    metadata (see :func:`with_given`).

    No backend named: ``.onnx`` -> onnx-cpu (onnx-optimized for an optimized graph), ``.pt`` -> torch-eager.
    Without ONNX Runtime, an ``.onnx`` falls back to PyTorch when a checkpoint with the same stem lies
    next to it (said in ``notes``), else it is an error. A named backend is used as named, never swapped.
    ``registry`` (a :class:`~signflow_zoo.plugins.PluginRegistry`) defaults to the process-wide one.
    """
    from signflow_zoo.backends.artifacts import artifacts_from_model_file
    from signflow_zoo.plugins import get_registry

    registry = registry if registry is not None else get_registry()
    path = _checked_file(model_path)
    meta, proto = _read(path)
    file_kind = _artifact_of_file(path, meta)
    notes: list[str] = []

    if backend is None:
        if file_kind == "torch":
            backend = "torch-eager"
        else:
            missing = onnxruntime_missing()
            if missing is None:
                backend = "onnx-optimized" if file_kind == "onnx-optimized" else "onnx-cpu"
            else:
                ckpt = _sibling_checkpoint(path)
                if ckpt is None:
                    raise BackendError(
                        f"{path}: ONNX Runtime is not available ({missing}), and there is no PyTorch checkpoint "
                        f"{path.with_suffix('.pt').name} next to it to fall back to; install onnxruntime "
                        "(`pip install onnxruntime`) or serve the .pt checkpoint"
                    )
                ckpt_meta = read_model_metadata(ckpt)
                if meta.get("labels") and list(ckpt_meta.get("labels") or []) != list(meta["labels"]):
                    raise ModelFileError(
                        f"{ckpt}: cannot fall back to it for {path.name}: its labels differ from the ONNX file's, "
                        "so it is not the same model"
                    )
                notes.append(f"ONNX Runtime is not available ({missing}); serving {ckpt.name} with PyTorch "
                             f"(torch-eager) instead of {path.name}")
                backend, path, meta, file_kind, proto = "torch-eager", ckpt, ckpt_meta, "torch", None

    had_labels = isinstance(meta.get("labels"), list) and bool(meta.get("labels"))
    meta = with_given(path, meta, labels, calibration, notes)
    info = serving_info(path, meta)
    if file_kind != "torch":
        check_onnx_io(path, len(info.labels), proto, None if labels is None else _labels_source(labels))
    entry = registry.get(backend)  # BackendError naming the registered ones
    cls = entry.cls
    kind = cls.artifact
    wants = _root_kind(kind, registry)  # a plugin's kind is built from a model file of this kind
    if wants == "torch" and file_kind != "torch":
        sibling = _sibling_checkpoint(path)
        hint = f" ({sibling.name} lies next to it)" if sibling else ""
        raise BackendError(f"backend {backend!r} runs a PyTorch checkpoint: pass a .pt model file, not "
                           f"{path.name}{hint}")
    if wants in ("onnx", "onnx-optimized") and file_kind == "torch":
        raise BackendError(f"backend {backend!r} runs an ONNX graph: pass an .onnx model file, not {path.name} "
                           f"(export it with `signflow-zoo export {path}`)")
    if wants == "onnx-optimized" and file_kind != "onnx-optimized":
        raise BackendError(f"backend {backend!r} runs an optimized ONNX graph, and {path.name} is a plain export; "
                           f"optimize it (`signflow-zoo export --optimize`) or use backend 'onnx-cpu'")
    available = registry.availability(backend)
    if not available:
        raise BackendUnavailable(f"backend {backend!r} cannot run here: {available.reason}")

    if file_kind == "torch" or onnxruntime_missing() is not None or not had_labels:
        kwargs = meta.get("model_kwargs")  # a checkpoint's, from serving_metadata (in _read)
        arts = Artifacts(preset=info.preset, num_classes=len(info.labels), labels=list(info.labels),
                         model_kwargs=dict(kwargs) if isinstance(kwargs, dict) else {}, workdir=path.parent)
        if file_kind == "torch":
            arts.checkpoint = path
        else:  # an ONNX file without labels of its own, or a third-party backend that does not need ONNX Runtime
            arts.onnx = path
            if file_kind == "onnx-optimized":
                arts.onnx_optimized = path
    else:
        arts = artifacts_from_model_file(path)
        arts.labels, arts.num_classes = list(info.labels), len(info.labels)  # the labels given, if any
    if kind != wants:  # e.g. a quantized graph: built from this file once, cached in the zoo home
        from signflow_zoo.backends.kinds import ensure_artifact

        ensure_artifact(arts, kind, registry, log=notes.append)
    return BackendPlan(backend, path, arts, dict(meta), info, notes)


def _root_kind(kind: str, registry) -> str:
    """The built-in artifact kind a (plugin) kind is built from, following ``source`` links."""
    from signflow_zoo.backends.runner import BUILTIN_ARTIFACT_KINDS

    seen = [kind]
    while kind not in BUILTIN_ARTIFACT_KINDS:
        kind = registry.artifact_kind(kind).source  # BackendError for an unknown kind
        if kind in seen:
            raise BackendError(f"artifact kinds {' -> '.join(seen + [kind])} are built from each other in a circle")
        seen.append(kind)
    return kind


__all__ = ["ServingInfo", "BackendPlan", "CalibrationError", "serving_info", "with_given", "read_model_metadata", "check_onnx_io", "plan_backend",
           "onnxruntime_missing", "MAX_SEQ_LEN", "MAX_CLASSES", "DEFAULT_LABELS_KEY"]
