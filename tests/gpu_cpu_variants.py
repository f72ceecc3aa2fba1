"""The GPU graph backends' code path on ONNX Runtime's CPU provider: fixed-shape sessions per input shape,
IO binding to pre-allocated buffers, the replay check; everything but the CUDA graph itself. A plugin
module, so that the harness can run these in its worker processes."""

from signflow_zoo.api import hookimpl
from signflow_zoo.backends.builtin.onnx_cuda import OnnxCudaGraphFp16Runner, OnnxCudaGraphRunner


class CpuGraphRunner(OnnxCudaGraphRunner):
    name = "cpu-graph-test"
    provider = "CPUExecutionProvider"
    precision = "fp32"
    device_kind = "cpu"
    provider_options = {}
    capture = False


class CpuGraphFp16Runner(OnnxCudaGraphFp16Runner):
    name = "cpu-graph-fp16-test"
    provider = "CPUExecutionProvider"
    device_kind = "cpu"
    capture = False


@hookimpl
def register_runners(register):
    register(CpuGraphRunner)
    register(CpuGraphFp16Runner)
