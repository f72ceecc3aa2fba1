"""onnx-optimized: the offline-optimized graph (ORT transformer fusions + extended level) on CPU."""

from signflow_zoo.api import OrtRunner, hookimpl


class OnnxOptimizedRunner(OrtRunner):
    name = "onnx-optimized"
    artifact = "onnx-optimized"
    provider = "CPUExecutionProvider"
    summary = "ONNX Runtime, CPU provider, graph optimized offline (fusions saved to disk)"


@hookimpl
def register_runners(register):
    register(OnnxOptimizedRunner)
