"""Streaming sign recognition: SignFlow's ``process_frame`` state machine over any backend.

One frame at a time (the browser's payload, see :mod:`signflow_zoo.payload`)::

    pipe = SignFlowInferencePipeline("model.onnx")          # or .pt; the file carries labels etc.
    for payload in frames:
        p = pipe.process_frame(payload)
        if p.ended:                                          # a sign finished on this frame
            print(p.label, p.confidence, p.alternatives)     # label is "NONE" when rejected

**What process_frame returns.** Always a :class:`Prediction`. On a frame that does not end a sign its
``label`` is None (``ended`` is False) and only ``state``/``frames``/``motion`` are filled, so a UI can
show "recording..." without a second call. On the frame that ends a sign, ``label`` is the accepted
sign or ``"NONE"``. A malformed payload raises :class:`~signflow_zoo.errors.PayloadError` and leaves
the pipeline exactly as it was, so a server can report it and go on with the next frame.

**The state machine** (the original's, every number in :class:`PipelineConfig`):

- motion energy of a frame = mean |delta| over the 126 hand values since the previous frame. Unlike the
  original, a hand contributes only when it is present in both frames: a hand that appears or vanishes
  (zero-filled) is a tracking event, not motion; the original read that jump as motion, so every
  tracking dropout at rest started a recording;
- IDLE -> RECORDING when the energy exceeds ``motion_threshold`` (0.005) with a hand visible; the
  ``preroll_frames`` (4) frames before it are kept;
- a frame is at rest when its energy is below the threshold. The sign ends after ``min_rest_frames``
  (10) rest frames in a row once ``min_sign_frames`` (15) frames were recorded, or when the window holds
  ``max_sign_frames`` (180, pre-roll included). Rest frames beyond ``trailing_rest_kept`` (4) are cut
  from the end of the window (as the original's later versions do): the sign is over, and ten frames
  of stillness would stretch the resampled window;
- the window is resampled to 64 frames and enriched (469 features, :func:`features.prepare_clip`), and
  the model runs ONCE per sign;
- softmax of logits / temperature (``temperature``, else the model file's ``calibration_temperature``,
  else 1); top-``top_k`` (3) alternatives;
- majority vote over the last ``vote_window`` (5) predictions, as the original does it: the history
  restarts when the top-1 label changes (a new sign must never be out-voted by the previous, different
  ones), so the vote only confirms: a label predicted k times in a row gets confidence
  max(p, mean p of the run);
- accepted when the confidence reaches the threshold: ``confidence_threshold`` (0.7), raised by
  ``low_visibility_penalty`` when fewer than ``min_hand_visibility`` of the window's frames show a hand
  or the frontend's mean averageConfidence is below ``min_tracking_confidence``, and by
  ``low_motion_penalty`` when the window's mean motion energy is below ``min_motion_energy``; capped at
  ``max_threshold``. Rejected signs come out as ``"NONE"`` (the candidate stays in ``candidate``);
- accepted signs are appended to the sentence buffer (:attr:`SignFlowInferencePipeline.sentence`), a
  repeat of the last word is not appended twice (as the original).

``process_sequence`` classifies one whole clip (no state machine, no vote, no sentence).
``measure_stream_latency`` replays clips through the same code with a prepared runner for the harness.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackendError, InputError, ModelFileError, SignFlowError
from .features import FEATURE_DIM, FEATURE_VERSION, RAW_DIM, SEQ_LEN, prepare_clip, raw_from_parts, validate_raw
from .payload import FrameInfo, parse_payload, payload_from_raw
from .runners import Artifacts, BackendUnavailable, Runner, RunnerOptions

IDLE, RECORDING = "idle", "recording"
NONE_LABEL = "NONE"
_HANDS = slice(0, 126)


class PipelineConfigError(SignFlowError, ValueError):
    """A PipelineConfig value is out of range."""


@dataclass
class PipelineConfig:
    """Every threshold and timing of the streaming pipeline; defaults are the original's."""

    motion_threshold: float = 0.005  # mean |delta| of hand values (image units) that counts as motion
    preroll_frames: int = 4  # frames kept from before the motion that starts a sign
    min_rest_frames: int = 10  # rest frames in a row that end a sign ...
    min_sign_frames: int = 15  # ... once this many frames were recorded (pre-roll not counted)
    max_sign_frames: int = 180  # a window this long (pre-roll included) ends the sign anyway
    trailing_rest_kept: int = 4  # rest frames kept at the end of a window that ended on rest
    seq_len: int | None = None  # frames fed to the model; None: the model file's (64)
    temperature: float | None = None  # softmax temperature; None: the model file's calibration, else 1
    top_k: int = 3  # alternatives reported
    vote_window: int = 5  # predictions the majority vote looks back over (1 = no vote)
    confidence_threshold: float = 0.7  # base acceptance threshold
    min_hand_visibility: float = 0.5  # fraction of window frames with a hand; below: low visibility
    min_tracking_confidence: float = 0.5  # mean metadata.averageConfidence; below: low visibility
    low_visibility_penalty: float = 0.1  # added to the threshold for low visibility
    min_motion_energy: float = 0.003  # mean motion energy of the window; below: low motion
    low_motion_penalty: float = 0.1  # added to the threshold for low motion
    max_threshold: float = 0.95  # the raised threshold never exceeds this (nor drops below the base)
    sentence_max_words: int = 100  # the sentence buffer keeps the last N accepted signs
    threads: int | None = None  # backend intra-op threads when the pipeline loads the model itself
    warmup: bool = True  # run the model once at load (checks its output, keeps the first sign fast)

    def validate(self) -> "PipelineConfig":
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise PipelineConfigError(f"pipeline config: {name} must be {what}, got {getattr(self, name)!r}")

        def is_int(v) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v) -> bool:
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("preroll_frames", "trailing_rest_kept"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "an integer >= 0")
        for name in ("min_rest_frames", "min_sign_frames", "top_k", "vote_window", "sentence_max_words"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "an integer >= 1")
        need(is_int(self.max_sign_frames) and self.max_sign_frames >= max(2, self.preroll_frames + 1),
             "max_sign_frames", f"an integer >= max(2, preroll_frames + 1) = {max(2, self.preroll_frames + 1)}")
        need(self.seq_len is None or (is_int(self.seq_len) and self.seq_len >= 2), "seq_len", "None or an integer >= 2")
        need(self.threads is None or (is_int(self.threads) and self.threads >= 1), "threads", "None or an integer >= 1")
        need(self.temperature is None or (is_num(self.temperature) and self.temperature > 0), "temperature",
             "None or a number > 0")
        for name in ("motion_threshold", "min_motion_energy"):
            need(is_num(getattr(self, name)) and getattr(self, name) >= 0, name, "a number >= 0")
        for name in ("confidence_threshold", "min_hand_visibility", "min_tracking_confidence",
                     "low_visibility_penalty", "low_motion_penalty", "max_threshold"):
            need(is_num(getattr(self, name)) and 0 <= getattr(self, name) <= 1, name, "a number in 0..1")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PipelineConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PipelineConfigError(f"pipeline config: unknown option(s) {', '.join(unknown)}; "
                                      f"known: {', '.join(sorted(known))}")
        return cls(**dict(d)).validate()


@dataclass
class Prediction:
    """What the pipeline says after one frame (or one clip).

    ``label`` is None on frames that do not end a sign; on the frame that ends one it is the accepted
    sign or ``"NONE"`` (rejected: below the threshold). ``alternatives`` are the top-k classes with
    their calibrated probabilities, best first (the candidate included).
    """

    label: str | None = None
    confidence: float = 0.0  # the candidate's confidence after the vote (what the threshold is applied to)
    alternatives: list[tuple[str, float]] = field(default_factory=list)
    accepted: bool = False
    state: str = IDLE  # the pipeline's state after this frame
    frames: int = 0  # frames in the sign window given to the model (or recorded so far, while recording)
    latency_ms: float | None = None  # the sign's last frame arriving -> this prediction (stream only)
    candidate: str | None = None  # top-1 class, before the threshold
    probability: float = 0.0  # top-1 calibrated probability, before the vote
    threshold: float | None = None  # the effective threshold applied
    flags: tuple[str, ...] = ()  # why the threshold was raised: "low_visibility", "low_motion"
    votes: int = 0  # predictions in the agreeing run the vote used
    reason: str = ""  # why the sign ended: "rest", "max_frames", "flush"; "clip" for process_sequence
    motion: float = 0.0  # this frame's motion energy
    frame_index: int = -1  # index of this frame in the stream (0-based, valid frames only)
    features_ms: float | None = None  # resample + enrich of the window
    inference_ms: float | None = None  # the backend's run()
    sentence: tuple[str, ...] = ()  # the sentence buffer after this prediction

    @property
    def ended(self) -> bool:
        """True on the frame that ended a sign (accepted or not)."""
        return self.label is not None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["alternatives"] = [{"label": lab, "probability": p} for lab, p in self.alternatives]
        d["flags"] = list(self.flags)
        d["sentence"] = list(self.sentence)
        d["ended"] = self.ended
        return d


# Motion energy ------------------------------------------------------------------------------------
def motion_profile(raw) -> np.ndarray:
    """Per-frame motion energy of a clip [F, 225] -> [F] (first frame 0), as the stream computes it."""
    arr = validate_raw(raw, "motion_profile input").astype(np.float64)
    hands = np.where(np.isfinite(arr[:, _HANDS]), arr[:, _HANDS], 0.0)
    present = np.stack([(hands[:, :63] != 0).any(1), (hands[:, 63:] != 0).any(1)], axis=1)
    out = np.zeros(len(arr))
    if len(arr) > 1:
        delta = np.abs(np.diff(hands, axis=0))
        both = present[1:] & present[:-1]
        out[1:] = (delta[:, :63].sum(1) * both[:, 0] + delta[:, 63:].sum(1) * both[:, 1]) / 126.0
    return out


# Model files --------------------------------------------------------------------------------------
def _onnxruntime_missing() -> str | None:
    """Why ONNX Runtime cannot be imported, or None when it can."""
    try:
        import onnxruntime  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken install counts as missing, with its reason
        return f"{type(exc).__name__}: {exc}"
    return None


def read_model_metadata(path: str | Path) -> dict[str, Any]:
    """The serving metadata a model file carries (preset, labels, feature_version, seq_len, ...).

    ``.onnx``: its metadata_props, read with the ``onnx`` package (no ONNX Runtime needed), else with
    ONNX Runtime; ``.pt``: the checkpoint's metadata, in the same shape.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        try:
            import onnx
        except ImportError:
            from .export import read_metadata

            return read_metadata(path)
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds for corrupt files
            why = str(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(f"{path}: not a loadable ONNX model ({why}); re-export it with `signflow-zoo export`"
                                 ) from None
        from .export import decode_metadata

        return decode_metadata({p.key: p.value for p in proto.metadata_props})
    if suffix in (".pt", ".pth"):
        from .artifacts import serving_metadata
        from .checkpoint import read_checkpoint

        _, meta = read_checkpoint(path)
        return {**meta, **serving_metadata(meta)}
    raise ModelFileError(f"{path}: unknown model file type {suffix!r}; expected .onnx or .pt")


def _sibling_checkpoint(onnx_path: Path) -> Path | None:
    for suffix in (".pt", ".pth"):
        p = onnx_path.with_suffix(suffix)
        if p.is_file():
            return p
    return None


@dataclass
class _Plan:
    backend: str
    model_file: Path
    artifacts: Artifacts
    meta: dict[str, Any]
    notes: list[str]


def _artifact_of_file(path: Path, meta: Mapping[str, Any]) -> str:
    if path.suffix.lower() in (".pt", ".pth"):
        return "torch"
    return "onnx-optimized" if str(meta.get("optimized", "")).lower() in ("true", "1") else "onnx"


def plan_backend(model_path: str | Path, backend: str | None = None) -> _Plan:
    """Which backend serves ``model_path`` and from which file; raises with a fix when none can.

    No backend named: ``.onnx`` -> onnx-cpu (onnx-optimized for an optimized graph), ``.pt`` -> torch-eager.
    Without ONNX Runtime, an ``.onnx`` falls back to PyTorch when a checkpoint with the same stem lies
    next to it (said in ``notes``), else it is an error. A named backend is used as named, never swapped.
    """
    from .artifacts import artifacts_from_model_file
    from .plugins import get_registry

    path = Path(model_path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    suffix = path.suffix.lower()
    if suffix not in (".onnx", ".pt", ".pth"):
        raise ModelFileError(f"{path}: unknown model file type {suffix!r}; expected .onnx (ONNX Runtime) "
                             "or .pt (PyTorch weights-only checkpoint)")
    meta = read_model_metadata(path)
    file_kind = _artifact_of_file(path, meta)
    notes: list[str] = []

    if backend is None:
        if file_kind == "torch":
            backend = "torch-eager"
        else:
            missing = _onnxruntime_missing()
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
                backend, path, meta, file_kind = "torch-eager", ckpt, ckpt_meta, "torch"

    _check_serving_meta(path, meta)
    entry = get_registry().get(backend)  # BackendError naming the registered ones
    cls = entry.cls
    wants = cls.artifact
    if wants == "torch" and file_kind != "torch":
        hint = f" ({_sibling_checkpoint(path).name} lies next to it)" if _sibling_checkpoint(path) else ""
        raise BackendError(f"backend {backend!r} runs a PyTorch checkpoint: pass a .pt model file, not "
                           f"{path.name}{hint}")
    if wants in ("onnx", "onnx-optimized") and file_kind == "torch":
        raise BackendError(f"backend {backend!r} runs an ONNX graph: pass an .onnx model file, not {path.name} "
                           f"(export it with `signflow-zoo export {path}`)")
    if wants == "onnx-optimized" and file_kind != "onnx-optimized":
        raise BackendError(f"backend {backend!r} runs an optimized ONNX graph, and {path.name} is a plain export; "
                           f"optimize it (`signflow-zoo export --optimize`) or use backend 'onnx-cpu'")
    available = cls.availability()
    if not available:
        raise BackendUnavailable(f"backend {backend!r} cannot run here: {available.reason}")

    if file_kind == "torch" or _onnxruntime_missing() is not None:
        from .artifacts import serving_metadata

        sm = serving_metadata(meta)
        arts = Artifacts(preset=str(sm["preset"]), num_classes=int(sm["num_classes"] or len(sm["labels"])),
                         labels=list(sm["labels"]), model_kwargs=dict(sm["model_kwargs"] or {}), workdir=path.parent)
        if file_kind == "torch":
            arts.checkpoint = path
        else:  # a third-party ONNX backend that does not need ONNX Runtime
            arts.onnx = path
            if file_kind == "onnx-optimized":
                arts.onnx_optimized = path
    else:
        arts = artifacts_from_model_file(path)
    return _Plan(backend, path, arts, dict(meta), notes)


def _check_serving_meta(path: Path | str, meta: Mapping[str, Any]) -> None:
    version = meta.get("feature_version", FEATURE_VERSION)
    if version != FEATURE_VERSION:
        raise ModelFileError(
            f"{path}: the model was trained on features {version!r}, but this signflow-zoo computes "
            f"{FEATURE_VERSION!r}; its predictions would be meaningless. Retrain it with this version "
            "(`signflow-zoo train`), or serve it with the signflow-zoo version it was made with"
        )
    from .export import INPUT_LAYOUT

    layout = meta.get("input_layout")
    if layout is not None and layout != INPUT_LAYOUT:
        raise ModelFileError(f"{path}: the model expects inputs {layout!r}; this pipeline feeds {INPUT_LAYOUT!r}")
    labels = meta.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ModelFileError(f"{path}: model file has no label list in its metadata; export it with signflow-zoo")
    n = meta.get("num_classes")
    if n is not None and int(n) != len(labels):
        raise ModelFileError(f"{path}: metadata says {n} classes but lists {len(labels)} labels")


# The pipeline -------------------------------------------------------------------------------------
class SignFlowInferencePipeline:
    """Streaming (``process_frame``) and whole-clip (``process_sequence``) recognition over one backend.

    ``SignFlowInferencePipeline(model_path, backend=None, config=None)`` loads the model file itself
    (see :func:`plan_backend`); :meth:`from_runner` wraps a runner that is already prepared.
    """

    def __init__(self, model_path: str | Path, backend: str | None = None, config: PipelineConfig | None = None,
                 options: RunnerOptions | None = None):
        config = (config or PipelineConfig()).validate()
        plan = plan_backend(model_path, backend)
        for note in plan.notes:
            warnings.warn(note, RuntimeWarning, stacklevel=2)
        from .plugins import get_registry

        cls = get_registry().get(plan.backend).cls
        runner = cls(options or RunnerOptions(threads=config.threads))
        try:
            runner.prepare(plan.artifacts)
        except SignFlowError:
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin's own failure, named with the file
            raise BackendError(f"backend {plan.backend!r} could not load {plan.model_file}: "
                               f"{type(exc).__name__}: {exc}") from exc
        self.model_path: Path | None = plan.model_file
        self.notes: list[str] = list(plan.notes)
        self._owns_runner = True
        try:
            self._setup(runner, plan.artifacts.labels, config, plan.meta)
        except BaseException:
            runner.close()  # e.g. the warm-up found logits that do not match the labels
            raise

    @classmethod
    def from_runner(cls, runner: Runner, labels: Sequence[str], config: PipelineConfig | None = None,
                    meta: Mapping[str, Any] | None = None) -> "SignFlowInferencePipeline":
        """A pipeline over a runner that is already prepared (the harness's); it is not closed by us."""
        self = cls.__new__(cls)
        self.model_path = None
        self.notes = []
        self._owns_runner = False
        self._setup(runner, list(labels), (config or PipelineConfig()).validate(), dict(meta or {}))
        return self

    def spawn(self) -> "SignFlowInferencePipeline":
        """Another pipeline on the same (already loaded) runner, with its own state: one per stream, so
        several users can be served by one model. The runner stays owned by this pipeline."""
        other = self.from_runner(self.runner, self.labels, replace(self.config, warmup=False), self.meta)
        other.model_path, other.notes, other.backend_name = self.model_path, list(self.notes), self.backend_name
        return other

    def _setup(self, runner: Runner, labels: list[str], config: PipelineConfig, meta: dict[str, Any]) -> None:
        if not getattr(runner, "prepared", False):
            raise BackendError(f"backend {runner.name!r}: the runner must be prepared before building a pipeline")
        if not labels:
            raise ModelFileError("the model has no labels")
        if getattr(runner, "input_dim", FEATURE_DIM) != FEATURE_DIM:
            raise ModelFileError(f"the model reads {runner.input_dim} features per frame; this pipeline computes "
                                 f"{FEATURE_DIM} ({FEATURE_VERSION})")
        self.runner = runner
        self.backend_name = runner.name
        self.labels = [str(x) for x in labels]
        self.config = config
        self.meta = meta
        self.seq_len = int(config.seq_len or meta.get("seq_len") or SEQ_LEN)
        temperature = config.temperature
        if temperature is None:
            temperature = meta.get("calibration_temperature") or 1.0
        try:
            temperature = float(temperature)
        except (TypeError, ValueError):
            temperature = float("nan")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ModelFileError(f"calibration temperature must be a number > 0, got {temperature!r}")
        self.temperature = temperature
        n = config.max_sign_frames
        self._buf = np.zeros((n, RAW_DIM), dtype=np.float32)
        self._vis = np.zeros(n, dtype=bool)
        self._conf = np.full(n, np.nan)
        self._motion = np.zeros(n)
        self._history: deque[tuple[str, float]] = deque(maxlen=config.vote_window)
        self._sentence: list[str] = []
        self.reset()
        if config.warmup:
            self._warmup()

    def _warmup(self) -> None:
        feats = np.zeros((1, self.seq_len, FEATURE_DIM), np.float32)
        mask = np.ones((1, self.seq_len), bool)
        self._logits(feats, mask)

    # -- state ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the current recording, the vote history and the sentence (a new session)."""
        self.state = IDLE
        self._n = 0
        self._recorded = 0
        self._rest = 0
        self._recent: deque[tuple[np.ndarray, bool, float, float]] = deque(maxlen=self.config.preroll_frames or 1)
        self._prev_hands: np.ndarray | None = None
        self._prev_present = (False, False)
        self._frame_index = -1
        self._history.clear()
        self._sentence.clear()

    @property
    def sentence(self) -> list[str]:
        """Accepted signs so far, oldest first (a copy)."""
        return list(self._sentence)

    @property
    def sentence_text(self) -> str:
        return " ".join(self._sentence)

    def describe(self) -> dict[str, Any]:
        """Backend, model file, labels count and the effective settings."""
        return {"backend": self.backend_name, "model": str(self.model_path) if self.model_path else None,
                "preset": self.meta.get("preset"), "classes": len(self.labels), "seq_len": self.seq_len,
                "temperature": self.temperature, "notes": list(self.notes), "runner": self.runner.describe(),
                "config": self.config.to_dict()}

    def close(self) -> None:
        if self._owns_runner and self.runner is not None:
            self.runner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- streaming ------------------------------------------------------------------------------
    def process_frame(self, payload: Any) -> Prediction:
        """One browser frame -> :class:`Prediction` (``label`` None unless this frame ended a sign).

        Raises :class:`PayloadError` for a malformed payload, before any state is touched.
        """
        t0 = time.perf_counter()
        row, info = parse_payload(payload)
        return self._step(row, info, t0)

    def flush(self) -> Prediction | None:
        """End the current recording now (end of stream): its prediction when one was recording and it
        has at least ``min_sign_frames`` frames, else None (a too-short recording is dropped)."""
        if self.state != RECORDING:
            return None
        if self._recorded < self.config.min_sign_frames:
            self._end_recording()
            return None
        return self._finish("flush", time.perf_counter())

    def _motion_energy(self, row: np.ndarray) -> tuple[float, bool]:
        hands = row[_HANDS]
        present = (bool(hands[:63].any()), bool(hands[63:].any()))
        prev, prev_present = self._prev_hands, self._prev_present
        energy = 0.0
        if prev is not None:
            if present[0] and prev_present[0]:
                energy += float(np.abs(hands[:63] - prev[:63]).sum(dtype=np.float64))
            if present[1] and prev_present[1]:
                energy += float(np.abs(hands[63:] - prev[63:]).sum(dtype=np.float64))
            energy /= 126.0
        self._prev_hands, self._prev_present = hands, present
        return energy, present[0] or present[1]

    def _push(self, row: np.ndarray, visible: bool, conf: float, motion: float) -> None:
        i = self._n
        self._buf[i] = row
        self._vis[i] = visible
        self._conf[i] = conf
        self._motion[i] = motion
        self._n = i + 1

    def _step(self, row: np.ndarray, info: FrameInfo, t0: float) -> Prediction:
        cfg = self.config
        self._frame_index += 1
        motion, _ = self._motion_energy(row)
        visible = info.hand_visible
        conf = np.nan if info.confidence is None else info.confidence
        if self.state == IDLE:
            if motion > cfg.motion_threshold and visible:
                self._n = 0
                if cfg.preroll_frames:
                    for frame in self._recent:
                        self._push(*frame)
                self._recent.clear()
                self._push(row, visible, conf, motion)
                self.state, self._recorded, self._rest = RECORDING, 1, 0
            elif cfg.preroll_frames:
                self._recent.append((row, visible, conf, motion))
            return Prediction(state=self.state, frames=self._n if self.state == RECORDING else 0, motion=motion,
                              frame_index=self._frame_index, sentence=tuple(self._sentence))
        self._push(row, visible, conf, motion)
        self._recorded += 1
        self._rest = self._rest + 1 if motion < cfg.motion_threshold else 0
        if self._rest >= cfg.min_rest_frames and self._recorded >= cfg.min_sign_frames:
            return self._finish("rest", t0, motion)
        if self._n >= cfg.max_sign_frames:
            return self._finish("max_frames", t0, motion)
        return Prediction(state=RECORDING, frames=self._n, motion=motion, frame_index=self._frame_index,
                          sentence=tuple(self._sentence))

    def _end_recording(self) -> None:
        self.state, self._n, self._recorded, self._rest = IDLE, 0, 0, 0
        self._recent.clear()

    def _finish(self, reason: str, t0: float, motion: float = 0.0) -> Prediction:
        n = self._n
        if reason == "rest":
            n = max(2, n - max(0, self._rest - self.config.trailing_rest_kept))
        window = self._buf[:n].copy()
        vis, conf, energy = self._vis[:n].copy(), self._conf[:n].copy(), self._motion[:n].copy()
        self._end_recording()  # before inference: a failing backend leaves a clean IDLE state
        pred = self._classify(window, vis, conf, energy, reason, vote=True)
        pred.motion = motion
        pred.frame_index = self._frame_index
        pred.latency_ms = (time.perf_counter() - t0) * 1e3
        return pred

    # -- whole clips ----------------------------------------------------------------------------
    def process_sequence(self, clip, confidence: float | None = None) -> Prediction:
        """Classify one whole clip: raw [F, 225], or landmark arrays as a mapping with ``left``, ``right``,
        ``pose`` ([F, 21, 3], [F, 21, 3], [F, 33 or 30, 3], None for a missing part) or a tuple of the
        three. No state machine, no vote, no sentence: the pipeline's streaming state is not touched.
        ``confidence`` is the frontend's tracking confidence for the clip, if known.
        """
        if isinstance(clip, Mapping):
            unknown = set(clip) - {"left", "right", "pose"}
            if unknown:
                raise InputError(f"process_sequence: unknown part(s) {sorted(unknown)}; expected left, right, pose")
            raw = raw_from_parts(clip.get("left"), clip.get("right"), clip.get("pose"))
        elif isinstance(clip, tuple) and len(clip) == 3:
            raw = raw_from_parts(*clip)
        else:
            raw = validate_raw(clip, "process_sequence input")
        raw = np.asarray(raw, dtype=np.float32)
        present = np.isfinite(raw[:, _HANDS]) & (raw[:, _HANDS] != 0)
        vis = present[:, :63].any(1) | present[:, 63:].any(1)
        conf = np.full(len(raw), np.nan if confidence is None else float(confidence))
        return self._classify(raw, vis, conf, motion_profile(raw), "clip", vote=False)

    # -- decision -------------------------------------------------------------------------------
    def _logits(self, feats: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = np.asarray(self.runner.run(feats, mask))
        if out.ndim != 2 or out.shape != (feats.shape[0], len(self.labels)):
            raise BackendError(f"backend {self.backend_name!r} returned logits of shape {list(out.shape)}, expected "
                               f"[{feats.shape[0]}, {len(self.labels)}] (one per label of the model)")
        return out

    def threshold_for(self, hand_visibility: float, tracking_confidence: float | None,
                      motion: float) -> tuple[float, tuple[str, ...]]:
        """The effective threshold for a window with these qualities, and why it was raised."""
        cfg = self.config
        t, flags = cfg.confidence_threshold, []
        if hand_visibility < cfg.min_hand_visibility or (
                tracking_confidence is not None and tracking_confidence < cfg.min_tracking_confidence):
            t += cfg.low_visibility_penalty
            flags.append("low_visibility")
        if motion < cfg.min_motion_energy:
            t += cfg.low_motion_penalty
            flags.append("low_motion")
        return min(t, max(cfg.max_threshold, cfg.confidence_threshold)), tuple(flags)

    def _classify(self, window: np.ndarray, vis: np.ndarray, conf: np.ndarray, motion: np.ndarray, reason: str,
                  vote: bool) -> Prediction:
        cfg = self.config
        t1 = time.perf_counter()
        feats, mask = prepare_clip(window, self.seq_len)
        t2 = time.perf_counter()
        logits = self._logits(feats[None], mask[None])[0].astype(np.float64)
        t3 = time.perf_counter()
        if not np.all(np.isfinite(logits)):
            raise BackendError(f"backend {self.backend_name!r} returned non-finite logits (NaN or inf)")
        z = logits / self.temperature
        z = np.exp(z - z.max())
        probs = z / z.sum()
        k = min(cfg.top_k, len(probs))
        top = np.argsort(-probs, kind="stable")[:k]
        alternatives = [(self.labels[i], float(probs[i])) for i in top]
        candidate, p = alternatives[0]

        confidence, votes = p, 1
        if vote:
            if self._history and self._history[-1][0] != candidate:
                self._history.clear()
            self._history.append((candidate, p))
            votes = len(self._history)
            confidence = max(p, float(np.mean([q for _, q in self._history])))

        known = conf[~np.isnan(conf)]
        tracking = float(known.mean()) if known.size else None
        threshold, flags = self.threshold_for(float(vis.mean()) if vis.size else 0.0, tracking,
                                              float(motion.mean()) if motion.size else 0.0)
        accepted = confidence >= threshold
        if vote and accepted:
            if not self._sentence or self._sentence[-1] != candidate:
                self._sentence.append(candidate)
                del self._sentence[:-cfg.sentence_max_words]
        return Prediction(
            label=candidate if accepted else NONE_LABEL, confidence=float(confidence), alternatives=alternatives,
            accepted=bool(accepted), state=self.state, frames=len(window), candidate=candidate, probability=float(p),
            threshold=float(threshold), flags=flags, votes=votes, reason=reason,
            features_ms=(t2 - t1) * 1e3, inference_ms=(t3 - t2) * 1e3, sentence=tuple(self._sentence),
        )


# Replaying recordings as a live stream --------------------------------------------------------------
def _raw_of(clip) -> np.ndarray:
    raw = getattr(clip, "raw", clip)
    return np.asarray(validate_raw(raw, "clip"), dtype=np.float32)


def stream_from_clips(clips: Iterable, rest_frames: int = 20, motion_threshold: float = PipelineConfig.motion_threshold
                      ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Clips (raw [F, 225] or objects with ``.raw``) -> one continuous stream [N, 225] and each clip's
    (start, end) frame span in it.

    Before each clip and after the last one the signer holds still for ``rest_frames`` frames. Between
    two clips the hands glide from one clip's last frame to the next one's first slowly enough (each
    step below half ``motion_threshold``) that the transition is not itself read as a sign.
    """
    rows: list[np.ndarray] = []
    spans: list[tuple[int, int]] = []
    prev: np.ndarray | None = None
    count = 0
    for clip in clips:
        raw = _raw_of(clip)
        first = raw[0]
        if prev is not None:
            both = np.ones(RAW_DIM, bool)
            for cols in (slice(0, 63), slice(63, 126)):
                both[cols] = bool(prev[cols].any()) and bool(first[cols].any())
            gap = np.abs(first - prev)[:126][both[:126]].sum() / 126.0
            steps = int(np.ceil(gap / (motion_threshold / 2))) if motion_threshold > 0 else 0
            for s in range(1, steps):
                w = s / steps
                mid = np.where(both, prev * (1 - w) + first * w, np.where(w < 0.5, prev, first))
                rows.append(mid.astype(np.float32)[None])
                count += 1
        rows.append(np.repeat(first[None], rest_frames, axis=0))
        count += rest_frames
        spans.append((count, count + len(raw)))
        rows.append(raw)
        count += len(raw)
        prev = raw[-1]
    if prev is None:
        return np.zeros((0, RAW_DIM), np.float32), []
    rows.append(np.repeat(prev[None], rest_frames, axis=0))
    return np.concatenate(rows, axis=0).astype(np.float32), spans


def _stats(values: Sequence[float]) -> dict[str, Any]:
    if not len(values):
        return {"count": 0}
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"count": int(a.size), "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "mean_ms": float(a.mean()), "max_ms": float(a.max())}


MIN_SIGNS_FOR_P99 = 20


def measure_stream_latency(runner: Runner, labels: Sequence[str], clips: Iterable,
                           config: PipelineConfig | None = None, rest_frames: int = 20,
                           repeats: int = 1) -> dict[str, Any]:
    """Replay ``clips`` (with rest frames between them) through the streaming pipeline on a prepared
    ``runner``, as fast as it goes, timing every ``process_frame`` call.

    Returns ``latency_ms``: the sign's last frame (the one that ends it) arriving -> its prediction
    (validation, state machine, features, model, decision); ``model_ms`` (the runner's share of it);
    ``features_ms``; ``frame_ms``: the non-model cost of frames that end nothing (validation + buffer +
    state machine); ``nonmodel_ms``: every frame's time minus model time; ``frames_per_s``: sustained
    throughput; ``signs``/``predictions`` and ``trustworthy`` (False when fewer than
    ``MIN_SIGNS_FOR_P99`` predictions: a p99 of few samples is just the maximum).
    """
    config = config or PipelineConfig()
    raws = [_raw_of(c) for c in clips]
    rows, spans = stream_from_clips(raws, rest_frames, config.motion_threshold)
    payloads = [payload_from_raw(r) for r in rows]
    pipe = SignFlowInferencePipeline.from_runner(runner, labels, config)  # warms the runner up
    latency, model, feats, idle, nonmodel = [], [], [], [], []
    clock = time.perf_counter_ns
    t_start = clock()
    for _ in range(max(1, repeats)):
        pipe.reset()
        for payload in payloads:
            t0 = clock()
            p = pipe.process_frame(payload)
            dt = (clock() - t0) / 1e6
            if p.ended:
                latency.append(dt)
                model.append(p.inference_ms)
                feats.append(p.features_ms)
                nonmodel.append(dt - p.inference_ms)
            else:
                idle.append(dt)
                nonmodel.append(dt)
        p = pipe.flush()
        if p is not None:
            latency.append(p.latency_ms)
            model.append(p.inference_ms)
            feats.append(p.features_ms)
    wall = (clock() - t_start) / 1e9
    n_frames = len(payloads) * max(1, repeats)
    out = {
        "backend": runner.name, "signs": len(spans) * max(1, repeats), "predictions": len(latency),
        "frames": n_frames, "frames_per_s": n_frames / wall if wall > 0 else float("inf"),
        "latency_ms": _stats(latency), "model_ms": _stats(model), "features_ms": _stats(feats),
        "frame_ms": _stats(idle), "nonmodel_ms": _stats(nonmodel),
        "trustworthy": len(latency) >= MIN_SIGNS_FOR_P99, "config": config.to_dict(), "rest_frames": rest_frames,
    }
    if not out["trustworthy"]:
        out["note"] = (f"only {len(latency)} predictions: percentiles of so few samples are not trustworthy "
                       f"(need >= {MIN_SIGNS_FOR_P99})")
    return out


__all__ = ["PipelineConfig", "PipelineConfigError", "Prediction", "SignFlowInferencePipeline", "plan_backend",
           "read_model_metadata", "motion_profile", "stream_from_clips", "measure_stream_latency", "NONE_LABEL"]
