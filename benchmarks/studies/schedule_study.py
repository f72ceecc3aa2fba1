"""Which schedule times backends without distorting them? The measurements behind TimingConfig's defaults.

For one preset and batch size, every variant below times torch-eager and onnx-cpu (same weights, same
threads, each in its own worker process, as ``bench`` does) and compares each backend's p50 and p99 with
the same backend timed alone (continuous calls, the other worker idle), measured in two halves before
and after the variants so that machine drift cancels. A ratio near 1.00 means the schedule does not
move the number. One variant times each backend alone in the schedule's blocks and gaps (what
``bench --check-timing`` uses as its solo reference): it separates the effect of the duty cycle from the
effect of the other backend.

    python benchmarks/studies/schedule_study.py --preset lightweight --batch 1
    python benchmarks/studies/schedule_study.py --preset large --batch 1 --min-time 2

Prints a Markdown table; the results quoted in ``benchmarks/SCHEDULE.md`` came from this script.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from signflow_zoo.backends.builtin.onnx_cpu import OnnxCpuRunner
from signflow_zoo.backends.builtin.torch_eager import TorchEagerRunner
from signflow_zoo.backends.runner import RunnerOptions
from signflow_zoo.bench.schedule import Outcome, run_schedule, run_solo, warm
from signflow_zoo.bench.timing import TimingConfig
from signflow_zoo.results.latency import summarize
from signflow_zoo.bench.worker import BackendWorker, WorkerSpec


class OnnxCpuNoSpin(OnnxCpuRunner):
    """onnx-cpu with ONNX Runtime's intra-op spinning off (the alternative to settling)."""

    name = "onnx-cpu-nospin"

    def session_options(self):
        so = super().session_options()
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return so


def build_artifacts(preset: str, folder: Path):
    import torch

    from signflow_zoo.model.export import serving_metadata
    from signflow_zoo.model.checkpoint import save_checkpoint
    from signflow_zoo.model.export import export_to_onnx
    from signflow_zoo.model.network import build_model
    from signflow_zoo.backends.runner import Artifacts
    from signflow_zoo.model.zoo import get_model_config

    torch.manual_seed(0)
    entry = get_model_config(preset)
    model = build_model(entry, num_classes=20).eval()
    labels = [f"s{i}" for i in range(20)]
    ckpt = save_checkpoint(folder / "m.pt", model, {"preset": preset, "labels": labels})
    meta = serving_metadata({"preset": preset, "labels": labels, "model_kwargs": model.init_kwargs})
    export_to_onnx(model, folder / "m.onnx", metadata=meta, exporter="legacy", verify=False)
    return Artifacts(preset=preset, num_classes=20, labels=labels, model_kwargs=model.init_kwargs,
                     checkpoint=ckpt, onnx=folder / "m.onnx", workdir=folder)


def start(classes, arts, threads):
    workers = {}
    for cls in classes:
        w = BackendWorker(cls.name, WorkerSpec(cls, RunnerOptions(threads=threads), arts), timeout=120)
        w.call("prepare")
        workers[cls.name] = w
    return workers


def solo(workers, key, cfg, calls, continuous=True, outs=None):
    """Each backend alone: ``calls`` continuous calls (or in the schedule's blocks and gaps)."""
    out = {}
    for name, w in workers.items():
        o = outs[name] if outs else Outcome(call_s=0.0)
        run_solo(w, key, cfg, o, calls[name], continuous=continuous)
        out[name] = o
        time.sleep(0.2)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="lightweight")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--min-time", type=float, default=1.5, help="seconds of timed calls per backend per variant")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)

    base = TimingConfig(min_iters=20, min_time=args.min_time, warmup=20, warmup_time=1.0)
    # (label, TimingConfig fields, what the study does differently)
    variants: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("10-call rounds, no settle, no discard (the first version)", dict(block_time=1e-6, settle_time=0.0, discard=0),
         {"calls_per_block": 10}),
        ("50 ms blocks, no settle, no discard", dict(block_time=0.05, settle_time=0.0, discard=0), {}),
        ("100 ms blocks, no settle, no discard", dict(block_time=0.1, settle_time=0.0, discard=0), {}),
        ("100 ms blocks, 20 ms settle, no discard", dict(block_time=0.1, settle_time=0.02, discard=0), {}),
        ("100 ms blocks, 20 ms settle, discard 1 (the first default)", dict(block_time=0.1, settle_time=0.02, discard=1), {}),
        ("100 ms blocks, 50 ms settle, discard 1 (default)", dict(block_time=0.1, settle_time=0.05, discard=1), {}),
        ("200 ms blocks, 20 ms settle, discard 1", dict(block_time=0.2, settle_time=0.02, discard=1), {}),
        ("sequential", dict(schedule="sequential", block_time=0.1, settle_time=0.02, discard=1), {}),
        ("alone, 100 ms blocks, 50 ms settle, discard 1 (the --check-timing reference)",
         dict(block_time=0.1, settle_time=0.05, discard=1), {"solo_blocks": True}),
        ("default, onnx-cpu with spinning off", dict(block_time=0.1, settle_time=0.05, discard=1), {"nospin": True}),
    ]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 64, 469)).astype(np.float32)
    m = np.ones((args.batch, 64), bool)
    with tempfile.TemporaryDirectory() as tmp:
        arts = build_artifacts(args.preset, Path(tmp))
        workers = start([TorchEagerRunner, OnnxCpuRunner, OnnxCpuNoSpin], arts, args.threads)
        try:
            for w in workers.values():
                w.call("load", "k", x, m)
            pair = {k: workers[k] for k in ("torch-eager", "onnx-cpu")}
            warmed = warm(workers, "k", base)
            calls = {n: max(base.min_iters, int(args.min_time / max(o.call_s, 1e-6))) // 2 for n, o in warmed.items()}
            alone = [solo(workers, "k", base, calls)]
            rows = []
            for label, over, extra in variants:
                cfg = replace(base, **over)
                chosen = dict(pair)
                if extra.get("nospin"):
                    chosen = {"torch-eager": workers["torch-eager"], "onnx-cpu-nospin": workers["onnx-cpu-nospin"]}
                outs = warm(chosen, "k", replace(cfg, warmup=5))
                if extra.get("solo_blocks"):
                    solo(chosen, "k", cfg, {n: 2 * calls[n] for n in chosen}, continuous=False, outs=outs)
                elif extra.get("calls_per_block"):
                    for name, o in outs.items():  # fixed-count rounds, as the first version interleaved
                        o.call_s = 1.0  # disables the time-based block length and discard
                    _rounds_of(chosen, cfg, outs, extra["calls_per_block"])
                else:
                    run_schedule(chosen, "k", cfg, outs)
                rows.append((label, {n: summarize(o.blocks, args.batch) for n, o in outs.items()}))
            alone.append(solo(workers, "k", base, calls))
        finally:
            for w in workers.values():
                w.close()
    ref = {n: summarize([b for half in alone for b in half[n].blocks], args.batch) for n in workers}
    print(f"\n{args.preset}, batch {args.batch}, {args.threads} threads, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{os.uname().nodename}\n")
    print("| schedule | backend | p50 ms (solo) | p99 ms (solo) | p50 / solo | p99 / solo |")
    print("|---|---|---|---|---|---|")
    for name in ("torch-eager", "onnx-cpu", "onnx-cpu-nospin"):
        print(f"| alone, continuous | {name} | {ref[name].p50_ms:.3f} | {ref[name].p99_ms:.3f} | 1.00 | 1.00 |")
    for label, stats in rows:
        for name, st in stats.items():
            r = ref[name]
            print(f"| {label} | {name} | {st.p50_ms:.3f} | {st.p99_ms:.3f} | {st.p50_ms / r.p50_ms:.2f} | "
                  f"{st.p99_ms / r.p99_ms:.2f} |")
    return 0


def _rounds_of(workers, cfg, outs, n):
    """Rounds of exactly ``n`` calls per backend, no gap, no discard (the first version's schedule)."""
    names = list(workers)
    rnd = 0
    while any(o.calls < cfg.min_iters or o.spent_s < cfg.min_time for o in outs.values()):
        k = rnd % len(names)
        for name in names[k:] + names[:k]:
            samples, _ = workers[name].call("time", "k", n, 0.0, 0)
            outs[name].blocks.append(list(samples))
        rnd += 1


if __name__ == "__main__":
    sys.exit(main())
