"""Where the time goes in one model: per op type and node group (ONNX Runtime's profiler), or per layer
type and kernel (OpenVINO's performance counters).

    python benchmarks/studies/profile_layers.py MODEL.onnx [--batch 1] [--threads 2] [--iters 50]
    python benchmarks/studies/profile_layers.py MODEL.xml --precision bf16    # OpenVINO IR, PERF_COUNT on

Groups, over the graph ORT really runs (its optimized form, saved and read back): weight GEMMs (an operand
is a weight, incl. quantized ones), attention GEMMs (q k^T and p v), softmax, layout ops, the conv stem,
(de)quantization and the rest. Tells how much an attention fusion could save at most.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict

import numpy as np


def profile(path: str, batch: int, threads: int, iters: int, frames: int = 64) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    so.enable_profiling = True
    tmp = tempfile.mkdtemp()
    so.profile_file_prefix = os.path.join(tmp, "ort")
    so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")  # the graph ORT really runs
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    weight_ops = weight_consumers(so.optimized_model_filepath)
    rng = np.random.default_rng(0)
    feeds = {"features": rng.standard_normal((batch, frames, 469)).astype(np.float32),
             "mask": np.ones((batch, frames), bool)}
    for _ in range(5):
        sess.run(None, feeds)
    for _ in range(iters):
        sess.run(None, feeds)
    events = json.load(open(sess.end_profiling()))
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    total_us = sum(e["dur"] for e in runs[-iters:])
    skip = len(nodes) - len(nodes) * iters // (iters + 5)
    by_op: defaultdict[str, float] = defaultdict(float)
    by_group: defaultdict[str, float] = defaultdict(float)
    for e in nodes[skip:]:
        op = e["args"].get("op_name", "?")
        name = e["name"][: -len("_kernel_time")]
        by_op[op] += e["dur"]
        by_group[group(name, op, weight_ops)] += e["dur"]
    kernel_us = sum(by_op.values())
    return {"batch": batch, "threads": threads, "iters": iters, "run_ms": total_us / iters / 1e3,
            "kernel_ms": kernel_us / iters / 1e3,
            "by_op_pct": {k: round(100 * v / kernel_us, 1) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
            "by_group_pct": {k: round(100 * v / kernel_us, 1) for k, v in sorted(by_group.items(), key=lambda kv: -kv[1])}}


GEMMS = ("MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeMatMul",
         "MatMulIntegerToFloat", "QGemm")


def weight_consumers(optimized_path: str) -> set[str]:
    """Names of the GEMM nodes of ORT's optimized graph that multiply by a weight (a constant operand)."""
    import onnx

    graph = onnx.load(optimized_path, load_external_data=False).graph
    constant = {i.name for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" or (node.input and all(i in constant for i in node.input if i)):
            constant.update(node.output)
    return {n.name for n in graph.node if n.op_type in GEMMS and any(i in constant for i in n.input[1:] if i)}


def group(name: str, op: str, weight_ops: set[str]) -> str:
    if op in ("Conv", "QLinearConv", "FusedConv"):
        return "conv stem"
    if op in GEMMS:
        return "weight GEMMs" if name in weight_ops else "attention GEMMs (q k^T, p v)"
    if op in ("Softmax", "MultiHeadAttention", "Attention"):
        return "attention softmax / fused"
    if op in ("Transpose", "Reshape", "Split", "Gather", "Slice", "Squeeze", "Unsqueeze", "Concat"):
        return "layout (reshape/transpose/split)"
    if op in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
        return "(de)quantize"
    return "other elementwise/norm"


def openvino_profile(path: str, batch: int, threads: int, iters: int, precision: str = "f32", frames: int = 64) -> dict:
    """OpenVINO per-layer counters: share of time per layer type and per kernel (exec_type says whether a
    layer ran as int8, bf16 or fp32, e.g. ``brgemm_avx512_I8`` or ``jit_avx512_bf16``)."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(path), "CPU", {
        "PERF_COUNT": True, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": precision})
    req = compiled.create_infer_request()
    rng = np.random.default_rng(0)
    feeds = {"features": rng.standard_normal((batch, frames, 469)).astype(np.float32),
             "mask": np.ones((batch, frames), bool)}
    by_type: defaultdict[str, float] = defaultdict(float)
    by_kernel: defaultdict[str, float] = defaultdict(float)
    for i in range(iters + 5):
        req.infer(feeds)
        if i < 5:
            continue
        for info in req.profiling_info:
            us = info.real_time.total_seconds() * 1e6
            by_type[info.node_type] += us
            by_kernel[f"{info.node_type}:{info.exec_type}"] += us
    total = sum(by_type.values())
    return {"batch": batch, "threads": threads, "iters": iters, "precision": precision,
            "layers_ms": total / iters / 1e3,
            "by_type_pct": {k: round(100 * v / total, 1) for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])[:12]},
            "by_kernel_pct": {k: round(100 * v / total, 1) for k, v in sorted(by_kernel.items(), key=lambda kv: -kv[1])[:12]}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--precision", default="f32", help="OpenVINO INFERENCE_PRECISION_HINT (f32, bf16)")
    args = ap.parse_args(argv)
    if args.model.endswith(".xml"):
        out = openvino_profile(args.model, args.batch, args.threads, args.iters, args.precision)
    else:
        out = profile(args.model, args.batch, args.threads, args.iters)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
