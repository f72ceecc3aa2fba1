"""Throwaway backend plugins that misbehave on purpose, for the harness's isolation tests.

Each wraps onnx-cpu and misbehaves only when it runs a batch of TRIGGER_BATCH sequences, so parity
and accuracy (other batch sizes) pass and the failure hits the timing of that one batch size.
"""

import ctypes
import time

from signflow_zoo.api import OrtRunner, hookimpl


class OnnxCpuRunner(OrtRunner):
    artifact = "onnx"
    provider = "CPUExecutionProvider"

TRIGGER_BATCH = 5


class CrashingRunner(OnnxCpuRunner):
    name = "test-crash"

    def infer(self, features, mask):
        if features.shape[0] == TRIGGER_BATCH:
            ctypes.string_at(0)  # segmentation fault: the worker process dies
        return super().infer(features, mask)


class HangingRunner(OnnxCpuRunner):
    name = "test-hang"

    def infer(self, features, mask):
        if features.shape[0] == TRIGGER_BATCH:
            time.sleep(3600)
        return super().infer(features, mask)


class FailingAtOneBatchRunner(OnnxCpuRunner):
    name = "test-fail-batch"

    def infer(self, features, mask):
        if features.shape[0] == TRIGGER_BATCH:
            raise MemoryError(f"cannot allocate the activations of a batch of {TRIGGER_BATCH}")
        return super().infer(features, mask)


class BrokenAvailabilityRunner(OnnxCpuRunner):
    name = "test-broken-availability"

    @classmethod
    def availability(cls):
        raise RuntimeError("driver query exploded")


@hookimpl
def register_runners(register):
    for cls in (CrashingRunner, HangingRunner, FailingAtOneBatchRunner, BrokenAvailabilityRunner):
        register(cls)
