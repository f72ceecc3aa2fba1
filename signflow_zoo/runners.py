"""The Runner interface every backend implements, and the artifacts a runner consumes.

The harness, not the runner, owns timing: a runner only prepares a session and runs batches.
Lifecycle: ``cls.availability()`` (cheap, honest) -> ``runner = cls(options)`` ->
``runner.prepare(artifacts)`` (may raise :class:`BackendUnavailable` after checking what it really got)
-> ``runner.run(features, mask)`` many times -> ``runner.close()``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .errors import BackendError, InputError

ARTIFACT_KINDS = ("torch", "onnx", "onnx-optimized")
PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8")


class BackendUnavailable(BackendError):
    """The backend cannot run here; the message is the reason shown to the user."""


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok

    @classmethod
    def yes(cls, detail: str = "") -> "Availability":
        return cls(True, detail)

    @classmethod
    def no(cls, reason: str) -> "Availability":
        return cls(False, reason)


@dataclass
class RunnerOptions:
    threads: int | None = None  # intra-op threads; None = the runtime's default
    device: str | None = None  # e.g. "cpu", "cuda", "cuda:1"; None = the runner's default
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Artifacts:
    """What one zoo entry has been turned into. Paths exist once the harness built them."""

    preset: str
    num_classes: int
    labels: list[str]
    model_kwargs: dict[str, Any]
    checkpoint: Path | None = None  # weights-only PyTorch checkpoint
    onnx: Path | None = None  # plain export (dynamic batch and frames)
    onnx_optimized: Path | None = None  # derived optimized graph
    workdir: Path | None = None  # where a runner may cache its own derived files
    hashes: dict[str, str] = field(default_factory=dict)  # kind -> sha256
    info: dict[str, Any] = field(default_factory=dict)  # export / optimize reports

    def path_for(self, kind: str) -> Path:
        path = {"torch": self.checkpoint, "onnx": self.onnx, "onnx-optimized": self.onnx_optimized}.get(kind)
        if kind not in ARTIFACT_KINDS:
            raise BackendError(f"unknown artifact kind {kind!r}; valid kinds: {', '.join(ARTIFACT_KINDS)}")
        if path is None or not Path(path).is_file():
            raise BackendError(f"artifact {kind!r} of preset {self.preset!r} has not been built")
        return Path(path)

    def torch_model(self, device: str = "cpu"):
        """The PyTorch model from the weights-only checkpoint."""
        from .checkpoint import load_checkpoint

        model, _ = load_checkpoint(self.path_for("torch"), map_location=device)
        return model


class Runner:
    """Base class of every backend. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str] = ""  # unique backend name, e.g. "onnx-cpu"
    artifact: ClassVar[str] = "onnx"  # which artifact it consumes: one of ARTIFACT_KINDS
    precision: ClassVar[str] = "fp32"  # arithmetic precision: drives the parity tolerance
    device_kind: ClassVar[str] = "cpu"  # "cpu" or "gpu": what hardware it runs on
    summary: ClassVar[str] = ""  # one line for `signflow-zoo backends`
    asynchronous: bool = False  # True when run() may return before the device is done (harness then syncs)

    def __init__(self, options: RunnerOptions | None = None):
        self.options = options or RunnerOptions()
        self.prepared = False

    # -- to implement ------------------------------------------------------------------------
    @classmethod
    def availability(cls) -> Availability:
        """Whether this backend can run on this machine, or the reason it cannot. Cheap; no model needed."""
        return Availability.yes()

    def prepare(self, artifacts: Artifacts) -> None:
        """Create the session (threads, device, providers) from ``artifacts.path_for(self.artifact)``."""
        raise NotImplementedError

    def infer(self, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Run one validated batch; return float32 logits [batch, classes] as a host array."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for asynchronous device work (no-op for synchronous runners)."""

    def describe(self) -> dict[str, Any]:
        """What a reader of the results must know: provider actually used, threads, versions, precision."""
        return {"backend": self.name, "precision": self.precision}

    def close(self) -> None:
        """Release the session."""

    # -- provided -------------------------------------------------------------------------------
    input_dim: int = 469

    def run(self, features: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Validate the batch, then run it. Wrong shapes and dtypes raise :class:`InputError`."""
        from .model import check_input

        if not self.prepared:
            raise BackendError(f"backend {self.name!r}: call prepare(artifacts) before run()")
        if not isinstance(features, np.ndarray):
            raise InputError(f"features must be a numpy array, got {type(features).__name__}")
        if mask is None:
            mask = np.ones(features.shape[:2], dtype=bool)
        elif not isinstance(mask, np.ndarray):
            raise InputError(f"mask must be a numpy array, got {type(mask).__name__}")
        check_input(features, mask, self.input_dim)
        return self.infer(features, mask)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def validate_runner_class(cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Runner)):
        raise BackendError(f"register() expects a Runner subclass, got {cls!r}")
    if not isinstance(cls.name, str) or not cls.name:
        raise BackendError(f"Runner class {cls.__qualname__} has no name")
    if cls.artifact not in ARTIFACT_KINDS:
        raise BackendError(f"backend {cls.name!r}: artifact must be one of {ARTIFACT_KINDS}, got {cls.artifact!r}")
    if cls.precision not in PRECISIONS:
        raise BackendError(f"backend {cls.name!r}: precision must be one of {PRECISIONS}, got {cls.precision!r}")


def json_safe(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))
