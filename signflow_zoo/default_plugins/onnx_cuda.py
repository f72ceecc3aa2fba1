"""onnx-cuda: the plain exported graph on ONNX Runtime's CUDA provider, only where it truly binds."""

from __future__ import annotations

import numpy as np

from signflow_zoo.hookspecs import hookimpl

from .ort_common import OrtRunner


class OnnxCudaRunner(OrtRunner):
    name = "onnx-cuda"
    artifact = "onnx"
    provider = "CUDAExecutionProvider"
    precision = "tf32"  # ORT's CUDA provider may use TF32 math on Ampere+: parity allows for it
    device_kind = "gpu"
    summary = "ONNX Runtime, CUDA provider (onnxruntime-gpu build), plain export"

    def infer(self, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        # session.run copies inputs to the device and results back, and returns after the device is done.
        return self.session.run(None, {"features": features, "mask": mask})[0]

    def describe(self) -> dict:
        d = super().describe()
        opts = self.session.get_provider_options().get(self.provider, {})
        d["device_id"] = opts.get("device_id")
        return d


@hookimpl
def register_runners(register):
    register(OnnxCudaRunner)
