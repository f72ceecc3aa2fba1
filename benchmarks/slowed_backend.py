"""A deliberately slowed onnx-cpu (each call busy-waits 40% longer), to prove the gate bites.

Load it in place of the built-in: ``SIGNFLOW_ZOO_BLOCK_PLUGINS=onnx_cpu SIGNFLOW_ZOO_PLUGINS=slowed_backend``
(with ``benchmarks/`` on ``PYTHONPATH``).
"""

import time

from signflow_zoo.api import OrtRunner, hookimpl

SLOWDOWN = 0.40


class SlowedOnnxCpuRunner(OrtRunner):
    name = "onnx-cpu"
    artifact = "onnx"
    provider = "CPUExecutionProvider"
    summary = "onnx-cpu plus a 40% busy-wait per call (gate self-test)"

    def infer(self, features, mask):
        t0 = time.perf_counter()
        out = super().infer(features, mask)
        until = t0 + (time.perf_counter() - t0) * (1 + SLOWDOWN)
        while time.perf_counter() < until:
            pass
        return out


@hookimpl
def register_runners(register):
    register(SlowedOnnxCpuRunner)
