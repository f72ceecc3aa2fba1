"""Low-precision CPU backends against the fp32 ones, for one preset, in one process and one run.

What it measures (every backend gets the same thread count):

* latency at each batch size, twice: *alone* (one backend's calls in a block, then the next backend's)
  and *interleaved* (signflow-zoo's own ``measure_interleaved`` rounds); ``--repeats`` repetitions, so the
  ratios can be compared within one run on a shared machine;
* parity against the PyTorch fp32 reference (random inputs and held-out clips);
* top-1 on the held-out signers of the training data set (the bench's test split) and on a larger set of
  signers never seen in training (``--eval-data``, another seed of the synthetic generator: same sign
  catalogue, new signers), with the paired difference to the fp32 reference and its 95% interval;
* the roofline share of each p50 (``signflow_zoo.bench.roofline``), from the exported graph's FLOP count.

Usage (from the repository root, with the plugins installed)::

    python benchmarks/lowp_cpu.py --preset large --repeats 3 --json out.json

Artifact builds, parity and accuracy run first; only the timing holds ``--lock`` (default
/tmp/sfz-measure.lock, the machine's measuring lock, taken with flock so other measurements wait).

The checkpoint comes from the zoo cache (the one `signflow-zoo bench` trains); artifact kinds of plugins are
built with ``ensure_artifact`` and calibrated on the TRAINING split. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np


def paired_delta(pred, ref_pred, labels) -> dict:
    """Top-1 difference (backend - reference) on the same clips, with a 95% normal interval of the paired
    difference (McNemar's variance: discordant pairs only)."""
    a = pred == labels
    b = ref_pred == labels
    n = len(labels)
    d = a.astype(float) - b.astype(float)
    delta = d.mean()
    se = math.sqrt(max(((d - delta) ** 2).sum() / max(n - 1, 1) / n, 0.0))
    return {"delta_pts": 100 * delta, "ci95_pts": 100 * 1.96 * se, "discordant": int((a != b).sum()), "n": n}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * (centre - half), 100 * (centre + half)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="large")
    ap.add_argument("--backends", default="torch-eager,onnx-cpu,onnx-int8,onnx-int8-static,openvino-fp32,"
                                          "openvino-bf16,openvino-int8")
    ap.add_argument("--data", default="synthetic", help="training data spec (the checkpoint's)")
    ap.add_argument("--eval-data", default="synthetic:classes=20,signers=40,clips=4,seed=7",
                    help="extra held-out data: unseen signers (empty to skip)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--block-time", type=float, default=1.5, help="seconds per backend per block")
    ap.add_argument("--exporter", default="dynamo")
    ap.add_argument("--json", default=None)
    ap.add_argument("--zoo", default=None, help="zoo file (default: the packaged zoo.toml)")
    ap.add_argument("--no-accuracy", action="store_true", help="skip top-1 (timing and parity only)")
    ap.add_argument("--lock", default="/tmp/sfz-measure.lock", help="file lock held while timing ('' for none)")
    args = ap.parse_args(argv)

    import torch

    from signflow_zoo.bench import roofline as rl
    from signflow_zoo.api import RunnerOptions, ensure_artifact
    from signflow_zoo.backends.artifacts import build_artifacts
    from signflow_zoo.bench.harness import Bench, BenchConfig, load_splits_cached
    from signflow_zoo.backends.parity import compare
    from signflow_zoo.bench.timing import TimingConfig, measure_interleaved

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    torch.set_num_threads(args.threads)
    bench = Bench(BenchConfig(presets=args.preset, backends=args.backends, data=args.data, track=False,
                              exporter=args.exporter, threads=args.threads, progress=False,
                              zoo_file=args.zoo), log=log)
    entry = bench.entries[0]
    ckpt, meta = bench.checkpoint(entry)
    arts = build_artifacts(ckpt, exporter=args.exporter, home=bench.home, log=log)
    splits = bench.splits()
    train = splits.train

    def calibration(n: int):
        order = np.random.default_rng(0).permutation(len(train))[:n]
        for i in range(0, len(order), 8):
            idx = np.sort(order[i:i + 8])
            yield train.features[idx], train.mask[idx]

    calibration.fingerprint = f"train:{splits.fingerprint}"
    evals = {"test": splits.test}
    if args.eval_data:  # every split of it: none of its signers was seen in training
        s = load_splits_cached(args.eval_data, 0, bench.home)
        evals["unseen"] = _concat([s.train, s.val, s.test])
    gflop = rl.graph_gflops(arts.path_for("onnx"), batch=1, frames=train.features.shape[1])["total"]
    log(f"{entry.name}: {gflop:.4f} GFLOP/seq (graph count)")

    ref_model = arts.torch_model("cpu")
    rng = np.random.default_rng(0)
    parity_inputs = [(rng.standard_normal((3, 64, 469)).astype(np.float32), rng.random((3, 64)) > 0.1),
                     (splits.test.features[:64], splits.test.mask[:64])]

    def predict(fn, ds, bs=64):
        return np.concatenate([fn(ds.features[i:i + bs], ds.mask[i:i + bs]) for i in range(0, len(ds), bs)])

    with torch.inference_mode():
        ref_fn = lambda x, m: ref_model(torch.from_numpy(x), torch.from_numpy(m)).numpy()  # noqa: E731
        refs = [ref_fn(x, m) for x, m in parity_inputs]
        ref_logits = {} if args.no_accuracy else {k: predict(ref_fn, ds) for k, ds in evals.items()}

    rows, runners = {}, {}
    for be in bench.selected:
        cls = be.cls
        row = rows[cls.name] = {"backend": cls.name, "precision": cls.precision, "artifact": cls.artifact}
        av = cls.availability()
        if not av.ok:
            row["status"] = f"unavailable: {av.reason}"
            continue
        try:
            t0 = time.perf_counter()
            ensure_artifact(arts, cls.artifact, bench.registry, home=bench.home, calibration=calibration, log=log)
            row["artifact_build_s"] = round(time.perf_counter() - t0, 1)
            r = cls(RunnerOptions(threads=args.threads))
            r.prepare(arts)
        except Exception as exc:  # noqa: BLE001 - one broken backend must not stop the others
            row["status"] = f"failed: {type(exc).__name__}: {exc}"
            log(f"{cls.name}: {row['status']}")
            continue
        row["status"] = "ok"
        row["describe"] = r.describe()
        outs = [r.run(x, m) for x, m in parity_inputs]
        row["parity"] = compare(np.concatenate(outs), np.concatenate(refs), cls.precision).to_dict()
        for k, ds in (() if args.no_accuracy else evals.items()):
            logits = predict(r.run, ds)
            pred = logits.argmax(1)
            k1 = int((pred == ds.labels).sum())
            row[f"top1_{k}"] = 100 * k1 / len(ds)
            row[f"wilson_{k}"] = wilson(k1, len(ds))
            row[f"vs_fp32_{k}"] = paired_delta(pred, ref_logits[k].argmax(1), ds.labels)
            row[f"agreement_{k}"] = float((pred == ref_logits[k].argmax(1)).mean())
        runners[cls.name] = r
        log(f"{cls.name}: parity {row['parity']['message']} max_abs {row['parity']['max_abs']:.2e}; "
            + ", ".join(f"{k} top-1 {row[f'top1_{k}']:.2f}%" for k in evals if f"top1_{k}" in row))

    test = splits.test
    lock = open(args.lock, "a") if args.lock else None
    if lock:
        import fcntl

        log(f"waiting for {args.lock} ...")
        fcntl.flock(lock, fcntl.LOCK_EX)
    load_before = os.getloadavg()
    ceilings = rl.ceilings(args.threads, refresh=True)  # measured now, under the lock, like the latencies
    log(f"ceilings (GFLOP/s, {args.threads} threads): {ceilings}")
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        idx = np.arange(batch) % len(test)
        x, m = np.ascontiguousarray(test.features[idx]), np.ascontiguousarray(test.mask[idx])
        alone = {n: [] for n in runners}
        inter = {n: [] for n in runners}
        for rep in range(args.repeats):
            for name, r in runners.items():  # alone: a block of one backend, then the next
                for _ in range(3):
                    r.run(x, m)
                ms, t_end = [], time.perf_counter() + args.block_time
                while time.perf_counter() < t_end or len(ms) < 5:
                    t0 = time.perf_counter_ns()
                    r.run(x, m)
                    ms.append((time.perf_counter_ns() - t0) / 1e6)
                alone[name].extend(ms)
            calls = {n: ((lambda r=r: r.run(x, m)), None) for n, r in runners.items()}
            stats = measure_interleaved(calls, batch, TimingConfig(warmup=3, warmup_time=0.5, min_iters=5,
                                                                   min_time=args.block_time, round_iters=5))
            for n, st in stats.items():
                inter[n].extend(st.samples_ms)
            log(f"b{batch} repeat {rep + 1}: " + ", ".join(f"{n} {np.median(alone[n]):.2f}" for n in runners))
        for name in runners:
            for mode, samples in (("alone", alone[name]), ("interleaved", inter[name])):
                p50 = float(np.median(samples))
                rows[name].setdefault("latency", {})[f"b{batch}_{mode}"] = {
                    "p50_ms": p50, "p90_ms": float(np.percentile(samples, 90)), "n": len(samples),
                    "roofline": rl.roofline(gflop, batch, p50, rows[name]["precision"], ceilings)}
    load_after = os.getloadavg()
    if lock:
        lock.close()
    for r in runners.values():
        r.close()

    doc = {"preset": entry.name, "threads": args.threads, "gflop_per_seq": gflop, "ceilings": ceilings,
           "measured": time.strftime("%Y-%m-%d %H:%M %Z"), "load_avg_before_timing": load_before,
           "load_avg_after_timing": load_after,
           "eval": {k: {"clips": len(ds), "signers": len(set(ds.signers))} for k, ds in evals.items()},
           "rows": list(rows.values())}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1, default=str)
    print(markdown(doc, [int(b) for b in args.batch_sizes.split(",")]))
    return 0


def _concat(parts):
    from signflow_zoo.data.loading import SignDataset

    return SignDataset(np.concatenate([p.features for p in parts]), np.concatenate([p.mask for p in parts]),
                       np.concatenate([p.labels for p in parts]), parts[0].class_names,
                       [s for p in parts for s in p.signers])


def markdown(doc: dict, batches: list[int]) -> str:
    rows = [r for r in doc["rows"] if r.get("status") == "ok"]
    base = {f"b{b}_{mode}": next((r["latency"][f"b{b}_{mode}"]["p50_ms"] for r in rows if r["backend"] == "torch-eager"), None)
            for b in batches for mode in ("alone", "interleaved")}
    head = ["backend", "precision"]
    for b in batches:
        head += [f"b{b} p50 ms alone", f"vs eager", f"b{b} p50 interleaved", "vs eager", f"b{b} roofline share"]
    head += ["parity max abs", "top-1 test", "top-1 unseen (95% CI)", "Δ vs fp32 unseen (95% CI)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["backend"], r["precision"]]
        for b in batches:
            for mode in ("alone", "interleaved"):
                p50 = r["latency"][f"b{b}_{mode}"]["p50_ms"]
                ref = base[f"b{b}_{mode}"]
                cells += [f"{p50:.2f}", f"{ref / p50:.2f}x" if ref else "-"]
            share = r["latency"][f"b{b}_alone"]["roofline"]["share"]
            cells.append(f"{100 * share:.0f}%" if share else "-")
        cells.append(f"{r['parity']['max_abs']:.1e}")
        cells.append(f"{r['top1_test']:.1f}%" if "top1_test" in r else "-")
        if "top1_unseen" in r:
            lo, hi = r["wilson_unseen"]
            d = r["vs_fp32_unseen"]
            cells += [f"{r['top1_unseen']:.2f}% ({lo:.1f}-{hi:.1f})", f"{d['delta_pts']:+.2f} ± {d['ci95_pts']:.2f}"]
        else:
            cells += ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    for r in doc["rows"]:
        if r.get("status") != "ok":
            lines.append(f"| {r['backend']} | {r['precision']} | {r['status']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
