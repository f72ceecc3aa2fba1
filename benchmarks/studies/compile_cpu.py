"""Does torch-compile pay on the CPU? Compile time and speed against torch-eager, for one preset.

The numbers behind torch-compile's CPU rule (unavailable on CPU unless SIGNFLOW_ZOO_TORCH_COMPILE_CPU=1):
the same runners the harness uses, an untrained model of the preset's shape (speed does not depend on
training), prepare timed (that is the compile), then blocks of calls alternating between the two backends
so that drift on a shared machine hits both alike. Run under ``flock /tmp/sfz-measure.lock`` on a shared box.

    python benchmarks/studies/compile_cpu.py --preset lightweight --batch-sizes 1,8
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="lightweight")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15, help="alternating blocks per backend")
    ap.add_argument("--block", type=int, default=20, help="calls per block")
    args = ap.parse_args()
    os.environ["SIGNFLOW_ZOO_TORCH_COMPILE_CPU"] = "1"
    import torch

    from signflow_zoo.api import Artifacts, RunnerOptions
    from signflow_zoo.model.checkpoint import save_checkpoint
    from signflow_zoo.backends.builtin.torch_compile import TorchCompileRunner
    from signflow_zoo.backends.builtin.torch_eager import TorchEagerRunner
    from signflow_zoo.model.network import build_model
    from signflow_zoo.model.zoo import get_model_config

    torch.manual_seed(0)
    entry = get_model_config(args.preset)
    model = build_model(entry, 100).eval()
    folder = Path(tempfile.mkdtemp(prefix="sfz-compile-cpu-"))
    ckpt = save_checkpoint(folder / "model.pt", model, {"preset": args.preset})
    arts = Artifacts(preset=args.preset, num_classes=100, labels=[str(i) for i in range(100)],
                     model_kwargs=model.init_kwargs, checkpoint=ckpt, workdir=folder)
    opts = RunnerOptions(threads=args.threads)
    eager = TorchEagerRunner(opts)
    eager.prepare(arts)
    t0 = time.perf_counter()
    compiled = TorchCompileRunner(opts)
    compiled.prepare(arts)
    print(f"{args.preset}: torch-compile prepare (compiles {list(compiled.compile_s)}) took "
          f"{time.perf_counter() - t0:.1f} s; {args.threads} threads, torch {torch.__version__}")
    rng = np.random.default_rng(0)
    for b in [int(v) for v in args.batch_sizes.split(",")]:
        x = rng.standard_normal((b, 64, 469)).astype(np.float32)
        m = np.ones((b, 64), bool)
        err = float(np.abs(compiled.run(x, m) - eager.run(x, m)).max())
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(args.rounds):
            for name, runner in (("eager", eager), ("compiled", compiled)):
                runner.run(x, m)
                for _ in range(args.block):
                    t = time.perf_counter()
                    runner.run(x, m)
                    times[name].append(time.perf_counter() - t)
        e, c = (statistics.median(times[k]) * 1e3 for k in ("eager", "compiled"))
        print(f"  batch {b}: eager p50 {e:.3f} ms, compiled p50 {c:.3f} ms, speedup {e / c:.2f}x, max abs diff {err:.1e}")


if __name__ == "__main__":
    main()
