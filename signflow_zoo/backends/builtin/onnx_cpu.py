"""onnx-cpu: the plain exported graph on ONNX Runtime's CPU provider."""

from signflow_zoo.api import OrtRunner, hookimpl


class OnnxCpuRunner(OrtRunner):
    name = "onnx-cpu"
    artifact = "onnx"
    provider = "CPUExecutionProvider"
    summary = "ONNX Runtime, CPU provider, plain export"


@hookimpl
def register_runners(register):
    register(OnnxCpuRunner)
