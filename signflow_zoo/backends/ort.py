"""A base for ONNX Runtime backends: session creation and the honest provider check.

The built-in ``onnx-*`` backends and plugins that run an ONNX graph (their own artifact kind, or other
providers) subclass :class:`OrtRunner`; ``onnxruntime`` is imported only when a runner needs it.
``open_session`` lives in :mod:`signflow_zoo.common.onnxrt` (the export uses it too) and is re-exported here.

Graph inputs: signflow-zoo exports take ``features`` and ``mask``; a graph with a single input (the original
SignFlow's export: ``landmarks [batch, frames, 469]``, whatever its name) takes the features alone. It is fed
the features with masked frames set to zero, which is how the original model tells padding from frames
(:func:`graph_input_names`, :meth:`OrtRunner.feeds`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

from signflow_zoo.common.errors import ModelFileError
from signflow_zoo.common.onnxrt import open_session
from signflow_zoo.common.tensors import FEATURE_DIM
from signflow_zoo.backends.runner import Artifacts, Availability, BackendUnavailable, Runner

__all__ = ["OrtRunner", "open_session", "probe_provider", "graph_input_names", "zero_masked_frames"]


def graph_input_names(names: Sequence[str]) -> tuple[str, str | None] | None:
    """(features input, mask input or None) of a graph with these (non-weight) inputs, or None when it is neither
    a signflow-zoo graph (``features`` and ``mask``, or ``features`` alone) nor a one-input graph (the original
    SignFlow's export, ``landmarks``)."""
    names = list(names)
    if "features" in names and set(names) <= {"features", "mask"}:
        return "features", "mask" if "mask" in names else None
    if len(names) == 1:
        return names[0], None
    return None


def zero_masked_frames(features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``features`` with the frames ``mask`` marks invalid set to zero: how a graph without a mask input (the
    original SignFlow model, which treats all-zero frames as padding) is told which frames to ignore."""
    if mask.all():
        return features
    return (features * mask[..., None]).astype(np.float32, copy=False)


@lru_cache(maxsize=None)
def probe_provider(provider: str) -> Availability:
    """Create a tiny session with ``provider`` first and report what ORT really bound.

    ``get_available_providers()`` lists CUDA for the onnxruntime-gpu build even on a machine without
    a GPU; session creation then logs an error and silently runs on CPU. Only ``get_providers()`` on a
    live session tells the truth.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return Availability.no(f"onnxruntime is not importable: {exc}")
    if provider not in ort.get_available_providers():
        return Availability.no(
            f"this onnxruntime build ({ort.__version__}) has no {provider}"
            + ("; install onnxruntime-gpu instead of onnxruntime" if provider == "CUDAExecutionProvider" else "")
        )
    if provider == "CUDAExecutionProvider" and hasattr(ort, "preload_dlls"):
        try:  # finds CUDA/cuDNN libraries shipped with PyTorch or the nvidia-* wheels
            ort.preload_dlls()
        except Exception:  # noqa: BLE001 - session creation below reports the real failure
            pass
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 8)
    so = ort.SessionOptions()
    so.log_severity_level = 4  # the fallback error is what we report ourselves
    try:
        providers = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=providers)
    except Exception as exc:  # noqa: BLE001
        return Availability.no(f"{provider} failed to create a session: {str(exc).splitlines()[0][:200]}")
    bound = sess.get_providers()
    if bound[0] != provider:
        return Availability.no(f"ORT lists {provider} but bound {bound[0]} (no usable device or driver/CUDA libraries)")
    return Availability.yes(f"{provider} bound")


class OrtRunner(Runner):
    """Base for ONNX Runtime runners: subclasses choose provider and artifact."""

    provider: ClassVar[str] = "CPUExecutionProvider"
    provider_options: ClassVar[dict[str, Any]] = {}
    requires: ClassVar[tuple[str, ...]] = ("onnxruntime",)
    input_names: tuple[str, str | None] | None = None  # (features, mask or None), set by prepare()
    zero_masked = staticmethod(zero_masked_frames)  # for subclasses and plugins feeding a graph without mask

    @classmethod
    def availability(cls) -> Availability:
        return probe_provider(cls.provider)

    def session_options(self):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        if self.options.threads:
            so.intra_op_num_threads = int(self.options.threads)
            so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        return so

    def prepare(self, artifacts: Artifacts) -> None:
        import onnxruntime as ort

        self.ort = ort
        path = artifacts.path_for(self.artifact)
        providers = [(self.provider, dict(self.provider_options))]
        if self.provider != "CPUExecutionProvider":
            providers.append(("CPUExecutionProvider", {}))
        self.session = open_session(path, self.session_options(), providers)
        bound = self.session.get_providers()
        if bound[0] != self.provider:
            raise BackendUnavailable(
                f"ONNX Runtime bound {bound[0]} instead of {self.provider}; refusing to report a CPU run as {self.name}"
            )
        self.path = path
        self.input_names = self.inputs_of([i.name for i in self.session.get_inputs()], path)
        inp = next(i for i in self.session.get_inputs() if i.name == self.input_names[0])
        self.input_dim = int(inp.shape[2]) if len(inp.shape) == 3 and isinstance(inp.shape[2], int) else FEATURE_DIM

    @staticmethod
    def inputs_of(names: Sequence[str], source: Any = "the graph") -> tuple[str, str | None]:
        """(features input, mask input or None) of a graph with inputs ``names``: :func:`graph_input_names`, or a
        :class:`ModelFileError` naming ``source`` for a graph that is neither kind."""
        found = graph_input_names(names)
        if found is None:
            raise ModelFileError(f"{source}: the graph takes inputs {sorted(names)}; expected features [batch, frames, "
                                 f"{FEATURE_DIM}] and mask [batch, frames], or the features alone")
        return found

    def feeds(self, features: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """The session inputs for one batch: features and mask, or for a graph without a mask input the features
        with masked frames zeroed (:func:`zero_masked_frames`)."""
        names = self.input_names
        if names is None:  # a subclass whose prepare() did not call ours
            names = self.input_names = self.inputs_of([i.name for i in self.session.get_inputs()],
                                                      getattr(self, "path", "the graph"))
        feature_name, mask_name = names
        if mask_name is None:
            return {feature_name: zero_masked_frames(features, mask)}
        return {feature_name: features, mask_name: mask}

    def infer(self, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.session.run(None, self.feeds(features, mask))[0]

    def describe(self) -> dict[str, Any]:
        so = self.session.get_session_options()
        return {
            "backend": self.name, "precision": self.precision, "provider": self.session.get_providers()[0],
            "providers": self.session.get_providers(), "threads": so.intra_op_num_threads or "default",
            "onnxruntime": self.ort.__version__, "model": self.path.name, "spinning": self._spinning(so),
        }

    @staticmethod
    def _spinning(so) -> str:
        """ONNX Runtime's intra-op thread spinning (on by default): part of its latency, so the harness settles
        it between backends (an idle gap) rather than turning it off; recorded with every result."""
        try:
            value = so.get_session_config_entry("session.intra_op.allow_spinning")
        except Exception:  # noqa: BLE001 - not set: ORT's default
            value = ""
        return {"0": "off", "1": "on"}.get(value, "on (default)")

    def close(self) -> None:
        self.session = None
