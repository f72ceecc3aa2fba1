"""onnx-cuda: the plain exported graph on ONNX Runtime's CUDA provider, only where it truly binds."""

from __future__ import annotations

from typing import Any

from signflow_zoo.api import OrtRunner, hookimpl


class OnnxCudaRunner(OrtRunner):
    name = "onnx-cuda"
    artifact = "onnx"
    provider = "CUDAExecutionProvider"
    precision = "tf32"  # ORT's CUDA provider may use TF32 math on Ampere+: parity allows for it
    device_kind = "gpu"  # synchronous: session.run copies results back and returns after the device is done
    summary = "ONNX Runtime, CUDA provider (onnxruntime-gpu build), plain export"

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        opts = self.session.get_provider_options().get(self.provider, {})
        d["device_id"] = opts.get("device_id")
        return d


@hookimpl
def register_runners(register):
    register(OnnxCudaRunner)
