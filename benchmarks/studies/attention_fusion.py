"""Does ONNX Runtime's fused attention pay for this model's attention? A measurement, not a backend.

Times the attention core of one encoder layer at the model's shapes, as exported today (Reshape,
Transpose, MatMul q k^T, scale, + bias [B,1,N,N], Softmax, MatMul p v, Transpose, Reshape) against ORT's
contrib op ``com.microsoft.MultiHeadAttention`` with the relative-position + key-padding bias as its
additive ``attention_bias``. Same inputs, same threads, alternating blocks, best-of and median.

    python benchmarks/studies/attention_fusion.py [--d-model 384 --heads 8 --tokens 65 --batches 1,32 --threads 2]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def graphs(d: int, h: int):
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    hd = d // h
    inputs = [helper.make_tensor_value_info("q", f, ["B", "N", d]), helper.make_tensor_value_info("k", f, ["B", "N", d]),
              helper.make_tensor_value_info("v", f, ["B", "N", d]),
              helper.make_tensor_value_info("bias", f, ["B", 1, "N", "N"])]
    out = [helper.make_tensor_value_info("y", f, ["B", "N", d])]
    shape = helper.make_tensor("shape", TensorProto.INT64, [4], [0, 0, h, hd])
    back = helper.make_tensor("back", TensorProto.INT64, [3], [0, 0, d])
    scale = helper.make_tensor("scale", f, [], [1.0 / np.sqrt(hd)])
    nodes = []
    for name in ("q", "k", "v"):
        nodes.append(helper.make_node("Reshape", [name, "shape"], [f"{name}4"]))
    nodes += [helper.make_node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]),
              helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
              helper.make_node("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3]),
              helper.make_node("MatMul", ["qt", "kt"], ["s"]), helper.make_node("Mul", ["s", "scale"], ["ss"]),
              helper.make_node("Add", ["ss", "bias"], ["sb"]), helper.make_node("Softmax", ["sb"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vt"], ["o"]), helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ot", "back"], ["y"])]
    unfused = helper.make_model(helper.make_graph(nodes, "attn", inputs, out, [shape, back, scale]),
                                opset_imports=[helper.make_opsetid("", 17)])
    mha = helper.make_node("MultiHeadAttention", ["q", "k", "v", "", "", "bias"], ["y"], domain="com.microsoft",
                           num_heads=h)
    fused = helper.make_model(helper.make_graph([mha], "mha", inputs, out),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    for m in (unfused, fused):
        m.ir_version = 8
    return unfused, fused


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d-model", type=int, default=384)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=65)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--block", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args(argv)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
    so.log_severity_level = 3
    sessions = {name: ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
                for name, m in zip(("unfused", "MultiHeadAttention"), graphs(args.d_model, args.heads))}
    rng = np.random.default_rng(0)
    n, d = args.tokens, args.d_model
    for b in [int(x) for x in args.batches.split(",")]:
        feeds = {k: rng.standard_normal((b, n, d)).astype(np.float32) for k in "qkv"}
        bias = np.tile(rng.standard_normal((1, 1, n, n)).astype(np.float32), (b, 1, 1, 1))
        bias[:, :, :, n - 5:] = -1e4  # padded keys
        feeds["bias"] = bias
        outs = {k: s.run(None, feeds)[0] for k, s in sessions.items()}
        err = float(np.abs(outs["unfused"] - outs["MultiHeadAttention"]).max())
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(args.rounds):
            for k, s in sessions.items():
                s.run(None, feeds)
                end = time.perf_counter() + args.block
                while time.perf_counter() < end:
                    t0 = time.perf_counter_ns()
                    s.run(None, feeds)
                    times[k].append((time.perf_counter_ns() - t0) / 1e3)
        med = {k: float(np.median(v)) for k, v in times.items()}
        print(f"batch {b}: " + ", ".join(f"{k} p50 {v:.1f} us (min {min(times[k]):.1f})" for k, v in med.items())
              + f"; fused/unfused {med['MultiHeadAttention'] / med['unfused']:.2f}; max abs diff {err:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
