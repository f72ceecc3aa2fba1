"""The Runner interface every backend implements, and the artifacts a runner consumes.

The harness, not the runner, owns timing: a runner only prepares a session and runs batches.
Lifecycle: ``cls.availability()`` (cheap, honest; the modules the class ``requires`` are checked first) ->
``runner = cls(options)`` -> ``runner.prepare(artifacts)`` (may raise :class:`BackendUnavailable` after checking
what it really got) -> ``runner.run(features, mask)`` many times -> ``runner.close()``.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from signflow_zoo.common.errors import BackendError, InputError
from signflow_zoo.backends.parity import TOLERANCES, Tolerance
from signflow_zoo.common.tensors import FEATURE_DIM, check_input

# Made by signflow_zoo.backends.artifacts.build_artifacts; plugins add their own kinds (signflow_zoo.backends.kinds).
BUILTIN_ARTIFACT_KINDS = ("torch", "onnx", "onnx-optimized")


# How to install a module a runner ``requires`` (by its top-level name): what the module is, and the pip command.
INSTALL_HINTS: dict[str, tuple[str, str]] = {
    "torch": ("PyTorch", "pip install torch (the CPU or a CUDA build: see pytorch.org)"),
    "onnxruntime": ("ONNX Runtime", "pip install onnxruntime, or onnxruntime-gpu for the CUDA and TensorRT providers"),
    "onnx": ("", "pip install onnx"),
    "triton": ("", "pip install triton"),
    "openvino": ("OpenVINO", "pip install openvino"),
    "nncf": ("", "pip install nncf"),
}


class BackendUnavailable(BackendError):
    """The backend cannot run here; the message is the reason shown to the user."""


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""
    broken: bool = False  # the plugin itself failed (availability() raised): listed as a broken plugin

    def __bool__(self) -> bool:
        return self.ok

    @classmethod
    def yes(cls, detail: str = "") -> "Availability":
        return cls(True, detail)

    @classmethod
    def no(cls, reason: str) -> "Availability":
        return cls(False, reason)

    @classmethod
    def error(cls, reason: str) -> "Availability":
        return cls(False, reason, broken=True)


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
    info: dict[str, Any] = field(default_factory=dict)  # export / optimize reports; kind -> build record
    paths: dict[str, Path] = field(default_factory=dict)  # kinds registered by plugins -> main file

    def path_for(self, kind: str) -> Path:
        builtin = {"torch": self.checkpoint, "onnx": self.onnx, "onnx-optimized": self.onnx_optimized}
        path = builtin[kind] if kind in builtin else self.paths.get(kind)
        if path is None or not Path(path).is_file():
            how = "" if kind in builtin else " (a plugin's artifact kind is built by ensure_artifact)"
            raise BackendError(f"artifact {kind!r} of preset {self.preset!r} has not been built{how}")
        return Path(path)

    def torch_model(self, device: str = "cpu"):
        """The PyTorch model from the weights-only checkpoint."""
        from signflow_zoo.model.checkpoint import load_checkpoint

        model, _ = load_checkpoint(self.path_for("torch"), map_location=device)
        return model


class Runner:
    """Base class of every backend. Subclasses set the class attributes and implement the methods.

    ``requires``: the modules that must import for the backend to run, e.g. ``("torch",)``. They are checked
    before the class's own ``availability()`` (also when a subclass overrides it): one that does not import
    makes the backend unavailable, with a reason naming the module, the import error and how to install it
    (:data:`INSTALL_HINTS`), so ``availability()`` need not repeat ``try: import ...``.

    ``effective_precision()``: after ``prepare()``, the precision and device that really run, read back from the
    session or compiled model (``{"precision": "bf16", "device": "cpu", "how": "..."}``), which may differ from
    the declared ``precision`` (OpenVINO computes in bf16 on a CPU with AVX512_BF16 or AMX unless asked for f32;
    an ONNX Runtime session may fall back to the CPU provider). Precision names are those of
    :data:`~signflow_zoo.backends.parity.TOLERANCES` (``fp32``, ``tf32``, ``fp16``, ``bf16``, ``int8``), devices
    those of ``device_kind``; ``how`` says what was read. The default returns the declaration, and says so: a
    runner that can read back what it runs overrides it. A difference is recorded, not an error.
    """

    name: ClassVar[str] = ""  # unique backend name, e.g. "onnx-cpu"
    artifact: ClassVar[str] = "onnx"  # the artifact kind it consumes: built-in or registered by a plugin
    precision: ClassVar[str] = "fp32"  # arithmetic precision: drives the parity tolerance
    tolerance: ClassVar[Tolerance | None] = None  # required for a precision outside parity.TOLERANCES only
    device_kind: ClassVar[str] = "cpu"  # "cpu" or "gpu": what hardware it runs on
    requires: ClassVar[tuple[str, ...]] = ()  # modules that must import for it to run, checked before availability()
    summary: ClassVar[str] = ""  # one line for `signflow-zoo backends`
    # Set by prepare() where they differ: run() may return before the device is done (the harness then
    # calls synchronize()); the feature width the model expects.
    asynchronous: bool = False
    input_dim: int = FEATURE_DIM

    def __init__(self, options: RunnerOptions | None = None):
        self.options = options or RunnerOptions()
        self.prepared = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's prepare() marks the runner prepared when it returns, so a plugin need not."""
        super().__init_subclass__(**kwargs)
        if "prepare" in cls.__dict__:
            cls.prepare = _marks_prepared(cls.__dict__["prepare"])  # type: ignore[method-assign]
        if isinstance(cls.__dict__.get("availability"), classmethod):  # its own check runs after ``requires``
            cls.availability = _checks_requires(cls.__dict__["availability"].__func__)  # type: ignore[method-assign]

    # -- to implement ------------------------------------------------------------------------
    @classmethod
    def availability(cls) -> Availability:
        """Whether this backend can run on this machine, or the reason it cannot. Cheap; no model needed.

        The modules in ``requires`` are checked first (here, and before an override's own checks)."""
        missing = missing_requirement(cls)
        return missing if missing is not None else Availability.yes()

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
    def run(self, features: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Validate the batch, then run it. Wrong shapes and dtypes raise :class:`InputError`."""
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

    def effective_precision(self) -> dict[str, str]:
        """What really runs, after ``prepare()``: ``{"precision", "device", "how"}`` (see the class docstring).

        This default returns the declared ``precision`` and ``device_kind``; override it to read them back."""
        return {"precision": self.precision, "device": self.device_kind,
                "how": "declared by the runner (it does not read back what ran)"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def missing_requirement(cls: type[Runner]) -> Availability | None:
    """``Availability.no`` naming the first module of ``cls.requires`` that does not import (the error, and how to
    install it); None when they all import."""
    modules = cls.requires
    for module in (modules,) if isinstance(modules, str) else modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            what, install = INSTALL_HINTS.get(module.partition(".")[0], ("", ""))
            name = f"{what} ({module})" if what else module
            how = install or f"install the package that provides the module {module!r}"
            return Availability.no(f"{name} is not importable: {exc}; {how}")
    return None


def _checks_requires(availability):
    """A subclass's own ``availability`` (the function under its classmethod), run after the ``requires`` check."""

    @functools.wraps(availability)
    def checked(cls: type[Runner]) -> Availability:
        missing = missing_requirement(cls)
        return missing if missing is not None else availability(cls)

    return classmethod(checked)


def _marks_prepared(prepare):
    @functools.wraps(prepare)
    def marked(self: Runner, *args: Any, **kwargs: Any) -> None:
        try:
            prepare(self, *args, **kwargs)
        except BaseException:
            self.prepared = False  # also when a subclass fails after its base's prepare() succeeded
            raise
        self.prepared = True

    return marked


def validate_runner_class(cls: Any, kinds: tuple[str, ...] | list[str] = BUILTIN_ARTIFACT_KINDS) -> None:
    """Raise :class:`BackendError` naming what is wrong with a class offered to ``register_runners``."""
    if not (isinstance(cls, type) and issubclass(cls, Runner)):
        raise BackendError(f"register() expects a Runner subclass, got {cls!r}")
    if not isinstance(cls.name, str) or not cls.name:
        raise BackendError(f"Runner class {cls.__qualname__} has no name")
    if cls.artifact not in kinds:
        raise BackendError(f"backend {cls.name!r}: artifact must be one of {', '.join(kinds)}, got {cls.artifact!r}")
    requires = cls.requires
    if not isinstance(requires, (tuple, list)) or not all(isinstance(m, str) and m.strip() for m in requires):
        raise BackendError(f"backend {cls.name!r}: requires must be a tuple of module names such as (\"torch\",), "
                           f"got {requires!r}")
    if not isinstance(cls.precision, str) or not cls.precision:
        raise BackendError(f"backend {cls.name!r}: precision must be a name such as fp32, got {cls.precision!r}")
    if cls.precision in TOLERANCES:
        if cls.tolerance is not None:
            raise BackendError(f"backend {cls.name!r}: precision {cls.precision!r} has a fixed parity tolerance; "
                               "declare a precision of your own to set one")
    elif not _valid_tolerance(cls.tolerance):
        raise BackendError(f"backend {cls.name!r}: precision {cls.precision!r} is not one of {', '.join(TOLERANCES)}; "
                           "declare its parity tolerance: tolerance = Tolerance(max_error > 0 or None, 0 <= min_top1 <= 1), "
                           f"got {cls.tolerance!r}")


def _valid_tolerance(tol: Any) -> bool:
    if not (isinstance(tol, tuple) and len(tol) == 2 and isinstance(tol[1], (int, float)) and 0 <= tol[1] <= 1):
        return False
    return tol[0] is None or (isinstance(tol[0], (int, float)) and tol[0] > 0)
