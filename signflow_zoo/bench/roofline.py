"""This machine's matmul ceilings, and how close a measured latency comes to them.

A latency alone does not say whether a backend is good: the roofline share does. ``ceilings(threads)``
measures the best matmul throughput per arithmetic precision with the engines the backends run on:

* ``fp32``: ``torch.matmul`` (PyTorch's CPU BLAS) and ONNX Runtime's ``MatMul`` (MLAS); the roof is the
  faster of the two. They differ by ~2x on AMD CPUs, where PyTorch's BLAS takes an AVX2 path and MLAS
  uses AVX-512: a ceiling measured with one engine only is the engine's, not the machine's.
* ``bf16`` (only where /proc/cpuinfo has ``avx512_bf16`` or ``amx_bf16``): ``torch.matmul`` on bfloat16
  (oneDNN, the library OpenVINO also uses).
* ``int8`` (only where it has ``avx512_vnni``, ``avx_vnni`` or ``amx_int8``): ONNX Runtime's
  ``MatMulInteger`` with uint8 activations x int8 weights -- the kernel its dynamic and QDQ (static)
  quantized graphs run. (int8 x int8 activations take a path ~15x slower on AMD: quantize activations
  as uint8.)

Sizes: transformer-shaped (M = 65 tokens x batch 1 and 32, K/N = d_model and dim_ff of ``large``) and a
large square, best of several repeats, at the bench's thread count. Results are cached per machine under
``$SIGNFLOW_ZOO_HOME/machine/roofline-<hash of CPU model, flags and threads>.json``; ``refresh=True``
measures again.

The FLOP count a share is computed from can be checked against the model itself: ``graph_gflops`` counts
the multiply-accumulates of the exported ONNX graph's MatMul/Gemm/Conv nodes at real shapes, and
``profiler_gflops`` asks ``torch.profiler`` (``with_flops``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from signflow_zoo.common.documents import loads_json
from signflow_zoo.common.errors import InputError
from signflow_zoo.common.tensors import FEATURE_DIM

# (M, K, N): large's FFN and qkv GEMMs at batch 1 and 32 (65 tokens per sequence), and a big square
SHAPES: tuple[tuple[int, int, int], ...] = (
    (65, 384, 1536), (65 * 32, 384, 1536), (65 * 32, 1536, 384), (65 * 32, 384, 1152), (2048, 2048, 2048),
)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# precision a backend declares -> the ceiling it is held to on a CPU
PRECISION_CEILING = {"fp32": "fp32", "tf32": "fp32", "fp16": "fp32", "bf16": "bf16", "int8": "int8"}
FORMAT_VERSION = 1


# -- the machine ----------------------------------------------------------------------------------
def cpu_identity() -> dict[str, Any]:
    """Model name, family/model/stepping and the matmul-relevant flags (from :func:`environment.cpu_info`)."""
    from signflow_zoo.common.environment import cpu_info

    info = cpu_info()
    flags = set(info["flags"].split())  # cpu_info keeps the ISA flags, which include every flag named here
    return {
        "model": info["model_name"], "family": info["family"], "model_id": info["model"], "stepping": info["stepping"],
        "flags": sorted(flags & set(BF16_FLAGS + INT8_FLAGS + ("avx512f", "avx2", "fma"))),
    }


def cache_path(threads: int, home: Path | None = None) -> Path:
    from signflow_zoo.common.cachefiles import zoo_home

    key = hashlib.sha256(json.dumps({"cpu": cpu_identity(), "threads": int(threads)}, sort_keys=True).encode())
    return (home or zoo_home()) / "machine" / f"roofline-{key.hexdigest()[:16]}.json"


# -- measuring --------------------------------------------------------------------------------------
def _best_gflops(fn: Callable[[], Any], flop: float, repeats: int, min_time: float) -> float:
    """Best-of-``repeats`` throughput; each repeat runs ``fn`` enough times to last ``min_time`` s."""
    fn()  # warm-up: first-call allocation, kernel selection, weight packing
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-6)
    inner = max(1, int(min_time / one))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return flop / best / 1e9


def _torch_matmul(shape, dtype_name: str, threads: int):
    import torch

    m, k, n = shape
    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(k, n, generator=g).to(dtype)

    def run():
        with torch.inference_mode():
            torch.matmul(a, b)

    return run


def _ort_matmul(shape, int8: bool, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = shape
    rng = np.random.default_rng(0)
    if int8:  # what ORT's quantized graphs run: uint8 activations x int8 weights, int32 accumulation
        w = rng.integers(-127, 128, (k, n)).astype(np.int8)
        a = rng.integers(0, 256, (m, k)).astype(np.uint8)
        node = helper.make_node("MatMulInteger", ["a", "w"], ["y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        w = rng.standard_normal((k, n)).astype(np.float32)
        a = rng.standard_normal((m, k)).astype(np.float32)
        node = helper.make_node("MatMul", ["a", "w"], ["y"])
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("a", a_type, [m, k])],
                              [helper.make_tensor_value_info("y", y_type, [m, n])],
                              initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = int(threads), 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {"a": a}
    return lambda: sess.run(None, feeds)


def _engines(flags: set[str]) -> list[tuple[str, str, Callable]]:
    """(precision, engine, factory(shape, threads)) for every engine available here."""
    out: list[tuple[str, str, Callable]] = []
    try:
        import torch  # noqa: F401

        out.append(("fp32", "torch.matmul float32", lambda s, t: _torch_matmul(s, "float32", t)))
        if flags & set(BF16_FLAGS):
            out.append(("bf16", "torch.matmul bfloat16 (oneDNN)", lambda s, t: _torch_matmul(s, "bfloat16", t)))
    except ImportError:
        pass
    try:
        import onnxruntime  # noqa: F401

        out.append(("fp32", "onnxruntime MatMul float32 (MLAS)", lambda s, t: _ort_matmul(s, False, t)))
        if flags & set(INT8_FLAGS):
            out.append(("int8", "onnxruntime MatMulInteger u8 x s8 (MLAS)", lambda s, t: _ort_matmul(s, True, t)))
    except ImportError:
        pass
    return out


def measure(threads: int, shapes=None, repeats: int = 5, min_time: float = 0.1) -> dict[str, Any]:
    """Measure every (precision, engine, shape); returns the record that ``ceilings`` caches."""
    shapes = SHAPES if shapes is None else shapes
    if not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads must be a positive integer, got {threads!r}")
    ident = cpu_identity()
    rows = []
    torch_threads = None
    try:
        import torch

        torch_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
    except ImportError:
        pass
    t_start = time.perf_counter()
    try:
        for precision, engine, factory in _engines(set(ident["flags"])):
            for shape in shapes:
                m, k, n = shape
                gflops = _best_gflops(factory(shape, threads), 2.0 * m * k * n, repeats, min_time)
                rows.append({"precision": precision, "engine": engine, "m": m, "k": k, "n": n,
                             "gflops": round(gflops, 1)})
    finally:
        if torch_threads is not None:
            import torch

            torch.set_num_threads(torch_threads)
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["gflops"] > best.get(r["precision"], {}).get("gflops", 0.0):
            best[r["precision"]] = r
    return {
        "format": FORMAT_VERSION, "cpu": ident, "threads": threads, "seconds": round(time.perf_counter() - t_start, 1),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_avg_1min": round(os.getloadavg()[0], 2),
        "versions": _versions(),
        "ceilings": {p: r["gflops"] for p, r in sorted(best.items())},
        "ceiling_engines": {p: f"{r['engine']} at {r['m']}x{r['k']}x{r['n']}" for p, r in sorted(best.items())},
        "measurements": rows,
    }


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("torch", "onnxruntime", "onnxruntime-gpu"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def load_or_measure(threads: int, refresh: bool = False, home: Path | None = None, **kw) -> dict[str, Any]:
    """The cached record for this machine and thread count, measured (and written) when missing."""
    path = cache_path(threads, home)
    if not refresh and path.is_file():
        try:
            rec = loads_json(path.read_text(), str(path))  # nesting bounded: DocumentError is a ValueError
            if isinstance(rec, dict) and rec.get("format") == FORMAT_VERSION and rec.get("ceilings"):
                return rec
        except (OSError, ValueError):
            pass  # unreadable cache: measure again and overwrite it
    rec = measure(threads, **kw)
    from signflow_zoo.common.cachefiles import atomic_write_text

    atomic_write_text(path, json.dumps(rec, indent=1))  # a temp name unique per host, process and call, then a rename
    return rec


def ceilings(threads: int, refresh: bool = False) -> dict[str, float]:
    """GFLOP/s per precision ("fp32", and "bf16"/"int8" where the CPU has the units) at ``threads``."""
    return dict(load_or_measure(threads, refresh)["ceilings"])


# -- the share -------------------------------------------------------------------------------------
def roofline(gflop_per_seq: float, batch: int, p50_ms: float, precision: str,
             ceilings: dict[str, float]) -> dict[str, float | None]:
    """Achieved GFLOP/s of a measured latency, and its share of the ceiling for the declared precision.

    tf32/fp16 on a CPU are held to the fp32 ceiling; bf16 to the bf16 one (fp32 where the CPU has no
    bf16 units: runtimes then compute in fp32); int8 to the int8 one (None where not measured).
    """
    for name, value in (("gflop_per_seq", gflop_per_seq), ("batch", batch), ("p50_ms", p50_ms)):
        if not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
            raise InputError(f"roofline: {name} must be a positive number, got {value!r}")
    if precision not in PRECISION_CEILING:
        raise InputError(f"roofline: unknown precision {precision!r}; valid: {', '.join(PRECISION_CEILING)}")
    key = PRECISION_CEILING[precision]
    ceiling = ceilings.get(key)
    if ceiling is None and key == "bf16":
        ceiling = ceilings.get("fp32")
    achieved = gflop_per_seq * batch / (p50_ms / 1e3)
    return {
        "gflop_per_seq": float(gflop_per_seq), "achieved_gflops": round(achieved, 1),
        "ceiling_gflops": float(ceiling) if ceiling else None,
        "share": round(achieved / ceiling, 4) if ceiling else None,
    }


# -- checking the FLOP count --------------------------------------------------------------------------
def graph_gflops(onnx_path: str | Path, batch: int = 1, frames: int = 64) -> dict[str, float]:
    """GFLOP (2 x multiply-accumulates) per sequence of an ONNX graph's MatMul/Gemm/Conv nodes.

    Shapes come from running the graph once in ONNX Runtime with every operand exposed as an output,
    so dynamic reshapes are resolved exactly. Returns the total and a split by op type.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    nodes = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv", "MatMulInteger",
                                                            "QLinearMatMul", "QLinearConv", "FusedMatMul")]
    graph_names = {o.name for o in model.graph.output}
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    wanted = []
    for n in nodes:
        for name in list(n.input) + [n.output[0]]:
            if name and name not in inits and name not in graph_names and name not in wanted:
                wanted.append(name)
    for name in wanted:
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # count the graph as written
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    dim = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value or FEATURE_DIM
    feeds = {"features": rng.standard_normal((batch, frames, dim)).astype(np.float32),
             "mask": np.ones((batch, frames), bool)}
    names = [o.name for o in sess.get_outputs()]
    shapes = {name: tuple(v.shape) for name, v in zip(names, sess.run(names, feeds))}
    shapes.update(inits)
    by_op: dict[str, float] = {}
    for n in nodes:
        out = shapes[n.output[0]]
        if n.op_type in ("Conv", "QLinearConv"):
            w = shapes[n.input[3 if n.op_type == "QLinearConv" else 1]]  # [C_out, C_in/groups, *kernel]
            macs = float(np.prod(out)) * float(np.prod(w[1:]))
        else:
            a = shapes[n.input[0]]
            k = a[-1]
            if n.op_type == "Gemm" and any(at.name == "transA" and at.i for at in n.attribute):
                k = a[0]
            macs = float(np.prod(out)) * k
        by_op[n.op_type] = by_op.get(n.op_type, 0.0) + 2.0 * macs / 1e9 / batch
    return {"total": sum(by_op.values()), **by_op}


def profiler_gflops(model, batch: int = 1, frames: int = 64) -> dict[str, float]:
    """GFLOP per sequence of a PyTorch model's forward pass as ``torch.profiler`` counts it (with_flops).

    Only matrix products and convolutions are kept (the profiler also counts a few elementwise ops).
    On CPU, torch 2.13's profiler has no FLOP formula for the oneDNN 1-D convolution, so a model's Conv1d
    stem is missing from its total: compare it with ``graph_gflops``'s ``MatMul + Gemm``.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(batch, frames, getattr(model, "input_dim", FEATURE_DIM))
    m = torch.ones(batch, frames, dtype=torch.bool)
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        model.eval()(x, m)
    by_op = {e.key: e.flops / 1e9 / batch for e in prof.key_averages()
             if e.flops and (e.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm") or "conv" in e.key)}
    return {"total": sum(by_op.values()), **by_op}
