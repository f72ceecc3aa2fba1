"""onnx-tensorrt: the plain export on ONNX Runtime's TensorRT provider (fp16 engine), only where it truly binds.

onnxruntime-gpu ships the provider library, but TensorRT itself (``libnvinfer``, ``libnvonnxparser`` of
the major version that build was linked against) comes from elsewhere: the pip package
``tensorrt-cu13-libs`` / ``tensorrt-cu12-libs`` (its folder is loaded here when installed) or a system
install on ``LD_LIBRARY_PATH``. Availability says which library is missing.

One engine covers batch 1..``max_batch`` (``RunnerOptions.extra``, default 256) and 2..256 frames
(optimized for [1, 64]); nodes TensorRT does not take run on the CUDA provider. No CUDA graph here
(``trt_cuda_graph_enable`` needs fixed shapes and IO binding, see ``onnx-cuda-graph``). Engines and TensorRT's
timing cache are kept in the artifacts' work folder, so the (minutes-long) build happens once per model.
"""

from __future__ import annotations

import ctypes
import importlib.util
import tempfile
from pathlib import Path
from typing import Any

from signflow_zoo.api import FEATURE_DIM, Artifacts, Availability, BackendUnavailable, OrtRunner, hookimpl, open_session

from signflow_zoo.backends.builtin.onnx_cuda import cuda_availability

TENSORRT = "TensorrtExecutionProvider"
MAX_FRAMES = 256


def preload_tensorrt() -> str:
    """Load the TensorRT libraries of the ``tensorrt_libs`` pip package, if installed; return its folder."""
    spec = importlib.util.find_spec("tensorrt_libs")
    if spec is None or not spec.submodule_search_locations:
        return ""
    folder = Path(next(iter(spec.submodule_search_locations)))
    for lib in sorted(folder.glob("libnvinfer*.so*")) + sorted(folder.glob("libnvonnxparser*.so*")):
        try:
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        except OSError:
            pass  # named by the availability check
    return str(folder)


class OnnxTensorrtRunner(OrtRunner):
    name = "onnx-tensorrt"
    artifact = "onnx"
    provider = TENSORRT
    precision = "fp16"
    device_kind = "gpu"
    summary = "ONNX Runtime TensorRT provider, fp16 engine for batch 1..256 (cached); needs the TensorRT libraries"

    @classmethod
    def availability(cls) -> Availability:
        preload_tensorrt()
        av = cuda_availability(cls.provider)
        if not av and "has no" in av.reason:
            return Availability.no(f"{av.reason}; install onnxruntime-gpu (and the TensorRT libraries it links)")
        return av

    def prepare(self, artifacts: Artifacts) -> None:
        extra = self.options.extra or {}
        max_batch = int(extra.get("max_batch", 256))
        cache = Path(artifacts.workdir or tempfile.gettempdir()) / "tensorrt"
        cache.mkdir(parents=True, exist_ok=True)
        dev = self.options.device or ""
        shapes = {"min": (1, 2), "opt": (1, 64), "max": (max_batch, MAX_FRAMES)}
        profile = {f"trt_profile_{k}_shapes": f"features:{b}x{t}x{FEATURE_DIM},mask:{b}x{t}" for k, (b, t) in shapes.items()}
        # this runner's own options (its device and engine cache), over the class default
        self.provider_options = {  # type: ignore[misc]
            "device_id": int(dev.split(":", 1)[1]) if ":" in dev else 0,
            "trt_fp16_enable": "True", "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache), **profile,
        }
        preload_tensorrt()
        import onnxruntime as ort

        self.ort = ort
        self.path = artifacts.path_for(self.artifact)
        cuda = ("CUDAExecutionProvider", {"device_id": self.provider_options["device_id"]})
        self.session = open_session(self.path, self.session_options(),
                                    [(self.provider, self.provider_options), cuda, ("CPUExecutionProvider", {})])
        bound = self.session.get_providers()
        if bound[0] != self.provider:
            raise BackendUnavailable(f"ONNX Runtime bound {bound[0]} instead of {self.provider}; "
                                     f"refusing to report that run as {self.name}")
        feat = self.session.get_inputs()[0].shape[2]
        self.input_dim = feat if isinstance(feat, int) else FEATURE_DIM

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        opts = self.session.get_provider_options().get(self.provider, {})
        d.update({k: opts.get(k) for k in ("device_id", "trt_fp16_enable", "trt_engine_cache_path",
                                           "trt_profile_max_shapes")})
        return d


@hookimpl
def register_runners(register):
    register(OnnxTensorrtRunner)
