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

import math
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from signflow_zoo.common.errors import ModelFileError
from signflow_zoo.common.onnxrt import open_session
from signflow_zoo.common.tensors import FEATURE_DIM
from signflow_zoo.backends.runner import Artifacts, Availability, BackendUnavailable, Runner

__all__ = ["OrtRunner", "open_session", "probe_provider", "graph_input_names", "zero_masked_frames", "graph_precision",
           "session_precision"]

# Nodes that compute in 8-bit integers (ai.onnx and com.microsoft), besides every ``QLinear*`` op: a graph holding
# one runs int8 arithmetic where it holds it (ONNX Runtime fuses QDQ pairs into integer kernels on the CPU).
INT8_OPS = frozenset({"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat",
                      "DynamicQuantizeMatMul", "QGemm", "QAttention", "QEmbedLayerNormalization", "QOrderedMatMul"})
# the float ops the quantizers replace: how many are left in float is said with an int8 graph
FLOAT_COMPUTE_OPS = ("MatMul", "Gemm", "Conv")
# ONNX tensor element types (onnx.TensorProto) -> the project's precision names (signflow_zoo.backends.parity)
FLOAT_TYPES = {1: ("fp32", "float32"), 10: ("fp16", "float16"), 16: ("bf16", "bfloat16"), 11: ("fp64", "float64")}
# execution providers -> (short name, device kind); one not listed is named by its short name on its own
PROVIDER_DEVICES = {"CPUExecutionProvider": ("cpu", "cpu"), "DnnlExecutionProvider": ("dnnl", "cpu"),
                    "XnnpackExecutionProvider": ("xnnpack", "cpu"), "ACLExecutionProvider": ("acl", "cpu"),
                    "CUDAExecutionProvider": ("cuda", "gpu"), "TensorrtExecutionProvider": ("tensorrt", "gpu"),
                    "ROCMExecutionProvider": ("rocm", "gpu"), "MIGraphXExecutionProvider": ("migraphx", "gpu"),
                    "DmlExecutionProvider": ("directml", "gpu")}


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


def graph_precision(model: Any) -> tuple[str, str]:
    """(precision, what in the graph says so) of an ONNX graph: a ``ModelProto``, or a file (read once without its
    external data, then cached by path, size and modification time).

    ``int8`` when it holds integer ops (:data:`INT8_OPS`, ``QLinear*``: dynamic and static quantization); else the
    float type of most weight elements (float32 -> ``fp32``, float16 -> ``fp16``, bfloat16 -> ``bf16``), or of its
    float inputs when it has no float weights."""
    if isinstance(model, (str, Path)):
        st = Path(model).stat()
        return _file_precision(str(model), st.st_size, st.st_mtime_ns)
    return _model_precision(model)


@lru_cache(maxsize=32)
def _file_precision(path: str, size: int, mtime_ns: int) -> tuple[str, str]:
    import onnx

    return _model_precision(onnx.load(path, load_external_data=False))


def _model_precision(model: Any) -> tuple[str, str]:
    graph = model.graph
    quantized = Counter(n.op_type for n in graph.node if n.op_type in INT8_OPS or n.op_type.startswith("QLinear"))
    if quantized:  # a MatMul fed by DequantizeLinear (QDQ format) runs as an integer kernel: not left in float
        dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        left = sum(n.op_type in FLOAT_COMPUTE_OPS and not dequantized.intersection(n.input) for n in graph.node)
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(quantized.items()))
        return "int8", f"integer ops in the graph ({ops}); {left} {'/'.join(FLOAT_COMPUTE_OPS)} left in float"
    weights: Counter = Counter()
    constants = [a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    for tensor in list(graph.initializer) + constants:
        if tensor.data_type in FLOAT_TYPES:
            weights[tensor.data_type] += math.prod(tensor.dims)
    if weights:
        dtype, n = weights.most_common(1)[0]
        total = sum(weights.values())
        share = "all" if n == total else f"{100 * n / total:.0f}%"
        return FLOAT_TYPES[dtype][0], f"{total:,} float weights, {share} {FLOAT_TYPES[dtype][1]}; no integer ops"
    inputs = [i.type.tensor_type.elem_type for i in graph.input if i.type.tensor_type.elem_type in FLOAT_TYPES]
    if inputs:
        return FLOAT_TYPES[inputs[0]][0], f"no float weights, float inputs {FLOAT_TYPES[inputs[0]][1]}"
    return "fp32", "no float weights or inputs, no integer ops"


def _on(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true")


def _tf32_capable(device_id: Any) -> bool:
    """Whether the CUDA device has TF32 (compute capability 8.0, Ampere, or newer); True when it cannot be told."""
    try:
        import torch

        return torch.cuda.get_device_capability(int(device_id or 0))[0] >= 8
    except Exception:  # noqa: BLE001 - no torch or no CUDA build of it: ORT's flag is all there is to go on
        return True


def session_precision(session: Any, model: Any, asked: str | None = None) -> dict[str, str]:
    """What an ONNX Runtime ``session`` of ``model`` (a path or ``ModelProto``) really runs, as
    :meth:`Runner.effective_precision <signflow_zoo.backends.runner.Runner.effective_precision>` returns it.

    The device is that of the provider the session bound first (``session.get_providers()``: a session asked for
    CUDA may have fallen back to the CPU provider, ``asked``); the precision that of the graph
    (:func:`graph_precision`) as that provider computes it: TF32 on the CUDA provider with ``use_tf32`` (its
    default) on an Ampere or newer GPU, fp16/bf16/int8 on the TensorRT provider when its engine allows them."""
    providers = list(session.get_providers())
    bound = providers[0] if providers else "none"
    short, device = PROVIDER_DEVICES.get(bound, (bound.removesuffix("ExecutionProvider").lower(), ""))
    precision, what = graph_precision(model)
    opts = session.get_provider_options().get(bound, {})
    note = ""
    if bound == "TensorrtExecutionProvider" and precision == "fp32":
        for flag, name in (("trt_int8_enable", "int8"), ("trt_bf16_enable", "bf16"), ("trt_fp16_enable", "fp16")):
            if _on(opts.get(flag)):
                precision, note = name, f"; {flag}=True: TensorRT picks {name} kernels where they are faster"
                break
    elif bound == "CUDAExecutionProvider" and precision == "fp32" and _on(opts.get("use_tf32")) \
            and _tf32_capable(opts.get("device_id")):
        precision, note = "tf32", "; use_tf32=1: float32 matmuls and convolutions in TF32"
    fallback = f" (asked for {asked})" if asked and asked != bound else ""
    return {"precision": precision, "device": device or short,
            "how": f"ONNX Runtime session bound {bound}{fallback}; graph: {what}{note}"}


class OrtRunner(Runner):
    """Base for ONNX Runtime runners: subclasses choose provider and artifact."""

    provider: ClassVar[str] = "CPUExecutionProvider"
    provider_options: ClassVar[dict[str, Any]] = {}
    requires: ClassVar[tuple[str, ...]] = ("onnxruntime",)
    input_names: tuple[str, str | None] | None = None  # (features, mask or None), set by prepare()
    zero_masked = staticmethod(zero_masked_frames)  # for subclasses and plugins feeding a graph without mask
    session_precision = staticmethod(session_precision)  # for subclasses reading back sessions of their own

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

    def effective_precision(self) -> dict[str, str]:
        """Read back from the live session (:func:`session_precision`): the provider it bound and its graph's
        precision. The graph is ``self.path`` (set by our ``prepare()``), else the file the session was opened from."""
        model = getattr(self, "path", None) or getattr(self.session, "_model_path", None)
        if model is None:
            raw = getattr(self.session, "_model_bytes", None)
            if raw is None:
                return {**super().effective_precision(), "how": "declared by the runner (the session's graph is "
                        "neither a file nor bytes that can be read back)"}
            import onnx

            model = onnx.load_model_from_string(raw)
        return self.session_precision(self.session, model, self.provider)

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
