"""Why did ``--check-timing`` read some large batch-32 backends 6-14% faster in the schedule than alone?

``bench --check-timing`` used to pool two solo halves (one before the schedule, one after) into one solo
reading. This script repeats that sequence for a few backends on one preset and batch size, but keeps the
halves apart, so that a slow first half (warm-up not finished) can be told from a slow duty cycle (both
halves slow) or drift (a half differs from the schedule next to it). In the same run it also takes the
reference ``--check-timing`` uses now: solo stints scattered through the schedule. Each variant runs in
fresh worker processes.

    python benchmarks/studies/solo_halves.py --preset large --batch 32
    python benchmarks/studies/solo_halves.py --preset large --batch 32 --backends onnx-int8,openvino-int8 --repeat 2

Prints a Markdown table (p50 in ms per call, and each half's ratio to the scheduled p50).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from schedule_study import build_artifacts  # noqa: E402

from signflow_zoo.plugins import get_registry  # noqa: E402
from signflow_zoo.backends.runner import RunnerOptions  # noqa: E402
from signflow_zoo.bench.schedule import (  # noqa: E402
    Outcome, expected_calls, run_schedule, run_solo, stints_between_rounds, warm)
from signflow_zoo.bench.timing import TimingConfig
from signflow_zoo.results.latency import summarize  # noqa: E402
from signflow_zoo.bench.worker import BackendWorker, WorkerSpec  # noqa: E402


def ensure_kind(arts, kind):
    from signflow_zoo.api import ensure_artifact
    from signflow_zoo.testing import RandomCalibration

    return ensure_artifact(arts, kind, get_registry(), home=arts.workdir, calibration=RandomCalibration(),
                           log=lambda msg: None)


def one_run(names, arts, cfg, batch, threads):
    """The --check-timing sequence (warm, solo half, schedule, solo half), halves kept apart."""
    reg = get_registry()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 64, 469)).astype(np.float32)
    m = np.ones((batch, 64), bool)
    workers = {n: BackendWorker(n, WorkerSpec(reg.get(n).cls, RunnerOptions(threads=threads), arts), 600)
               for n in names}
    try:
        for w in workers.values():
            w.call("prepare")
            w.call("load", "k", x, m)
        outcomes = warm(workers, "k", cfg)
        first = {n: Outcome(call_s=o.call_s) for n, o in outcomes.items()}
        second = {n: Outcome(call_s=o.call_s) for n, o in outcomes.items()}
        for n, o in outcomes.items():
            run_solo(workers[n], "k", cfg, first[n], (expected_calls(o, cfg) + 1) // 2)
        stint = {n: Outcome(call_s=o.call_s) for n, o in outcomes.items()}
        # the current --check-timing reference: stints alone scattered through the schedule
        run_schedule(workers, "k", cfg, outcomes, after_round=stints_between_rounds(workers, "k", cfg, outcomes,
                                                                                    stint))
        for n, o in outcomes.items():
            run_solo(workers[n], "k", cfg, second[n], (o.calls + 1) // 2)
    finally:
        for w in workers.values():
            w.close()
    rows = {}
    for n in names:
        sched = summarize(outcomes[n].blocks, batch).p50_ms
        h1 = summarize(first[n].blocks, batch).p50_ms
        h2 = summarize(second[n].blocks, batch).p50_ms
        pooled = summarize(first[n].blocks + second[n].blocks, batch).p50_ms
        rows[n] = (outcomes[n].warmup_calls, h1, sched, h2, pooled, summarize(stint[n].blocks, batch).p50_ms)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="large")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--backends", default="torch-eager,onnx-cpu,onnx-int8,openvino-int8")
    ap.add_argument("--warmup-times", default="1,5", help="comma-separated warm-up caps in seconds (variants)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    names = args.backends.split(",")
    reg = get_registry()
    print(f"| warm-up cap | run | backend | warm-up calls | solo half 1 p50 | scheduled p50 | solo half 2 p50 | "
          f"half 1 / sched | half 2 / sched | scheduled / halves pooled (the old check) | "
          f"scheduled / stints (the check now) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        arts = build_artifacts(args.preset, Path(tmp))
        if "onnx-optimized" in names:
            from dataclasses import replace as with_

            from signflow_zoo.model.export import optimize_onnx_model
            from signflow_zoo.model.zoo import get_model_config

            entry = get_model_config(args.preset)
            optimize_onnx_model(arts.onnx, Path(tmp) / "m.opt.onnx", entry.heads, entry.d_model)
            arts = with_(arts, onnx_optimized=Path(tmp) / "m.opt.onnx")
        for n in names:
            ensure_kind(arts, reg.get(n).cls.artifact)
        for wt in [float(v) for v in args.warmup_times.split(",")]:
            cfg = replace(TimingConfig(), warmup_time=wt, warmup=max(10, int(wt * 50)))
            for r in range(args.repeat):
                t0 = time.strftime("%H:%M:%S", time.gmtime())
                for n, (wc, h1, s, h2, pooled, st) in one_run(names, arts, cfg, args.batch, args.threads).items():
                    print(f"| {wt:g} s | {r + 1} ({t0}) | {n} | {wc} | {h1:.1f} | {s:.1f} | {h2:.1f} | "
                          f"{h1 / s:.3f} | {h2 / s:.3f} | {s / pooled:.3f} | {s / st:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
