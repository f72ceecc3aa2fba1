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

    NNCF's default model type and the PERFORMANCE preset (symmetric activations); constant lookup tables
    (:func:`constant_tables`) and the head (:func:`head_operations`) stay in float. Every built IR is compiled once in a child process, so a
    graph that crashes the compiler fails the build instead of the harness.
    """

    name = "openvino-int8"
    source = "openvino-ir"
    version = "3"  # 3: constant lookup tables and the head left in float (OpenVINO 2026.4 crashed on the table)
    main_file = "model.xml"
    needs_calibration = True

    def build(self, ctx: BuildContext) -> dict[str, Any]:
        import logging

        import nncf
        import openvino as ov

        nncf.set_log_level(logging.WARNING)  # its per-node INFO lines would drown the bench's own progress
        if ctx.calibration is None:
            raise ValueError("openvino-int8 needs calibration batches from the training split")
        t0 = time.perf_counter()
        items = list(ctx.calibration(CALIBRATION_CLIPS))
        dataset = nncf.Dataset(items, lambda item: {"features": item[0], "mask": item[1]})
        model = ov.Core().read_model(str(ctx.source))
        tables, head = constant_tables(model), head_operations(model)
        quantized = nncf.quantize(model, dataset, subset_size=len(items), preset=nncf.QuantizationPreset.PERFORMANCE,
                                  ignored_scope=nncf.IgnoredScope(names=tables + head))
        ov.save_model(quantized, str(ctx.dest / self.main_file), compress_to_fp16=False)
        check_compiles(ctx.dest / self.main_file)
        return {"openvino": ov.get_version(), "nncf": nncf.__version__, "preset": "performance",
                "float_tables": tables, "float_head_operations": len(head),
                "calibration_clips": sum(len(i[0]) for i in items), "seconds": round(time.perf_counter() - t0, 2)}


GATHERS = ("Gather", "GatherND", "GatherElements")


def constant_tables(model) -> list[str]:
    """Names of the gathers that read a float constant table (the relative-position bias), kept in float.

    NNCF quantizes such a table like an embedding, with one scale per entry. When all entries get the same
    scale (a zero-initialised bias: every untrained model), OpenVINO 2026.4's low-precision
    GatherTransformation takes the [129] scale for a scalar, tries to gather it with indices computed at
    run time, gets no constant back and dereferences it: compile_model dies with SIGSEGV, with every NNCF
    preset and model type. int8 saves nothing on a lookup of 129 numbers.
    """
    return [op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_type_name() in GATHERS and op.input_value(0).get_node().get_type_name() == "Constant"
            and op.input_value(0).get_element_type().is_real()]


def head_operations(model) -> list[str]:
    """Names of the head's operations: every operation the output LayerNorm (the last MVN) does not depend on.

    Masked-mean pooling, the gate MLP, the classifier, the metric projection, the normalization and the
    cosine against the prototypes: 0.05-0.14% of a preset's FLOPs (``estimate_gflops``, 20-100 classes);
    in float they cut int8's largest logit error by a third to a half on the tiny and lightweight models.
    Found by graph structure, so it holds for both ONNX exporters' node names.
    """
    ops = model.get_ordered_ops()
    norms = [op for op in ops if op.get_type_name() == "MVN"]
    if not norms:
        return []
    encoder, stack = set(), [norms[-1]]
    while stack:
        node = stack.pop()
        if node.get_friendly_name() not in encoder:
            encoder.add(node.get_friendly_name())
            stack.extend(node.input_value(i).get_node() for i in range(node.get_input_size()))
    return [op.get_friendly_name() for op in ops
            if op.get_friendly_name() not in encoder and op.get_type_name() not in ("Constant", "Parameter", "Result")]


def check_compiles(path: Path, timeout: float = 300.0) -> None:
    """Compile an IR for the CPU in a child process; raise with the reason if the compiler fails or crashes."""
    code = "import sys, openvino as ov; c = ov.Core(); c.compile_model(c.read_model(sys.argv[1]), 'CPU')"
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        why = f"signal {-proc.returncode}" if proc.returncode < 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"OpenVINO's CPU plugin cannot compile {path.name} ({why})")


KINDS = (OpenVinoIR, OpenVinoInt8IR)
