"""onnx-static-int8: ONNX Runtime on CPU with static int8 quantization (QDQ), calibrated on training data.

Activations are quantized with ranges measured on training clips (not at run time as in dynamic int8),
so ORT runs whole QDQ chains as integer kernels. Choices, each measured on this project's AMD EPYC:

* uint8 activations x int8 weights: MLAS's u8s8 GEMM; int8 x int8 activations took a path ~15x slower.
* ``reduce_range`` off: VNNI (AVX512-VNNI / AVX-VNNI) has no u8s8 saturation problem; on a CPU without
  VNNI the weights use 7 bits (ORT's advice for AVX2/AVX-512 without VNNI).
* per-channel weight scales (accuracy at no speed cost).
* only MatMul/Gemm whose B is a weight: attention's q k^T and softmax(.) v, the convolution stem, layer
  norms and softmax stay fp32. (ORT's ``MatMulConstBOnly`` option does this only for the QOperator
  format, so the other MatMuls are excluded by name.)
"""

from __future__ import annotations

import time
from typing import Any

from signflow_zoo.api import ArtifactKind, BuildContext, OrtRunner, cpu_flags, hookimpl

CALIBRATION_CLIPS = 512
OP_TYPES = ["MatMul", "Gemm"]
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_has_vnni() -> bool:
    return any(flag in cpu_flags() for flag in VNNI_FLAGS)


def activation_matmuls(path) -> list[str]:
    """Names of the MatMul/Gemm nodes whose B operand is computed from the input (not from weights alone)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constant = {i.name for i in graph.initializer}
    for node in graph.node:  # topological order: a node of constants only (Transpose of a weight) is constant
        if node.op_type == "Constant" or (node.input and all(i in constant for i in node.input if i)):
            constant.update(node.output)
    return [n.name for n in graph.node if n.op_type in OP_TYPES and n.input[1] not in constant]


class OnnxInt8Static(ArtifactKind):
    name = "onnx-int8-static"
    source = "onnx"
    version = "1"
    main_file = "model.onnx"
    needs_calibration = True

    @classmethod
    def host_choices(cls) -> dict[str, Any]:
        return {"reduce_range": not cpu_has_vnni()}

    def build(self, ctx: BuildContext) -> dict[str, Any]:
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)

        if ctx.calibration is None:
            raise ValueError("onnx-int8-static needs calibration batches from the training split")

        class Reader(CalibrationDataReader):
            def __init__(self, batches):
                self.batches = iter(batches)

            def get_next(self):
                item = next(self.batches, None)
                return None if item is None else {"features": item[0], "mask": item[1]}

        t0 = time.perf_counter()
        reduce_range = bool(ctx.host_choices.get("reduce_range", False))
        options = {"ActivationSymmetric": False, "WeightSymmetric": True}
        excluded = activation_matmuls(ctx.source)
        quantize_static(str(ctx.source), str(ctx.dest / self.main_file), Reader(ctx.calibration(CALIBRATION_CLIPS)),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=OP_TYPES, per_channel=True,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded, extra_options=options)
        return {"format": "QDQ", "activations": "uint8 asymmetric", "weights": "int8 symmetric per-channel",
                "reduce_range": reduce_range, "op_types": OP_TYPES, "calibration": "MinMax",
                "calibration_clips": CALIBRATION_CLIPS, "extra_options": options, "float_matmuls": len(excluded),
                "seconds": round(time.perf_counter() - t0, 2)}


class OnnxInt8StaticRunner(OrtRunner):
    name = "onnx-int8-static"
    artifact = OnnxInt8Static.name
    requires = ("onnxruntime", "onnxruntime.quantization")  # the quantizer builds the artifact
    precision = "int8"
    summary = "ONNX Runtime CPU, static int8 (QDQ, u8 activations x s8 per-channel weights) calibrated on training data"



@hookimpl
def register_artifact_kinds(register):
    register(OnnxInt8Static)


@hookimpl
def register_runners(register):
    register(OnnxInt8StaticRunner)
