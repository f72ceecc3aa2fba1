"""Artifact kinds: the ONNX export converted to OpenVINO IR, and that IR quantized to int8 by NNCF.

Built once per source file by signflow-zoo (content-addressed, ``ensure_artifact``); runners only read them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from signflow_zoo.api import ArtifactKind, BuildContext

CALIBRATION_CLIPS = 512  # sequences from the training split


class OpenVinoIR(ArtifactKind):
    """fp32 OpenVINO IR (model.xml + model.bin) converted from the plain ONNX export, weights kept fp32."""

    name = "openvino-ir"
    source = "onnx"
    version = "1"
    main_file = "model.xml"

    def build(self, ctx: BuildContext) -> dict[str, Any]:
        import openvino as ov

        t0 = time.perf_counter()
        model = ov.convert_model(str(ctx.source))
        ov.save_model(model, str(ctx.dest / self.main_file), compress_to_fp16=False)
        return {"openvino": ov.get_version(), "seconds": round(time.perf_counter() - t0, 2)}


class OpenVinoInt8IR(ArtifactKind):
    """int8 IR: NNCF post-training quantization of the fp32 IR, calibrated on training batches.

    NNCF's default model type and the PERFORMANCE preset (symmetric activations): with
    ``ModelType.TRANSFORMER`` or the MIXED preset (asymmetric activations), OpenVINO 2026.4's CPU plugin
    crashed (SIGSEGV) compiling the quantized graph of this model. Every built IR is compiled once in a
    child process, so a graph that crashes the compiler fails the build instead of the harness.
    """

    name = "openvino-int8"
    source = "openvino-ir"
    version = "2"
    main_file = "model.xml"
    needs_calibration = True

    def build(self, ctx: BuildContext) -> dict[str, Any]:
        import nncf
        import openvino as ov

        if ctx.calibration is None:
            raise ValueError("openvino-int8 needs calibration batches from the training split")
        t0 = time.perf_counter()
        items = list(ctx.calibration(CALIBRATION_CLIPS))
        dataset = nncf.Dataset(items, lambda item: {"features": item[0], "mask": item[1]})
        model = ov.Core().read_model(str(ctx.source))
        quantized = nncf.quantize(model, dataset, subset_size=len(items), preset=nncf.QuantizationPreset.PERFORMANCE)
        ov.save_model(quantized, str(ctx.dest / self.main_file), compress_to_fp16=False)
        check_compiles(ctx.dest / self.main_file)
        return {"openvino": ov.get_version(), "nncf": nncf.__version__, "preset": "performance",
                "calibration_clips": sum(len(i[0]) for i in items), "seconds": round(time.perf_counter() - t0, 2)}


def check_compiles(path: Path, timeout: float = 300.0) -> None:
    """Compile an IR for the CPU in a child process; raise with the reason if the compiler fails or crashes."""
    code = "import sys, openvino as ov; c = ov.Core(); c.compile_model(c.read_model(sys.argv[1]), 'CPU')"
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        why = f"signal {-proc.returncode}" if proc.returncode < 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"OpenVINO's CPU plugin cannot compile {path.name} ({why})")


KINDS = (OpenVinoIR, OpenVinoInt8IR)
