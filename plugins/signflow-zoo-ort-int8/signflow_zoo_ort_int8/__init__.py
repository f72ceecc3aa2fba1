"""onnx-int8: ONNX Runtime on CPU with dynamic int8 quantization of the MatMul weights.

A third-party-style plugin: installed with pip, found through the `signflow_zoo` entry-point group and
built on the public API only. The quantized graph is an artifact kind of its own, ``onnx-int8-dynamic``:
signflow-zoo builds it from the plain ONNX export once and caches it by the source file's hash.
"""

from __future__ import annotations

from typing import Any

from signflow_zoo.api import ArtifactKind, Availability, BuildContext, OrtRunner, hookimpl

OP_TYPES = ["MatMul", "Gemm"]


class OnnxInt8Dynamic(ArtifactKind):
    name = "onnx-int8-dynamic"
    source = "onnx"
    version = "1"  # bump when build() changes: cached graphs are then rebuilt
    main_file = "model.onnx"

    def build(self, ctx: BuildContext) -> dict[str, Any]:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(ctx.source), str(ctx.dest / self.main_file), weight_type=QuantType.QInt8,
                         op_types_to_quantize=OP_TYPES)
        return {"weight_type": "QInt8", "op_types": OP_TYPES}


class OnnxInt8Runner(OrtRunner):
    name = "onnx-int8"
    artifact = OnnxInt8Dynamic.name
    precision = "int8"
    summary = "ONNX Runtime CPU, dynamic int8 quantization (MatMul weights), VNNI where the CPU has it"

    @classmethod
    def availability(cls) -> Availability:
        try:
            from onnxruntime.quantization import quantize_dynamic  # noqa: F401 - builds the artifact
        except ImportError as exc:
            return Availability.no(f"onnxruntime.quantization is not importable: {exc}")
        return super().availability()


@hookimpl
def register_artifact_kinds(register):
    register(OnnxInt8Dynamic)


@hookimpl
def register_runners(register):
    register(OnnxInt8Runner)
