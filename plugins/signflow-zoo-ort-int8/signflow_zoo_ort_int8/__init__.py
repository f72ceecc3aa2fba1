"""onnx-int8: ONNX Runtime on CPU with dynamic int8 quantization of the MatMul weights.

A third-party-style plugin: installed with pip, found through the `signflow_zoo` entry-point group,
registered through the public hook. The quantized graph is derived from the plain ONNX artifact on
first use and cached next to it, keyed by the source file's hash.
"""

from __future__ import annotations

from pathlib import Path

from signflow_zoo import hookimpl
from signflow_zoo.default_plugins.ort_common import OrtRunner
from signflow_zoo.export import quiet_logs, file_sha256
from signflow_zoo.runners import Availability


class OnnxInt8Runner(OrtRunner):
    name = "onnx-int8"
    artifact = "onnx"
    precision = "int8"
    summary = "ONNX Runtime CPU, dynamic int8 quantization (MatMul weights), VNNI where the CPU has it"

    @classmethod
    def availability(cls) -> Availability:
        try:
            from onnxruntime.quantization import quantize_dynamic  # noqa: F401
        except ImportError as exc:
            return Availability.no(f"onnxruntime.quantization is not importable: {exc}")
        return super().availability()

    def prepare(self, artifacts) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        src = artifacts.path_for("onnx")
        digest = artifacts.hashes.get("onnx") or file_sha256(src)
        folder = Path(artifacts.workdir or src.parent)
        dst = folder / f"model.int8.{digest[:12]}.onnx"
        if not dst.is_file():
            tmp = dst.with_suffix(".tmp.onnx")
            with quiet_logs():  # the quantizer logs advice through the root logger
                quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
            tmp.replace(dst)
        self.quantized_path = dst
        quantized = type(artifacts)(**{**artifacts.__dict__, "onnx": dst})
        super().prepare(quantized)


@hookimpl
def register_runners(register):
    register(OnnxInt8Runner)
