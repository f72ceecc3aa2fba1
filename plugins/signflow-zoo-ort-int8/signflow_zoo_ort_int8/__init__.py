"""onnx-int8: ONNX Runtime on CPU with dynamic int8 quantization of the MatMul weights.

A third-party-style plugin: installed with pip, found through the `signflow_zoo` entry-point group and
built on the public API only. The quantized graph is an artifact kind of its own, ``onnx-int8-dynamic``:
signflow-zoo builds it from the plain ONNX export once and caches it by the source file's hash.

Weights in 7 bits (``reduce_range``) on CPUs without VNNI: there ONNX Runtime's u8s8 kernels multiply with
VPMADDUBSW, whose 16-bit intermediate sums saturate with 8-bit weights (ONNX Runtime's quantization docs).
Measured on `large` on an AVX2-only AMD EPYC (Zen 3): top-1 agreement with fp32 0.785 with 8-bit weights,
0.984 with ``reduce_range`` at the same speed. On CPUs with VNNI 8-bit weights are exact and kept. The choice
is a host choice of the artifact kind: part of its cache key and recorded with it.
"""

from __future__ import annotations

from typing import Any

from signflow_zoo.api import ArtifactKind, BuildContext, OrtRunner, cpu_flags, hookimpl

OP_TYPES = ["MatMul", "Gemm"]
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


class OnnxInt8Dynamic(ArtifactKind):
    name = "onnx-int8-dynamic"
    source = "onnx"
    version = "1"  # bump when build() changes: cached graphs are then rebuilt
    main_file = "model.onnx"

    @classmethod
    def host_choices(cls) -> dict[str, Any]:
        return {"reduce_range": not any(f in cpu_flags() for f in VNNI_FLAGS)}

    def build(self, ctx: BuildContext) -> dict[str, Any]:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        reduce_range = bool(ctx.host_choices.get("reduce_range", False))
        quantize_dynamic(str(ctx.source), str(ctx.dest / self.main_file), weight_type=QuantType.QInt8,
                         op_types_to_quantize=OP_TYPES, reduce_range=reduce_range)
        return {"weight_type": "QInt8", "op_types": OP_TYPES, "reduce_range": reduce_range}


class OnnxInt8Runner(OrtRunner):
    name = "onnx-int8"
    artifact = OnnxInt8Dynamic.name
    requires = ("onnxruntime", "onnxruntime.quantization")  # the quantizer builds the artifact
    precision = "int8"
    summary = "ONNX Runtime CPU, dynamic int8 quantization (MatMul weights), VNNI where the CPU has it"



@hookimpl
def register_artifact_kinds(register):
    register(OnnxInt8Dynamic)


@hookimpl
def register_runners(register):
    register(OnnxInt8Runner)
