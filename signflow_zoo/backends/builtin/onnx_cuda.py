"""onnx-cuda backends on ONNX Runtime's CUDA provider, only where it truly binds.

* ``onnx-cuda``: the plain (dynamic-shape) export, ``session.run`` per call.
* ``onnx-cuda-graph`` (tf32) and ``onnx-cuda-graph-fp16`` (the ``onnx-fp16`` artifact: weights and
  arithmetic in float16, inputs and logits still float32/bool): one fixed-shape session per input shape
  (:mod:`.fixed_shapes`), inputs and output bound to buffers allocated once on the GPU (IO binding), and
  ONNX Runtime's CUDA graph capture (``enable_cuda_graph``), so that a call is two copies and one graph
  replay instead of hundreds of kernel launches (batch 1 on a GPU is launch-bound).

Per-shape policy of the graph backends: the first call at a new [batch, frames] shape builds that shape's
session, captures its graph and checks that a replay honours fresh inputs (:func:`.fixed_shapes.replay_error`);
at most ``max_graph_shapes`` shapes (default 8, ``RunnerOptions.extra``) are kept, later new shapes run
on one dynamic-shape session of the same provider and precision without a graph, and ``describe()`` counts
those calls. ``RunnerOptions.extra["graph_shapes"]`` (a list of (batch, frames)) captures shapes at
prepare; by default prepare captures (1, 64) so that a model that cannot be captured is refused there.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np

from signflow_zoo.api import (FEATURE_DIM, Artifacts, ArtifactKind, Availability, BackendError, BackendUnavailable,
                              BuildContext, ModelFileError, OrtRunner, hookimpl, probe_provider)

from signflow_zoo.backends.builtin.fixed_shapes import BoundSession, fixed_shape_model, replay_error, shape_ops_left
from signflow_zoo.backends.builtin.provider_libraries import provider_library_problem

CUDA = "CUDAExecutionProvider"
PROBE_SHAPE = (1, 64)  # batch 1 at the features' window length: the streaming and batch-1 shape
REPLAY_TOLERANCE = 1e-3  # a replay must reproduce the uncaptured run up to this (scaled) error


class OnnxCudaRunner(OrtRunner):
    name = "onnx-cuda"
    artifact = "onnx"
    provider = CUDA
    precision = "tf32"  # ORT's CUDA provider may use TF32 math on Ampere+: parity allows for it
    device_kind = "gpu"  # synchronous: session.run copies results back and returns after the device is done
    summary = "ONNX Runtime, CUDA provider (onnxruntime-gpu build), plain export"

    @classmethod
    def availability(cls) -> Availability:
        return cuda_availability(cls.provider)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        opts = self.session.get_provider_options().get(self.provider, {})
        d["device_id"] = opts.get("device_id")
        return d


def cuda_availability(provider: str) -> Availability:
    """``probe_provider``, and when the provider does not bind, the library it could not load (if that is why)."""
    av = probe_provider(provider)
    if av.ok or "has no" in av.reason:
        return av
    missing = provider_library_problem(provider)
    return Availability.no(f"{av.reason}: {missing}") if missing else av


class OnnxFp16Kind(ArtifactKind):
    """The plain export converted to float16 (weights and arithmetic), inputs and logits kept float32/bool."""

    name = "onnx-fp16"
    source = "onnx"
    version = "1"
    main_file = "model.onnx"

    def build(self, ctx: BuildContext) -> dict[str, Any]:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = onnx.load(str(ctx.source))
        fp16 = convert_float_to_float16(model, keep_io_types=True)
        onnx.save(fp16, str(ctx.dest / self.main_file))
        return {"converter": "onnxruntime.transformers.float16.convert_float_to_float16", "keep_io_types": True,
                "casts_added": sum(n.op_type == "Cast" for n in fp16.graph.node)
                - sum(n.op_type == "Cast" for n in model.graph.node)}


class OnnxCudaGraphRunner(OrtRunner):
    name = "onnx-cuda-graph"
    artifact = "onnx"
    provider = CUDA
    precision = "tf32"
    device_kind = "gpu"
    summary = "ONNX Runtime CUDA provider: a fixed-shape graph per input shape, IO binding, CUDA graph replay"
    provider_options: ClassVar[dict[str, Any]] = {"use_tf32": "1"}
    capture: ClassVar[bool] = True  # CUDA graphs; a CPU-provider subclass runs the same path without them
    MAX_GRAPH_SHAPES: ClassVar[int] = 8

    @classmethod
    def availability(cls) -> Availability:
        return cuda_availability(cls.provider)

    def prepare(self, artifacts: Artifacts) -> None:
        import onnx
        import onnxruntime as ort

        av = self.availability()
        if not av:
            raise BackendUnavailable(av.reason)
        self.ort = ort
        self.path = artifacts.path_for(self.artifact)
        try:
            self.model = onnx.load(str(self.path))
        except Exception as exc:  # noqa: BLE001 - protobuf raises several types
            raise ModelFileError(f"{self.path}: not a loadable ONNX model ({str(exc)[:200]}); "
                                 "re-export it with `signflow-zoo export`") from None
        self.device = "cpu" if self.provider == "CPUExecutionProvider" else "cuda"
        dev = self.options.device or ""
        self.device_id = int(dev.split(":", 1)[1]) if ":" in dev else 0
        extra = self.options.extra or {}
        self.max_shapes = int(extra.get("max_graph_shapes", self.MAX_GRAPH_SHAPES))
        self.graphs: dict[tuple[int, int], BoundSession] = {}
        self.built: dict[str, dict[str, Any]] = {}
        self.general = None
        self.general_calls = 0
        weights = {t.name for t in self.model.graph.initializer}
        graph_inputs = {i.name: i for i in self.model.graph.input if i.name not in weights}
        self.input_names = self.inputs_of(list(graph_inputs), self.path)  # a graph without mask: features alone
        dims = graph_inputs[self.input_names[0]].type.tensor_type.shape.dim
        feat = dims[2] if len(dims) == 3 else None
        self.input_dim = int(feat.dim_value) if feat is not None and feat.HasField("dim_value") else FEATURE_DIM
        rng = np.random.default_rng(0)
        for b, t in [tuple(s) for s in extra.get("graph_shapes", [PROBE_SHAPE])]:
            x = rng.standard_normal((b, t, self.input_dim)).astype(np.float32)
            self._capture((b, t), x, np.ones((b, t), bool))
        if not self.graphs:  # no shape asked for: still open a session now, to refuse a CPU fallback here
            self.general = self._session(self.model.SerializeToString(), graph=False)

    # -- sessions ------------------------------------------------------------------------------------
    def _session(self, model_bytes: bytes, graph: bool):
        so = self.session_options()
        opts = {**self.provider_options, "device_id": str(self.device_id)} if self.device == "cuda" else {}
        if graph and self.capture:
            opts["enable_cuda_graph"] = "1"  # ORT refuses it at session creation if a node is not on CUDA
        providers = [(self.provider, opts)] + ([("CPUExecutionProvider", {})] if self.device == "cuda" else [])
        try:  # enable_fallback=0: ORT's Python layer would otherwise retry a failed session on other providers
            sess = self.ort.InferenceSession(model_bytes, so, providers=providers, enable_fallback=0)
        except Exception as exc:  # noqa: BLE001 - ORT raises several types; the reason is the message
            if graph and self.capture:
                raise BackendUnavailable(capture_refusal(exc, model_bytes)) from None
            raise BackendError(f"{self.path}: ONNX Runtime could not open the {'fixed-shape ' if graph else ''}graph "
                               f"on {self.provider}: {str(exc).splitlines()[0][:300]}") from None
        bound = sess.get_providers()
        if bound[0] != self.provider:
            raise BackendUnavailable(f"ONNX Runtime bound {bound[0]} instead of {self.provider}; "
                                     f"refusing to report a CPU run as {self.name}")
        live = sess.get_provider_options().get(self.provider, {})
        if graph and self.capture and live.get("enable_cuda_graph") != "1":
            raise BackendUnavailable(f"ONNX Runtime opened the session without CUDA graphs (enable_cuda_graph="
                                     f"{live.get('enable_cuda_graph')!r}); refusing to time it as {self.name}")
        return sess

    def _capture(self, shape: tuple[int, int], features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Build, bind and capture the session of one shape; check the replay; return its first output."""
        b, t = shape
        t0 = time.perf_counter()
        fixed = fixed_shape_model(self.model, b, t).SerializeToString()
        bound = BoundSession(self._session(fixed, graph=True), self.ort, self.device, self.device_id, b, t)
        first = bound.run(features, mask)
        err, spread = replay_error(bound, features, mask, first)
        if err > REPLAY_TOLERANCE:
            raise BackendError(f"{self.name}: the graph captured for shape {b}x{t} does not reproduce its first run "
                               f"(scaled error {err:.2e} > {REPLAY_TOLERANCE:g}); a replay ignored the fresh inputs")
        self.graphs[shape] = bound
        self.built[f"{b}x{t}"] = {"seconds": round(time.perf_counter() - t0, 3), "replay_error": err,
                                  "replay_check": "ok" if spread > 10 * REPLAY_TOLERANCE else
                                  "inconclusive (a zero batch gave nearly the same logits)"}
        return first

    # -- runner --------------------------------------------------------------------------------------
    def infer(self, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        shape = (int(features.shape[0]), int(features.shape[1]))
        bound = self.graphs.get(shape)
        if bound is not None:
            return bound.run(features, mask)
        if len(self.graphs) < self.max_shapes:
            return self._capture(shape, features, mask)
        if self.general is None:
            self.general = self._session(self.model.SerializeToString(), graph=False)
        self.general_calls += 1
        return self.general.run(None, self.feeds(features, mask))[0]

    def effective_precision(self) -> dict[str, str]:
        """Read back from a live session (the fixed-shape ones hold the same weights) and the graph in memory."""
        sess = next(iter(self.graphs.values())).session if self.graphs else self.general
        assert sess is not None  # prepare() opened a session, with a graph or without
        return self.session_precision(sess, self.model, self.provider)

    def describe(self) -> dict[str, Any]:
        sess = next(iter(self.graphs.values())).session if self.graphs else self.general
        assert sess is not None  # prepare() opened a session, with a graph or without
        so = sess.get_session_options()
        opts = sess.get_provider_options().get(self.provider, {})
        return {
            "backend": self.name, "precision": self.precision, "provider": sess.get_providers()[0],
            "providers": sess.get_providers(), "threads": so.intra_op_num_threads or "default",
            "onnxruntime": self.ort.__version__, "model": self.path.name, "spinning": self._spinning(so),
            "device_id": opts.get("device_id", self.device_id), "cuda_graph": opts.get("enable_cuda_graph") == "1",
            "use_tf32": opts.get("use_tf32"), "io_binding": f"buffers on {self.device}",
            "fixed_shapes": dict(self.built), "max_graph_shapes": self.max_shapes,
            "calls_without_graph": self.general_calls,
        }

    def close(self) -> None:
        self.graphs.clear()
        self.general = None


class OnnxCudaGraphFp16Runner(OnnxCudaGraphRunner):
    name = "onnx-cuda-graph-fp16"
    artifact = "onnx-fp16"
    precision = "fp16"
    provider_options: ClassVar[dict[str, Any]] = {}
    summary = "onnx-cuda-graph on the float16 graph (onnx-fp16: float32 inputs and logits)"


def capture_refusal(exc: BaseException, model_bytes: bytes) -> str:
    """Why a CUDA-graph session could not be created, with the shape ops that kept nodes off the GPU."""
    msg = str(exc).splitlines()[0][:300]
    try:
        left = shape_ops_left(model_bytes)
    except Exception:  # noqa: BLE001 - the ORT message alone still says why
        left = None
    where = (f"; shape computations left on the CPU: {', '.join(f'{op} x{n}' for op, n in sorted(left.items()))}"
             if left else "")
    return f"CUDA graph capture is impossible for this graph: {msg}{where}"


@hookimpl
def register_artifact_kinds(register):
    register(OnnxFp16Kind)


@hookimpl
def register_runners(register):
    register(OnnxCudaRunner)
    register(OnnxCudaGraphRunner)
    register(OnnxCudaGraphFp16Runner)
