"""How long moving one batch of features to the GPU takes: the floor under every GPU backend's latency.

A backend gets host (numpy) arrays and returns host logits, as a user's program would, so each call
copies [batch, 64, 469] float32 to the device (30.7 MB at batch 256). Measured three ways: a plain
PyTorch copy from pageable memory (what torch-eager and torch-compile do), a copy staged through a
pinned buffer, and ``OrtValue.update_inplace`` into a CUDA buffer (what onnx-cuda-graph does), when
onnxruntime-gpu is importable. Medians of synchronized calls. Run on the GPU machine:

    python benchmarks/studies/gpu_transfer.py --batch-sizes 1,256
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def median_ms(fn, sync, n: int) -> float:
    for _ in range(5):
        fn()
    sync()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default="1,256")
    ap.add_argument("--calls", type=int, default=50)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_transfer: no CUDA device here")
    sync = torch.cuda.synchronize
    try:
        import onnxruntime as ort

        ort.preload_dlls()
        has_ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    except Exception:  # noqa: BLE001 - reported as a missing column
        has_ort_cuda = False
    print(f"device {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    for b in [int(v) for v in args.batch_sizes.split(",")]:
        x = np.random.default_rng(0).standard_normal((b, 64, 469)).astype(np.float32)
        mb = x.nbytes / 2**20
        pinned = torch.empty(x.shape, dtype=torch.float32, pin_memory=True)
        pageable = median_ms(lambda: torch.from_numpy(x).to("cuda"), sync, args.calls)

        def staged():
            pinned.copy_(torch.from_numpy(x))
            return pinned.to("cuda", non_blocking=True)

        via_pinned = median_ms(staged, sync, args.calls)
        line = (f"batch {b}: {mb:.2f} MB; torch pageable {pageable:.3f} ms ({mb / 1024 / pageable * 1e3:.1f} GB/s), "
                f"staged through pinned {via_pinned:.3f} ms")
        if has_ort_cuda:
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(x.shape), np.float32, "cuda", 0)
            line += f", OrtValue.update_inplace {median_ms(lambda: value.update_inplace(x), sync, args.calls):.3f} ms"
        print(line)


if __name__ == "__main__":
    main()
