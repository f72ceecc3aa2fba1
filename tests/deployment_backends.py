"""Throwaway backend plugins for the deployment scenarios' tests: onnx-cpu with a fixed extra time per call, or a
slow prepare. The capacity and server searches must fall as the per-call time rises; cold start must count prepare."""

import time

from signflow_zoo.api import OrtRunner, hookimpl

PREPARE_S = 0.6


class _OnnxCpu(OrtRunner):
    artifact = "onnx"
    provider = "CPUExecutionProvider"
    delay_s = 0.0

    def infer(self, features, mask):
        out = super().infer(features, mask)
        if self.delay_s:
            time.sleep(self.delay_s)
        return out


class Delay2Runner(_OnnxCpu):
    name = "test-delay-2ms"
    delay_s = 0.002


class Delay15Runner(_OnnxCpu):
    name = "test-delay-15ms"
    delay_s = 0.015


class SlowPrepareRunner(_OnnxCpu):
    name = "test-slow-prepare"

    def prepare(self, artifacts):
        time.sleep(PREPARE_S)
        super().prepare(artifacts)


@hookimpl
def register_runners(register):
    for cls in (Delay2Runner, Delay15Runner, SlowPrepareRunner):
        register(cls)
