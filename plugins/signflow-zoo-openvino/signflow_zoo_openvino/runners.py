"""OpenVINO CPU runners: one compiled model per runner, tuned for latency (one stream, pinned threads)."""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

import numpy as np

from .kinds import OpenVinoInt8IR, OpenVinoIR
from signflow_zoo.api import Availability, Runner

# OpenVINO element types (Type.get_type_name()) -> the precision names of signflow-zoo's parity tolerances
OV_PRECISIONS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "i8": "int8", "u8": "int8"}
# the layers of a compiled model's runtime graph that hold the arithmetic: their runtimePrecision is what ran
COMPUTE_LAYERS = frozenset({"FullyConnected", "MatMul", "Convolution", "GroupConvolution", "Deconvolution"})


def compiled_precision(compiled: Any) -> dict[str, str]:
    """What a compiled OpenVINO model really runs, as ``Runner.effective_precision`` returns it.

    Read back from the compiled model, not from what was asked: ``INFERENCE_PRECISION_HINT`` (OpenVINO's CPU
    plugin computes in bf16 on a CPU with AVX512_BF16 or AMX unless asked for f32, and in f32 where bf16 was asked
    but the CPU has neither), ``EXECUTION_DEVICES``, and the runtime precision of its matmul and convolution
    layers: ``int8`` when some run quantized (an int8 IR: FakeQuantize), the rest's precision then in ``how``."""
    get = compiled.get_property
    hint = get("INFERENCE_PRECISION_HINT").get_type_name()
    devices = [str(d) for d in get("EXECUTION_DEVICES")]
    layers: Counter = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) in COMPUTE_LAYERS and "runtimePrecision" in info:
            layers[info["runtimePrecision"].astype(str)] += 1
    rest = OV_PRECISIONS.get(hint, hint)
    quantized = layers["i8"] + layers["u8"]
    ran = ", ".join(f"{n} {p}" for p, n in sorted(layers.items())) or "none found"
    how = (f"OpenVINO compiled model: INFERENCE_PRECISION_HINT={hint}, EXECUTION_DEVICES={','.join(devices)}; "
           f"matmul/convolution layers: {ran}")
    if quantized:
        how += f"; int8 where quantized ({quantized} of {sum(layers.values())} layers), the rest {rest}"
    kinds = {d.split(".")[0].split(":")[0].upper() for d in devices}
    device = "gpu" if kinds == {"GPU"} else "cpu" if kinds <= {"CPU"} else ",".join(sorted(kinds)).lower()
    return {"precision": "int8" if quantized else rest, "device": device, "how": how}


class OpenVinoRunner(Runner):
    """Compiles an IR kind with PERFORMANCE_HINT=LATENCY, one stream, the harness's thread count, pinned."""

    artifact = OpenVinoIR.name
    requires: ClassVar[tuple[str, ...]] = ("openvino",)  # checked before availability(), with the pip command in the reason
    inference_precision: ClassVar[str] = "f32"

    @classmethod
    def availability(cls) -> Availability:
        import openvino as ov  # importable: ``requires`` is checked first

        try:
            caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        except Exception as exc:  # noqa: BLE001 - no CPU plugin is a reason, not a crash
            return Availability.no(f"OpenVINO has no usable CPU device: {str(exc).splitlines()[0][:200]}")
        if cls.inference_precision == "bf16" and "BF16" not in caps:
            return Availability.no("this CPU has no bf16 support in OpenVINO (needs AVX512_BF16 or AMX); "
                                   "OpenVINO would compute in fp32")
        return Availability.yes(f"OpenVINO {ov.get_version()} CPU ({', '.join(caps)})")

    def config(self) -> dict[str, Any]:
        cfg = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "ENABLE_CPU_PINNING": True,
               "INFERENCE_PRECISION_HINT": self.inference_precision}
        if self.options.threads:
            cfg["INFERENCE_NUM_THREADS"] = int(self.options.threads)
        return cfg

    def prepare(self, artifacts) -> None:
        import openvino as ov

        self.ov = ov
        self.path = artifacts.path_for(self.artifact)
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU", self.config())
        self.request = self.compiled.create_infer_request()
        self.input_dim = int(self.compiled.inputs[0].get_partial_shape()[2].get_length())
        self.prepared = True

    def infer(self, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = self.request.infer({"features": features, "mask": mask}, share_inputs=True, share_outputs=False)
        return np.asarray(out[0], dtype=np.float32)

    def effective_precision(self) -> dict[str, str]:
        """Read back from the compiled model (:func:`compiled_precision`): what ran, whatever was asked."""
        return compiled_precision(self.compiled)

    def describe(self) -> dict[str, Any]:
        get = self.compiled.get_property
        return {"backend": self.name, "precision": self.precision, "provider": "openvino-CPU",
                "openvino": self.ov.get_version(), "threads": get("INFERENCE_NUM_THREADS"),
                "inference_precision": get("INFERENCE_PRECISION_HINT").get_type_name(), "streams": get("NUM_STREAMS"),
                "performance_hint": str(get("PERFORMANCE_HINT")), "cpu_pinning": get("ENABLE_CPU_PINNING"),
                "model": f"{self.artifact}/{self.path.name}"}

    def close(self) -> None:
        self.request = self.compiled = None


class OpenVinoFp32Runner(OpenVinoRunner):
    name = "openvino-fp32"
    precision = "fp32"
    summary = "OpenVINO CPU, fp32 IR, INFERENCE_PRECISION_HINT=f32 (OpenVINO's default on bf16 CPUs is bf16)"


class OpenVinoBf16Runner(OpenVinoRunner):
    name = "openvino-bf16"
    precision = "bf16"
    inference_precision = "bf16"
    summary = "OpenVINO CPU, fp32 IR computed in bf16 (INFERENCE_PRECISION_HINT=bf16, AVX512_BF16/AMX)"


class OpenVinoInt8Runner(OpenVinoRunner):
    name = "openvino-int8"
    precision = "int8"
    artifact = OpenVinoInt8IR.name
    requires = ("openvino", "nncf")  # nncf quantizes the int8 IR
    # The layers NNCF leaves in float run in fp32, not bf16: with bf16, OpenVINO's per-layer counters showed
    # 47% of large's batch-1 time in Reorder (bf16 <-> int8 conversions) around the int8 GEMMs; with f32
    # those reorders disappeared and the int8 GEMMs took 60% of the time (benchmarks/RESULTS.md).
    inference_precision = "f32"
    summary = "OpenVINO CPU, NNCF int8 post-training quantization calibrated on training data (rest fp32)"


RUNNERS = (OpenVinoFp32Runner, OpenVinoBf16Runner, OpenVinoInt8Runner)
