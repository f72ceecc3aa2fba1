"""Streaming sign recognition: SignFlow's ``process_frame`` state machine over any backend.

One frame at a time (the browser's payload, see :mod:`signflow_zoo.serve.payload`)::

    pipe = SignFlowInferencePipeline("model.onnx")          # or .pt; the file carries labels etc.
    for payload in frames:
        p = pipe.process_frame(payload)
        if p.ended:                                          # a sign finished on this frame
            print(p.label, p.confidence, p.alternatives)     # label is "NONE" when rejected
        websocket.send_json(p.to_dict())                     # what the original frontend reads, and more

**The reference.** Every rule and default below is the original SignFlow pipeline's, in the version whose
model reads 469 features and which applies a calibration temperature and per-class thresholds (its
``_adaptive_threshold`` adds the frontend-confidence penalties; its ``_calibrate_confidence`` blends raw
probability, top-2 margin, entropy certainty and a motion factor). Where this code departs from it, the
departure is named here and in :class:`PipelineConfig`.

**Why one module of ~650 lines.** It holds the state machine, its configuration and the prediction it
returns, which change together (every rule reads several config fields and writes prediction fields);
loading model files (:mod:`~signflow_zoo.serve.modelfile`), motion energy (:mod:`~signflow_zoo.serve.motion`) and
stream replay (:mod:`~signflow_zoo.serve.replay`) are already their own modules.

**What process_frame returns.** Always a :class:`Prediction`. On a frame that does not end a sign its
``label`` is None (``ended`` is False) and only ``state``/``frames``/``motion`` are filled; its wire form
(``to_dict()``) says ``"prediction": "NONE"`` or ``"RECORDING"`` as the original did. On the frame that
ends a sign, ``label`` is the accepted sign or ``"NONE"``. A malformed payload raises
:class:`~signflow_zoo.common.errors.PayloadError` and leaves the pipeline exactly as it was.

**The state machine** (numbers in :class:`PipelineConfig`):

- per frame: *visibility* = fraction of the 42 hand points detected, lowered by 0.8 x (floor - c) when
  the frontend's averageConfidence c is below ``tracking_confidence_floor``; *motion energy* = mean
  |delta| of the 126 hand values since the previous frame, on the original's per-frame normalized
  coordinates (minus the hip centre, over the body scale max(shoulder width, hip width, torso height), as
  ``normalize_landmarks`` at 118fad0; :mod:`signflow_zoo.serve.motion`). Departure: with
  ``ignore_tracking_jumps`` a hand counts only when detected in both frames, and both frames are normalized
  with one reference when a shoulder or hip is lost or found between them; the original read such tracking
  events as motion;
- IDLE -> RECORDING when the energy exceeds ``motion_threshold`` and the visibility exceeds
  ``min_hand_visibility``; the ``preroll_frames`` frames before it are kept;
- the sign ends after ``min_rest_frames`` frames in a row below ``motion_threshold`` once
  ``min_sign_frames`` frames were recorded, or when the window holds ``max_sign_frames`` (pre-roll
  included). Then, as the original: the trailing rest frames are cut (all but ``trailing_rest_kept``)
  when the window is longer than they are plus max(2, min_sign_frames // 2), and leading/trailing frames
  in which nothing at all was tracked are cut (one kept on each side); the first frame after a sign has
  no motion (the original cleared its buffer);
- the window is resampled to ``seq_len`` frames, enriched (469 features) and the model runs ONCE;
- probabilities = softmax(logits / T), T = ``temperature``, else the file's ``calibration_temperature``,
  else 1; ``top_k`` classes reported;
- confidence: with ``calibrate_confidence``, 0.58 p + 0.24 margin + 0.10 certainty + 0.08 motion factor
  (margin = top-1 minus top-2 probability; certainty = 1 - entropy / log(classes); motion factor = this
  frame's motion / ``min_motion_energy``, at most 1), x 0.85 when this frame's motion is below
  ``min_motion_energy``; in every case x margin / ``min_prediction_margin`` when the margin is below it;
- a top-1 class labelled "NONE" is rejected; otherwise the vote: the history restarts when the top-1
  label changes, and a label predicted k times in a row (up to ``vote_window``) gets
  max(confidence, mean confidence of the run);
- threshold = max(adaptive, the class's ``class_thresholds`` entry from the model file); adaptive =
  ``confidence_threshold`` + ``low_visibility_penalty`` when the mean visibility of the last ``seq_len``
  frames is below max(0.3, min_hand_visibility + 0.05), + ``low_motion_penalty`` when their mean motion
  is below ``min_motion_energy``, + ``poor_tracking_penalty`` when the frontend's confidence on this
  frame is below ``tracking_confidence_floor`` (else + ``fair_tracking_penalty`` below
  ``fair_tracking_confidence``), capped at ``max_threshold``;
- accepted signs are appended to the sentence buffer unless they repeat its last word.

``process_sequence`` classifies one whole clip (no state machine, no vote, no sentence). Replaying
recordings as a stream lives in :mod:`signflow_zoo.serve.replay`; model files in :mod:`signflow_zoo.serve.modelfile`.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from signflow_zoo.common.errors import BackendError, InputError, ModelFileError, SignFlowError
from signflow_zoo.data.features import FEATURE_DIM, FEATURE_VERSION, RAW_DIM, prepare_clip, raw_from_parts, validate_raw
from signflow_zoo.serve.modelfile import MAX_SEQ_LEN, ServingInfo, plan_backend, read_model_metadata, serving_info
from signflow_zoo.serve.motion import FrameHands, clip_quality, motion_profile, normalized_hands, visibility
from signflow_zoo.serve.payload import parse_payload
from signflow_zoo.backends.runner import Runner, RunnerOptions

IDLE, RECORDING = "idle", "recording"
NONE_LABEL = "NONE"
RECORDING_LABEL = "RECORDING"  # what the original says on a frame recorded into a sign that has not ended
NONE_CLASS_LABELS = frozenset({"NONE", "[NONE]"})  # a model's "no sign" class, as the original names it
MAX_SIGN_FRAMES = 100_000  # ~55 minutes at 30 fps (90 MB of window): a longer "sign" is a broken config
VISIBILITY_FLOOR, VISIBILITY_MARGIN = 0.3, 0.05  # low visibility: below max(0.3, min_hand_visibility + 0.05)
LOW_MOTION_FACTOR = 0.85  # the calibrated confidence of a window ending on a still frame, as the original
# the original's decision counters (``decision_diagnostics["counters"]``), in its order; "rejected_by_margin" and
# "rejected_by_motion" count windows whose confidence was lowered for a small margin / a still last frame
DECISION_COUNTERS = ("total_inferences", "accepted", "rejected_total", "rejected_by_confidence_threshold",
                     "rejected_by_adaptive_threshold", "rejected_by_class_threshold", "rejected_by_label_none",
                     "rejected_by_calibration", "rejected_by_margin", "rejected_by_motion",
                     "rejected_by_tta_disagreement")
_ACTIVE_HANDS = 1e-4  # a frame whose mean |normalized hand value| is at most this tracked nothing (the original's)


class PipelineConfigError(SignFlowError, ValueError):
    """A PipelineConfig value is out of range, or a combination of values cannot work."""


@dataclass
class PipelineConfig:
    """Every threshold and timing of the streaming pipeline; defaults are the original's (where one
    differs, its comment says why)."""

    motion_threshold: float = 0.005  # motion energy above: a sign starts; below: rest. In the original's units
    #                                  (118fad0): hands minus the hip centre, over the body scale (serve/motion.py)
    preroll_frames: int = 3  # frames kept from before the one that starts a sign (the original keeps its
    #                          last 4 frames, that one included)
    min_rest_frames: int = 10  # rest frames in a row that end a sign ...
    min_sign_frames: int = 15  # ... once this many frames were recorded (pre-roll not counted)
    max_sign_frames: int = 180  # a window this long (pre-roll included) ends the sign anyway
    trailing_rest_kept: int = 0  # rest frames kept at the end of a window that ended on rest
    ignore_tracking_jumps: bool = True  # differs (original: False): a hand appearing or vanishing is not
    #                                     motion; docs/streaming.md measures why
    seq_len: int | None = None  # frames fed to the model; None: the model file's (64)
    temperature: float | None = None  # softmax temperature; None: the model file's calibration, else 1
    top_k: int = 4  # classes reported, best first (the original: its top-1 and 3 alternatives)
    vote_window: int = 5  # predictions the vote looks back over (1 = no vote)
    confidence_threshold: float = 0.7  # base acceptance threshold
    min_hand_visibility: float = 0.2  # a frame must show more of the 42 hand points than this to start a sign
    low_visibility_penalty: float = 0.05  # added when recent visibility < max(0.3, min_hand_visibility + 0.05)
    min_motion_energy: float = 0.003  # recent mean motion below: low motion
    low_motion_penalty: float = 0.06  # added to the threshold for low motion
    tracking_confidence_floor: float = 0.35  # frontend averageConfidence below: poor tracking
    poor_tracking_penalty: float = 0.08  # added for poor tracking
    fair_tracking_confidence: float = 0.55  # frontend averageConfidence below (and >= the floor): fair tracking
    fair_tracking_penalty: float = 0.04  # added for fair tracking
    max_threshold: float = 0.95  # the raised threshold never exceeds this
    min_prediction_margin: float = 0.1  # top-1 minus top-2 probability below: confidence x margin / this
    calibrate_confidence: bool = True  # the original's blend of probability, margin, certainty and motion
    sentence_max_words: int = 100  # differs (original: unbounded): a long session must not grow memory
    threads: int | None = None  # backend intra-op threads when the pipeline loads the model itself
    warmup: bool = True  # run the model once at load (checks its output, keeps the first sign fast)

    def validate(self) -> "PipelineConfig":
        """Refuse values out of range and combinations that cannot work, one line naming the options."""

        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise PipelineConfigError(f"pipeline config: {name} must be {what}, got {getattr(self, name)!r}")

        def is_int(v) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

        def is_num(v) -> bool:
            return (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                    and math.isfinite(v))

        for name in ("preroll_frames", "trailing_rest_kept"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "an integer >= 0")
        for name in ("min_rest_frames", "min_sign_frames", "top_k", "vote_window", "sentence_max_words"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "an integer >= 1")
        need(is_int(self.max_sign_frames) and 2 <= self.max_sign_frames <= MAX_SIGN_FRAMES, "max_sign_frames",
             f"an integer in 2..{MAX_SIGN_FRAMES}")
        need(self.seq_len is None or (is_int(self.seq_len) and 2 <= self.seq_len <= MAX_SEQ_LEN), "seq_len",
             f"None or an integer in 2..{MAX_SEQ_LEN}")
        need(self.threads is None or (is_int(self.threads) and self.threads >= 1), "threads", "None or an integer >= 1")
        need(self.temperature is None or (is_num(self.temperature) and self.temperature > 0), "temperature",
             "None or a number > 0")
        for name in ("motion_threshold", "min_motion_energy"):
            need(is_num(getattr(self, name)) and getattr(self, name) >= 0, name, "a number >= 0")
        for name in ("confidence_threshold", "min_hand_visibility", "low_visibility_penalty", "low_motion_penalty",
                     "tracking_confidence_floor", "poor_tracking_penalty", "fair_tracking_confidence",
                     "fair_tracking_penalty", "max_threshold", "min_prediction_margin"):
            need(is_num(getattr(self, name)) and 0 <= getattr(self, name) <= 1, name, "a number in 0..1")
        for name in ("ignore_tracking_jumps", "calibrate_confidence", "warmup"):
            need(isinstance(getattr(self, name), (bool, np.bool_)), name, "true or false")

        def conflict(ok: bool, message: str) -> None:
            if not ok:
                raise PipelineConfigError(f"pipeline config: {message}")

        recordable = self.max_sign_frames - self.preroll_frames  # frames a window holds besides the pre-roll
        conflict(recordable >= 2, f"max_sign_frames ({self.max_sign_frames}) must be at least preroll_frames + 2 "
                 f"({self.preroll_frames + 2}): a window holds the pre-roll, the frame that starts the sign and one "
                 "more")
        conflict(self.min_sign_frames <= recordable, f"min_sign_frames ({self.min_sign_frames}) must be at most "
                 f"max_sign_frames - preroll_frames ({recordable}), or no sign could ever end on rest")
        conflict(self.min_rest_frames < recordable, f"min_rest_frames ({self.min_rest_frames}) must be below "
                 f"max_sign_frames - preroll_frames ({recordable}), or no sign could ever end on rest")
        conflict(self.trailing_rest_kept <= self.min_rest_frames, f"trailing_rest_kept ({self.trailing_rest_kept}) "
                 f"must be at most min_rest_frames ({self.min_rest_frames}): a window ends on that many rest frames")
        conflict(self.confidence_threshold <= self.max_threshold, f"confidence_threshold "
                 f"({self.confidence_threshold}) must be at most max_threshold ({self.max_threshold})")
        conflict(self.min_hand_visibility < 1, f"min_hand_visibility ({self.min_hand_visibility}) must be below 1: a "
                 "frame must show more than this fraction of the hand points to start a sign")
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
    sign or ``"NONE"``. ``alternatives`` are the top-k classes with their calibrated probabilities, best
    first (the candidate included). :meth:`to_dict` gives the original's wire keys and all of these.
    """

    label: str | None = None
    confidence: float = 0.0  # the candidate's confidence after calibration and vote (compared to the threshold)
    alternatives: list[tuple[str, float]] = field(default_factory=list)
    accepted: bool = False
    state: str = IDLE  # the pipeline's state after this frame
    frames: int = 0  # frames in the window given to the model (or recorded so far, while recording)
    latency_ms: float | None = None  # this frame arriving -> this prediction (stream only)
    candidate: str | None = None  # top-1 class, before the threshold
    probability: float = 0.0  # top-1 probability after the temperature, before calibration and vote
    margin: float = 0.0  # top-1 minus top-2 probability
    threshold: float | None = None  # the effective threshold: max(adaptive, class threshold)
    adaptive_threshold: float | None = None
    class_threshold: float | None = None  # the model file's threshold for the candidate, if it has one
    flags: tuple[str, ...] = ()  # why the threshold was raised: low_visibility, low_motion, poor/fair_tracking
    rejected_by: str = ""  # "threshold", "none_class" or "calibration" when label is "NONE"
    votes: int = 0  # predictions in the agreeing run the vote used
    reason: str = ""  # why the sign ended: "rest", "max_frames", "flush"; "clip" for process_sequence
    motion: float = 0.0  # this frame's motion energy
    frame_index: int = -1  # index of this frame in the stream (0-based, valid frames only)
    start_frame: int = -1  # stream index of the window's first frame (after trimming)
    features_ms: float | None = None  # resample + enrich of the window
    inference_ms: float | None = None  # the backend's run()
    sentence: tuple[str, ...] = ()  # the sentence buffer after this prediction
    diagnostics: dict[str, Any] | None = None  # the original's traces and counters, see _classify (signs only)

    @property
    def ended(self) -> bool:
        """True on the frame that ended a sign (accepted or not)."""
        return self.label is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the original's wire keys (``prediction``, ``confidence``, ``alternatives`` as
        ``[{"sign", "confidence"}]`` without the top-1, ``sentence_buffer``, ``is_sentence_complete``,
        ``decision_diagnostics``, ``latency_ms``), then this project's fields (``label``, ``accepted``,
        ``candidate``, ``candidate_confidence``, ``top_k`` as ``[{"label", "probability"}]``, ...)."""
        if self.ended:
            wire_label = self.label
        else:
            wire_label = RECORDING_LABEL if self.state == RECORDING else NONE_LABEL
        d: dict[str, Any] = {
            "prediction": wire_label,
            "confidence": round(self.confidence, 3) if self.accepted else 0.0,
            "alternatives": [{"sign": lab, "confidence": round(p, 3)} for lab, p in self.alternatives[1:]
                             if lab not in NONE_CLASS_LABELS] if self.ended else [],
            "sentence_buffer": " ".join(self.sentence),
            "is_sentence_complete": False,  # the original never set it either
            "decision_diagnostics": {
                "adaptive_threshold": self.adaptive_threshold, "class_threshold": self.class_threshold,
                "effective_threshold": self.threshold, "flags": list(self.flags), "rejected_by": self.rejected_by,
                **(self.diagnostics or {}),
            } if self.ended else None,
            "latency_ms": self.latency_ms,
        }
        rich = asdict(self)
        for key in ("confidence", "alternatives", "latency_ms", "diagnostics"):
            rich.pop(key)
        rich.update(candidate_confidence=self.confidence, flags=list(self.flags), sentence=list(self.sentence),
                    ended=self.ended, top_k=[{"label": lab, "probability": p} for lab, p in self.alternatives])
        return {**d, **rich}


@dataclass
class _Quality:
    """What the adaptive threshold and the calibration read about the frames around a sign."""

    visibility: float  # mean visibility of the recent frames
    motion: float  # mean motion energy of the recent frames
    tracking: float  # the frontend's confidence on the last frame (1 when not sent)
    last_motion: float  # motion energy of the frame that ended the sign


@dataclass
class PendingSign:
    """A sign that ended on a frame of :meth:`SignFlowInferencePipeline.process_frame_deferred`, waiting for its
    model call: ``features``/``mask`` ([seq_len, 469], [seq_len]) are the model's input for it. A server that
    batches sign ends across streams stacks several of them into one call and hands each stream its row of
    logits (:meth:`SignFlowInferencePipeline.complete`, :func:`signflow_zoo.serve.batching.infer_pending`)."""

    features: np.ndarray
    mask: np.ndarray
    quality: _Quality
    reason: str
    motion: float
    frame_index: int
    start_frame: int
    frames: int
    features_ms: float


class SignFlowInferencePipeline:
    """Streaming (``process_frame``) and whole-clip (``process_sequence``) recognition over one backend.

    ``SignFlowInferencePipeline(model_path, backend=None, config=None, registry=None)`` loads the model
    file itself (see :func:`~signflow_zoo.serve.modelfile.plan_backend`; ``registry`` is a
    :class:`~signflow_zoo.plugins.PluginRegistry`, the process-wide one by default); :meth:`from_runner`
    wraps a runner that is already prepared.

    **A model file without metadata** (exported the original SignFlow way: one input, no labels) is served
    with ``labels=``: a list of labels in output order, or the path of a labels file (a JSON list, or one
    label per line). Given labels replace the file's own and must be as many as the model's outputs.
    ``calibration={"temperature": T, "thresholds": [...] or {label: t}}`` replaces the file's calibration
    (both keys optional).

    **Threads.** One pipeline is one stream: its frames must come in order, from one source. It may be shared by
    several threads (a web server's workers): ``process_frame``, ``flush``, ``process_sequence``, ``reset`` and
    ``close`` hold the pipeline's lock, so calls are serialized, each sees the state the previous one left, and no
    frame is lost or counted twice; but frames of several streams sent to one pipeline are still mixed into one
    stream. For parallel streams make one pipeline per stream (:meth:`spawn`). Calls into the runner are
    serialized too, by a lock a pipeline shares with the pipelines spawned from it, so a stateful runner (one
    that keeps buffers or sessions between calls) is never entered by two threads at once.
    """

    def __init__(self, model_path: str | Path, backend: str | None = None, config: PipelineConfig | None = None,
                 options: RunnerOptions | None = None, registry=None, *,
                 labels: Sequence[str] | str | Path | None = None, calibration: Mapping[str, Any] | None = None):
        from signflow_zoo.plugins import get_registry

        config = (config or PipelineConfig()).validate()
        registry = registry if registry is not None else get_registry()
        plan = plan_backend(model_path, backend, registry, labels=labels, calibration=calibration)
        notes = list(plan.notes)
        if plan.info.default_labels:
            last = len(plan.info.labels) - 1
            notes.append(f"{plan.model_file}: the model file carries the default labels '0'..'{last}', not sign "
                         "names; export it with `export_to_onnx(model, path, labels=[...])` (or `signflow-zoo export`, "
                         "which writes the training labels) to serve real labels")
        for note in notes:
            warnings.warn(note, RuntimeWarning, stacklevel=2)
        runner = registry.get(plan.backend).cls(options or RunnerOptions(threads=config.threads))
        try:
            runner.prepare(plan.artifacts)
        except SignFlowError:
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin's own failure, named with the file
            raise BackendError(f"backend {plan.backend!r} could not load {plan.model_file}: "
                               f"{type(exc).__name__}: {exc}") from exc
        self.model_path: Path | None = plan.model_file
        self.notes: list[str] = notes
        self._owns_runner = True
        try:
            self._setup(runner, plan.info, config, plan.meta)
        except BaseException:
            runner.close()  # e.g. the warm-up found logits that do not match the labels
            raise

    @classmethod
    def from_runner(cls, runner: Runner, labels: Sequence[str], config: PipelineConfig | None = None,
                    meta: Mapping[str, Any] | None = None) -> "SignFlowInferencePipeline":
        """A pipeline over a runner that is already prepared (the harness's); it is not closed by us.
        ``meta`` may carry ``seq_len``, ``calibration_temperature`` and ``class_thresholds``, checked as a
        model file's are."""
        self = cls.__new__(cls)
        self.model_path = None
        self.notes = []
        self._owns_runner = False
        meta = dict(meta or {})
        info = serving_info(f"backend {runner.name!r}", {**meta, "labels": [str(x) for x in labels]})
        self._setup(runner, info, (config or PipelineConfig()).validate(), meta)
        return self

    def spawn(self) -> "SignFlowInferencePipeline":
        """Another pipeline on the same (already loaded) runner, with its own state: one per stream, so
        several users can be served by one model. The runner stays owned by this pipeline."""
        other = self.__class__.__new__(self.__class__)
        other.model_path, other.notes, other._owns_runner = self.model_path, list(self.notes), False
        other._setup(self.runner, self.info, replace(self.config, warmup=False), self.meta)
        other.backend_name = self.backend_name
        other._run_lock = self._run_lock  # one runner, one lock: its calls from every stream are serialized
        return other

    def _setup(self, runner: Runner, info: ServingInfo, config: PipelineConfig, meta: dict[str, Any]) -> None:
        if not getattr(runner, "prepared", False):
            raise BackendError(f"backend {runner.name!r}: the runner must be prepared before building a pipeline")
        if getattr(runner, "input_dim", FEATURE_DIM) != FEATURE_DIM:
            raise ModelFileError(f"{self._source(runner)}: the model reads {runner.input_dim} features per frame; this "
                                 f"pipeline computes {FEATURE_DIM} ({FEATURE_VERSION})")
        self._lock = threading.RLock()  # this pipeline's stream state (see the class docstring, "Threads")
        self._defer = False  # inside process_frame_deferred: a sign that ends is returned pending
        self._run_lock = threading.Lock()  # calls into the runner; shared with the pipelines spawn() makes
        self.runner = runner
        self.backend_name = runner.name
        self.info = info
        self.labels = list(info.labels)
        self.config = config
        self.meta = meta
        self.seq_len = int(config.seq_len or info.seq_len)
        self.temperature = float(config.temperature or info.calibration_temperature or 1.0)
        self.class_thresholds = info.class_thresholds
        self._none_class = np.array([lab in NONE_CLASS_LABELS for lab in self.labels])
        self._history: deque[tuple[str, float]] = deque(maxlen=config.vote_window)
        self._sentence: list[str] = []
        self.reset()
        if config.warmup:
            self._warmup()

    def _source(self, runner: Runner | None = None) -> str:
        """How messages name the model: its file, else the backend."""
        return str(self.model_path) if self.model_path else f"backend {(runner or self.runner).name!r}"

    def _warmup(self) -> None:
        feats = np.zeros((1, self.seq_len, FEATURE_DIM), np.float32)
        mask = np.ones((1, self.seq_len), bool)
        try:
            with self._run_lock:
                out = np.asarray(self.runner.run(feats, mask))
        except SignFlowError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. ONNX Runtime rejecting the graph at run time
            why = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            error = ModelFileError if self.model_path else BackendError
            raise error(f"{self._source()}: the model failed on a test input [1, {self.seq_len}, {FEATURE_DIM}] "
                        f"({why})") from None
        if out.shape != (1, len(self.labels)):
            error = ModelFileError if self.model_path else BackendError
            raise error(f"{self._source()}: the model returns logits of shape {list(out.shape)} for one input, "
                        f"expected [1, {len(self.labels)}] (one per label)")

    # -- state ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the current recording, the recent frames, the vote history and the sentence."""
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        self.state = IDLE
        self._buf = np.zeros((min(self.config.max_sign_frames, 256), RAW_DIM), dtype=np.float32)
        self._n = 0
        self._recorded = 0
        self._rest = 0
        self._start = -1
        self._recent: deque[np.ndarray] = deque(maxlen=self.config.preroll_frames)
        self._prev_hands: FrameHands | None = None
        self._visibility: deque[float] = deque(maxlen=self.seq_len)
        self._motions: deque[float] = deque(maxlen=self.seq_len)
        self._tracking = 1.0
        self._last_motion = 0.0
        self._frame_index = -1
        self._counters = dict.fromkeys(DECISION_COUNTERS, 0)  # the original's, for the stream since the last reset
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
                "preset": self.info.preset or None, "classes": len(self.labels), "seq_len": self.seq_len,
                "temperature": self.temperature, "class_thresholds": self.class_thresholds is not None,
                "default_labels": self.info.default_labels, "notes": list(self.notes),
                "runner": self.runner.describe(), "config": self.config.to_dict()}

    def close(self) -> None:
        with self._lock, self._run_lock:
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
        tracking = 1.0 if info.confidence is None else info.confidence
        with self._lock:  # one frame at a time, whatever the thread
            pred = self._step(row, tracking)
        pred.latency_ms = (time.perf_counter() - t0) * 1e3
        return pred

    def process_frame_deferred(self, payload: Any) -> "Prediction | PendingSign":
        """:meth:`process_frame` without the model call: a frame that ends a sign returns its :class:`PendingSign`
        (the stream's state machine has moved on; its decision waits for :meth:`complete`), every other frame
        its :class:`Prediction`, as :meth:`process_frame`. For servers that batch the model calls of several
        streams; complete a stream's pending signs in the order they ended (the vote reads them in order)."""
        t0 = time.perf_counter()
        row, info = parse_payload(payload)
        tracking = 1.0 if info.confidence is None else info.confidence
        with self._lock:
            self._defer = True
            try:
                out: Prediction | PendingSign = self._step(row, tracking)
            finally:
                self._defer = False
        if isinstance(out, Prediction):
            out.latency_ms = (time.perf_counter() - t0) * 1e3
        return out

    def complete(self, pending: PendingSign, logits: Any, inference_ms: float | None = None) -> Prediction:
        """The decision on a :class:`PendingSign` of this pipeline, given its logits (one row, one per label)."""
        row = np.asarray(logits, dtype=np.float64).reshape(-1)
        if row.shape != (len(self.labels),):
            raise BackendError(f"{self._source()}: logits of shape {list(np.shape(logits))} for a pending sign, "
                               f"expected [{len(self.labels)}] (one per label)")
        with self._lock:
            pred = self._decide(row, pending.frames, pending.quality, pending.reason, True, pending.features_ms,
                                inference_ms)
        pred.motion, pred.frame_index, pred.start_frame = pending.motion, pending.frame_index, pending.start_frame
        return pred

    def flush(self) -> Prediction | None:
        """End the current recording now (end of stream): its prediction when one was recording and it
        has at least ``min_sign_frames`` frames, else None (a too-short recording is dropped)."""
        with self._lock:
            return self._flush()

    def _flush(self) -> Prediction | None:
        if self.state != RECORDING:
            return None
        if self._recorded < self.config.min_sign_frames:
            self._end_recording()
            return None
        t0 = time.perf_counter()
        pred = self._finish("flush", self._last_motion)
        pred.latency_ms = (time.perf_counter() - t0) * 1e3
        return pred

    def _frame_visibility(self, row: np.ndarray, tracking: float) -> float:
        """The original's per-frame hand visibility, lowered when the frontend's tracking is poor."""
        v = float(visibility(row))
        floor = self.config.tracking_confidence_floor
        if tracking < floor:
            v = max(0.0, v - 0.8 * (floor - tracking))
        return v

    def _push(self, row: np.ndarray) -> None:
        if self._n == len(self._buf):
            grown = np.zeros((min(2 * len(self._buf), self.config.max_sign_frames), RAW_DIM), np.float32)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n] = row
        self._n += 1

    def _step(self, row: np.ndarray, tracking: float) -> Prediction:
        cfg = self.config
        self._frame_index += 1
        hands, prev = FrameHands(row), self._prev_hands
        motion = 0.0 if prev is None else prev.motion_to(hands, cfg.ignore_tracking_jumps)
        self._prev_hands = hands
        vis = self._frame_visibility(row, tracking)
        self._visibility.append(vis)
        self._motions.append(motion)
        self._tracking, self._last_motion = tracking, motion
        if self.state == IDLE:
            if motion > cfg.motion_threshold and vis > cfg.min_hand_visibility:
                self._n = 0
                self._start = self._frame_index - len(self._recent)
                for old in self._recent:
                    self._push(old)
                self._recent.clear()
                self._push(row)
                self.state, self._recorded, self._rest = RECORDING, 1, 0
            else:
                self._recent.append(row)
            return Prediction(state=self.state, frames=self._n if self.state == RECORDING else 0, motion=motion,
                              frame_index=self._frame_index, sentence=tuple(self._sentence))
        self._push(row)
        self._recorded += 1
        self._rest = self._rest + 1 if motion < cfg.motion_threshold else 0
        if self._rest >= cfg.min_rest_frames and self._recorded >= cfg.min_sign_frames:
            return self._finish("rest", motion)
        if self._n >= cfg.max_sign_frames:
            return self._finish("max_frames", motion)
        return Prediction(state=RECORDING, frames=self._n, motion=motion, frame_index=self._frame_index,
                          sentence=tuple(self._sentence))

    def _end_recording(self) -> None:
        self.state, self._n, self._recorded, self._rest = IDLE, 0, 0, 0
        self._recent.clear()
        self._prev_hands = None  # the original cleared its frame buffer: the next frame has no motion

    def _window(self) -> tuple[np.ndarray, int]:
        """The recorded window trimmed as the original trims it, and its first frame's stream index."""
        n, rest = self._n, self._rest
        if rest > 0 and n > rest + max(2, self.config.min_sign_frames // 2):
            n -= rest - min(rest, self.config.trailing_rest_kept)
        window = self._buf[:n]
        active = np.flatnonzero(np.abs(normalized_hands(window)).mean(axis=1) > _ACTIVE_HANDS)
        first = 0
        if active.size:
            first, last = max(0, int(active[0]) - 1), min(n, int(active[-1]) + 2)
            window = window[first:last]
        return window.copy(), self._start + first

    def _finish(self, reason: str, motion: float) -> Prediction:
        window, start = self._window()
        quality = _Quality(visibility=float(np.mean(self._visibility)), motion=float(np.mean(self._motions)),
                           tracking=self._tracking, last_motion=self._last_motion)
        self._end_recording()  # before inference: a failing backend leaves a clean IDLE state
        if self._defer:  # process_frame_deferred: the model call is the caller's (batched across streams)
            t1 = time.perf_counter()
            feats, mask = prepare_clip(window, self.seq_len)
            return PendingSign(feats, mask, quality, reason, motion, self._frame_index, start, len(window),  # type: ignore[return-value]
                               (time.perf_counter() - t1) * 1e3)
        pred = self._classify(window, quality, reason, vote=True)
        pred.motion, pred.frame_index, pred.start_frame = motion, self._frame_index, start
        return pred

    # -- whole clips ----------------------------------------------------------------------------
    def process_sequence(self, clip, confidence: float | None = None) -> Prediction:
        """Classify one whole clip: raw [F, 225], or landmark arrays as a mapping with ``left``, ``right``,
        ``pose`` ([F, 21, 3], [F, 21, 3], [F, 33 or 30, 3], None for a missing part) or a tuple of the
        three. No state machine, no vote, no sentence: the pipeline's streaming state is not touched.
        The clip is its own window for the threshold (its mean visibility and motion); ``confidence`` is
        the frontend's tracking confidence for the clip, if known.
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
        tracking = 1.0 if confidence is None else float(confidence)
        vis, mean_motion, last_motion = clip_quality(raw, self.config.ignore_tracking_jumps)
        floor = self.config.tracking_confidence_floor
        if tracking < floor:
            vis = max(0.0, vis - 0.8 * (floor - tracking))
        quality = _Quality(visibility=vis, motion=mean_motion, tracking=tracking, last_motion=last_motion)
        with self._lock:
            pred = self._classify(raw, quality, "clip", vote=False)
        pred.start_frame = 0
        return pred

    # -- decision -------------------------------------------------------------------------------
    def _logits(self, feats: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with self._run_lock:
            out = np.asarray(self.runner.run(feats, mask))
        if out.ndim != 2 or out.shape != (feats.shape[0], len(self.labels)):
            raise BackendError(f"{self._source()}: backend {self.backend_name!r} returned logits of shape "
                               f"{list(out.shape)}, expected [{feats.shape[0]}, {len(self.labels)}] (one per label)")
        return out

    def threshold_for(self, hand_visibility: float, tracking_confidence: float | None,
                      motion: float) -> tuple[float, tuple[str, ...]]:
        """The adaptive threshold for frames of these qualities, and why it was raised."""
        cfg = self.config
        t, flags = cfg.confidence_threshold, []
        if hand_visibility < max(VISIBILITY_FLOOR, cfg.min_hand_visibility + VISIBILITY_MARGIN):
            t += cfg.low_visibility_penalty
            flags.append("low_visibility")
        if motion < cfg.min_motion_energy:
            t += cfg.low_motion_penalty
            flags.append("low_motion")
        tracking = 1.0 if tracking_confidence is None else tracking_confidence
        if tracking < cfg.tracking_confidence_floor:
            t += cfg.poor_tracking_penalty
            flags.append("poor_tracking")
        elif tracking < cfg.fair_tracking_confidence:
            t += cfg.fair_tracking_penalty
            flags.append("fair_tracking")
        return min(t, cfg.max_threshold), tuple(flags)

    def calibrated_confidence(self, probs: np.ndarray, last_motion: float) -> tuple[float, float]:
        """(confidence, top-2 margin) of a probability vector, as the original calibrates it."""
        cfg = self.config
        top2 = np.sort(probs)[-2:] if len(probs) > 1 else np.array([0.0, probs[0]])
        p, margin = float(top2[-1]), float(max(0.0, top2[-1] - top2[-2]))
        confidence = p
        if cfg.calibrate_confidence:
            entropy = -float(np.sum(probs * np.log(probs + 1e-12)))
            certainty = 1.0 - min(1.0, entropy / math.log(max(len(probs), 2)))
            motion_factor = min(1.0, max(0.0, last_motion / max(cfg.min_motion_energy, 1e-6)))
            confidence = 0.58 * p + 0.24 * margin + 0.10 * certainty + 0.08 * motion_factor
            if last_motion < cfg.min_motion_energy:
                confidence *= LOW_MOTION_FACTOR
        if margin < cfg.min_prediction_margin:
            confidence *= margin / cfg.min_prediction_margin
        return min(1.0, max(0.0, confidence)), margin

    def _classify(self, window: np.ndarray, q: _Quality, reason: str, vote: bool) -> Prediction:
        """One window -> the decision. Its ``diagnostics`` (merged into ``decision_diagnostics`` on the wire) are
        the original's (118fad0, ``_infer_complete_sign``): ``prediction_before_filters``, the inference stage's
        trace (status "candidate", or "rejected" at stage "labeling" for a "NONE" class / "calibration" for a
        confidence <= 0); ``filter_trace``, the vote and threshold stage's ("accepted", or "rejected" with its
        reason); ``counters``, the stream's decision counters since the last reset (:data:`DECISION_COUNTERS`;
        for ``process_sequence``, this one decision's). Values are not rounded (the original rounded to 4
        places) and there are no test-time views (``view_disagreement`` 0, ``rejected_by_tta_disagreement``
        0). Departures: the original built ``prediction_before_filters`` after its filters had overwritten the
        trace, so it repeated ``filter_trace``; here it is the trace its name says. And the original counted a
        "NONE"-class or calibration rejection twice (again as ``rejected_by_calibration`` and in
        ``rejected_total`` at its filter stage); here every decision counts once.
        """
        t1 = time.perf_counter()
        feats, mask = prepare_clip(window, self.seq_len)
        t2 = time.perf_counter()
        logits = self._logits(feats[None], mask[None])[0].astype(np.float64)
        t3 = time.perf_counter()
        return self._decide(logits, len(window), q, reason, vote, (t2 - t1) * 1e3, (t3 - t2) * 1e3)

    def _decide(self, logits: np.ndarray, frames: int, q: _Quality, reason: str, vote: bool, features_ms: float,
                inference_ms: float | None) -> Prediction:
        """The decision on one window's logits (float64, one per label): :meth:`_classify` after the model."""
        cfg = self.config
        if not np.all(np.isfinite(logits)):
            raise BackendError(f"backend {self.backend_name!r} returned non-finite logits (NaN or inf)")
        z = logits / self.temperature
        z = np.exp(z - z.max())
        probs = z / z.sum()
        top = np.argsort(-probs, kind="stable")[: min(cfg.top_k, len(probs))]
        alternatives = [(self.labels[i], float(probs[i])) for i in top]
        best = int(top[0])
        candidate, p = alternatives[0]
        confidence, margin = self.calibrated_confidence(probs, q.last_motion)

        adaptive, flags = self.threshold_for(q.visibility, q.tracking, q.motion)
        class_t = None if self.class_thresholds is None else self.class_thresholds[best]
        threshold = max(adaptive, class_t or 0.0)
        votes, rejected_by = 0, ""
        count = dict.fromkeys(DECISION_COUNTERS, 0)
        count["total_inferences"] = 1
        count["rejected_by_margin"] = int(margin < cfg.min_prediction_margin)
        count["rejected_by_motion"] = int(cfg.calibrate_confidence and q.last_motion < cfg.min_motion_energy)
        calibrated = confidence
        before: dict[str, Any] = {"status": "candidate", "stage": "post_inference", "prediction": candidate,
                                  "raw_confidence": float(p), "calibrated_confidence": calibrated,
                                  "view_disagreement": 0.0, "top2_margin": margin}
        if self._none_class[best]:
            rejected_by = "none_class"
            count["rejected_by_label_none"] = 1
            before = {"status": "rejected", "stage": "labeling", "reason": "model_predicted_none_class",
                      "calibrated_confidence": calibrated}
        elif confidence <= 0.0:
            rejected_by = "calibration"
            count["rejected_by_calibration"] = 1
            before = {"status": "rejected", "stage": "calibration", "reason": "calibrated_confidence_non_positive",
                      "raw_confidence": float(p), "calibrated_confidence": calibrated, "view_disagreement": 0.0}
        if rejected_by:
            trace: dict[str, Any] = {"status": "rejected", "stage": "filters",
                                     "reason": "prediction_none_or_non_positive_confidence",
                                     "confidence": calibrated if rejected_by == "none_class" else 0.0,
                                     "threshold": float(threshold)}
        else:
            votes, smoothed = 1, confidence
            if vote:
                if self._history and self._history[-1][0] != candidate:
                    self._history.clear()
                self._history.append((candidate, confidence))
                votes = len(self._history)
                smoothed = float(np.mean([c for _, c in self._history]))
                confidence = max(confidence, smoothed)
            if confidence < threshold:
                rejected_by = "threshold"
                count["rejected_by_confidence_threshold"] = 1
                count["rejected_by_adaptive_threshold"] = int(threshold > cfg.confidence_threshold)
                count["rejected_by_class_threshold"] = int(class_t is not None and 0 < class_t <= threshold)
                trace = {"status": "rejected", "stage": "filters", "reason": "below_effective_threshold",
                         "prediction": candidate, "confidence": float(confidence), "smoothed_confidence": smoothed,
                         "threshold": float(threshold)}
            else:
                trace = {"status": "accepted", "stage": "filters", "prediction": candidate,
                         "confidence": float(confidence), "threshold": float(threshold), "smoothed_label": candidate,
                         "smoothed_confidence": smoothed}
        accepted = not rejected_by
        count["accepted" if accepted else "rejected_total"] = 1
        if vote:  # the stream's counters; a clip (process_sequence) reports its own decision's alone
            for key, n in count.items():
                self._counters[key] += n
            count = dict(self._counters)
        diagnostics = {"prediction_before_filters": before, "filter_trace": trace, "counters": count}
        if vote and accepted and (not self._sentence or self._sentence[-1] != candidate):
            self._sentence.append(candidate)
            del self._sentence[:-cfg.sentence_max_words]
        return Prediction(
            label=candidate if accepted else NONE_LABEL, confidence=float(confidence), alternatives=alternatives,
            accepted=accepted, state=self.state, frames=frames, candidate=candidate, probability=float(p),
            margin=margin, threshold=float(threshold), adaptive_threshold=float(adaptive), class_threshold=class_t,
            flags=flags, rejected_by=rejected_by, votes=votes, reason=reason, features_ms=features_ms,
            inference_ms=inference_ms, sentence=tuple(self._sentence), diagnostics=diagnostics,
        )


__all__ = ["PipelineConfig", "PipelineConfigError", "Prediction", "PendingSign", "SignFlowInferencePipeline", "plan_backend",
           "read_model_metadata", "motion_profile", "NONE_LABEL", "RECORDING_LABEL", "MAX_SIGN_FRAMES"]
