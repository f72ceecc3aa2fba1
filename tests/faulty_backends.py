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


class FailingAboveBatchOneRunner(OnnxCpuRunner):
    """Runs one sequence at a time only: every batch above 1 (parity's and accuracy's too) raises."""

    name = "test-fail-above-1"

    def infer(self, features, mask):
        if features.shape[0] > 1:
            raise RuntimeError("out of memory at this batch size")
        return super().infer(features, mask)


class BrokenAvailabilityRunner(OnnxCpuRunner):
    name = "test-broken-availability"

    @classmethod
    def availability(cls):
        raise RuntimeError("driver query exploded")


@hookimpl
def register_runners(register):
    for cls in (CrashingRunner, HangingRunner, FailingAtOneBatchRunner, FailingAboveBatchOneRunner,
                BrokenAvailabilityRunner):
        register(cls)
