"""Fixed-shape ONNX graphs and sessions bound to pre-allocated buffers: what CUDA graph capture needs.

Why: ONNX Runtime captures a CUDA graph only when every node runs on the CUDA provider. The exported
graph has dynamic batch and frame axes, so its shape arithmetic (``Shape``, ``Range``,
``ConstantOfShape`` ...) is placed on the CPU and copied over ("Memcpy nodes added"), and capture fails.
Setting the two axes to numbers lets ONNX Runtime's basic optimizations (constant folding, run before
providers are assigned) fold all of that into constants.

Why not an artifact kind per batch size: an artifact kind is built once from its source with no notion of
the batch sizes a run will use, and fixing a shape is a deterministic edit of the (hashed) source graph
that takes milliseconds (no re-export). So a runner derives the fixed graph in memory, per input shape,
the first time it meets that shape (see :class:`BoundSession`), from the artifact it consumes.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from signflow_zoo.api import OrtRunner

# ops that compute on tensor shapes: ORT places them on the CPU provider, which rules out CUDA graph capture
SHAPE_OPS = frozenset({"Shape", "Size", "ConstantOfShape", "Range", "NonZero"})


def fixed_shape_model(model, batch: int, frames: int):
    """A copy of the ONNX ``model`` (inputs ``features`` [B, T, F] and ``mask`` [B, T], or the features alone
    under any name, output [B, C]) with B and T set to ``batch`` and ``frames``; intermediate shape
    annotations are dropped so that ONNX Runtime infers them again from the fixed inputs."""
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    weights = {t.name for t in fixed.graph.initializer}
    for value in fixed.graph.input:
        if value.name in weights:  # an old export listing its weights as inputs
            continue
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, (batch, frames)):
            if dim.HasField("dim_value") and dim.dim_value != size:
                raise ValueError(f"input {value.name!r} of this graph has a fixed size {dim.dim_value} where "
                                 f"{size} was asked; fix shapes on the dynamic-shape export")
            dim.Clear()
            dim.dim_value = size
    for value in fixed.graph.output:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = batch
    del fixed.graph.value_info[:]
    return fixed


def shape_ops_left(model_bytes: bytes) -> Counter:
    """Shape-computing nodes that remain after ONNX Runtime's basic optimizations (on the CPU): empty for a
    graph whose shapes are all fixed; these are the nodes that keep CUDA graph capture from working."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="sfz-fixed-") as tmp:
        out = Path(tmp) / "basic.onnx"
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(out)
        ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
        return Counter(n.op_type for n in onnx.load(str(out)).graph.node if n.op_type in SHAPE_OPS)


class BoundSession:
    """One fixed-shape session whose inputs and output live in buffers allocated once on its device.

    A call copies the batch into the bound input buffers (``OrtValue.update_inplace``), runs the session
    on the binding and copies the logits out. The buffers never move, which is what a captured CUDA graph
    replays against. On the CPU provider the same path runs without a graph (the output buffer is then
    host memory that the next call overwrites, so it is copied).
    """

    def __init__(self, session, ort, device: str, device_id: int, batch: int, frames: int):
        self.session = session
        self.shape = (batch, frames)
        inp = {i.name: i for i in session.get_inputs()}
        feature_name, mask_name = OrtRunner.inputs_of(list(inp))  # a graph without mask: the features alone
        feat = int(inp[feature_name].shape[2])
        classes = int(session.get_outputs()[0].shape[1])
        self.output_name = session.get_outputs()[0].name
        new = ort.OrtValue.ortvalue_from_shape_and_type
        self.features = new([batch, frames, feat], np.float32, device, device_id)
        self.mask = new([batch, frames], np.bool_, device, device_id) if mask_name is not None else None
        self.logits = new([batch, classes], np.float32, device, device_id)
        self.on_host = device == "cpu"
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input(feature_name, self.features)
        if mask_name is not None:
            self.binding.bind_ortvalue_input(mask_name, self.mask)
        self.binding.bind_ortvalue_output(self.output_name, self.logits)

    def load(self, features: np.ndarray, mask: np.ndarray) -> None:
        """Copy a batch into the bound input buffers (without a mask input: masked frames zeroed)."""
        if self.mask is None:
            self.features.update_inplace(np.ascontiguousarray(OrtRunner.zero_masked(features, mask)))
            return
        self.features.update_inplace(np.ascontiguousarray(features))
        self.mask.update_inplace(np.ascontiguousarray(mask))

    def run(self, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        self.load(features, mask)
        self.session.run_with_iobinding(self.binding)
        out = self.logits.numpy()  # a device buffer is copied to a new host array; a host buffer is a view
        return out.copy() if self.on_host else out


def replay_error(bound: BoundSession, features: np.ndarray, mask: np.ndarray, first: np.ndarray) -> tuple[float, float]:
    """Run a different batch (zeros: capture happens on the second run of a CUDA-graph session), then
    ``features`` again; return (how far the second output of ``features`` is from ``first``, how far the
    other batch's output is from ``first``), both scaled by max(|first|, 1).

    A replayed graph that ignored the freshly copied inputs would return the other batch's logits: the
    first number is then as large as the second.
    """
    scale = max(float(np.abs(first).max()), 1.0)
    other = bound.run(np.zeros_like(features), np.ones_like(mask))
    again = bound.run(features, mask)
    return float(np.abs(again - first).max()) / scale, float(np.abs(other - first).max()) / scale
