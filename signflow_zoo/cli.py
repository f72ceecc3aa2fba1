"""The ``signflow-zoo`` command: parses, calls the library, prints. User errors exit 2 with no traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from . import __version__
from .argtypes import int_list as _int_list
from .argtypes import non_negative_float as _non_negative_float
from .argtypes import positive_float as _positive_float
from .argtypes import positive_int as _positive_int
from .errors import SignFlowError

ENV_TRACEBACK = "SIGNFLOW_ZOO_TRACEBACK"


def _zoo(args):
    from .zoo import Zoo

    return Zoo.load(getattr(args, "zoo", None))


# -- presets -------------------------------------------------------------------------------------
def cmd_presets(args) -> int:
    from tabulate import tabulate

    from .model import build_model, count_parameters, estimate_gflops

    rows = []
    for e in _zoo(args):
        params = count_parameters(build_model(e, num_classes=args.num_classes))
        rows.append({"name": e.name, "d_model": e.d_model, "heads": e.heads, "layers": e.layers, "dim_ff": e.dim_ff,
                     "params": params, "gflop_per_seq": round(estimate_gflops(e, args.num_classes), 3),
                     "use_case": e.use_case})
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        table = [{**r, "params": f"{r['params'] / 1e6:.2f}M"} for r in rows]
        print(tabulate(table, headers="keys", tablefmt="simple"))
        print(f"\nparams counted by instantiating SignTransformer with {args.num_classes} classes; "
              "GFLOP per 64-frame sequence (2 x multiply-accumulates).")
    return 0


# -- backends ------------------------------------------------------------------------------------
def backend_rows() -> tuple[list[dict], list[dict]]:
    from .plugins import get_registry

    reg = get_registry()
    rows, broken = [], [{"plugin": b.name, "package": b.package, "error": b.error} for b in reg.broken]
    for name, be in reg.runners.items():
        av = reg.availability(name)
        rows.append({"name": name, "plugin": be.plugin.name, "package": be.plugin.package, "artifact": be.cls.artifact,
                     "precision": be.cls.precision, "device": be.cls.device_kind, "available": av.ok,
                     "reason": "" if av.ok else av.reason, "detail": av.reason if av.ok else "",
                     "summary": be.cls.summary})
        if av.broken:
            broken.append({"plugin": be.plugin.name, "package": be.plugin.package, "error": f"{name}: {av.reason}"})
    return rows, broken


def cmd_backends(args) -> int:
    from tabulate import tabulate

    rows, broken = backend_rows()
    if args.json:
        print(json.dumps({"backends": rows, "broken_plugins": broken}, indent=1))
        return 0
    table = [[r["name"], f"{r['plugin']} ({r['package']})", r["artifact"], r["precision"],
              "yes" if r["available"] else f"no: {r['reason']}"] for r in rows]
    print(tabulate(table, headers=["backend", "plugin", "artifact", "precision", "available here"], tablefmt="simple"))
    for b in broken:
        print(f"\nbroken plugin {b['plugin']} ({b['package']}): {b['error']}")
    return 0


# -- train / export ------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from .artifacts import checkpoint_path, zoo_home
    from .data import load_data
    from .model import build_model, count_parameters
    from .training import SignTrainer, TrainingConfig

    entry = _zoo(args).get(args.preset)
    splits = load_data(args.data, seed=args.seed)
    cfg = TrainingConfig(num_epochs=args.epochs or entry.epochs, seed=args.seed, use_mlflow=not args.no_track,
                         mlflow_run_name=f"train-{entry.name}", mlflow_tags={"preset": entry.name},
                         **({"learning_rate": args.lr} if args.lr else {}),
                         **({"batch_size": args.batch_size} if args.batch_size else {}))
    cached = checkpoint_path(entry, len(splits.class_names), splits.fingerprint, cfg.cache_key(), zoo_home())
    if args.from_registry:
        return _pull_weights(entry, cached, args.output)
    model = build_model(entry, num_classes=len(splits.class_names))
    print(f"training {entry.name} ({count_parameters(model) / 1e6:.2f}M params) for {cfg.num_epochs} epochs on "
          f"{len(splits.train)} clips, validating on {len(splits.val)} ({splits.spec})", file=sys.stderr)
    trainer = SignTrainer(model, cfg, class_names=list(splits.class_names),
                          metadata={"preset": entry.name, "data_spec": splits.spec, "data_fingerprint": splits.fingerprint})
    res = trainer.fit(splits.train, splits.val)
    test = trainer.evaluate(splits.test)
    out = args.output or cached
    trainer.save_model(out, extra={"test_accuracy": test["top1"]})
    if not args.no_track and not args.output:  # the zoo's own checkpoint: shared through the Model Registry
        from .model_registry import register_checkpoint

        register_checkpoint(out, "dynamo", zoo_home(), lambda msg: print(msg, file=sys.stderr))
    print(json.dumps({"preset": entry.name, "checkpoint": str(out), "train_seconds": round(res["train_seconds"], 1),
                      "epochs_run": res["epochs_run"], "val_accuracy": round(res["val_accuracy"], 4),
                      "test_accuracy": round(test["top1"], 4), "test_macro_f1": round(test["macro_f1"], 4),
                      **{k: None if res.get(k) is None else round(res[k], 4) for k in ("ece_before", "ece_after",
                                                                                        "temperature")},
                      "mlflow_run_id": res.get("run_id")}, indent=1))
    return 0


def _pull_weights(entry, cached, output) -> int:
    """`train --from-registry`: the registered weights of this preset, data and config, into the cache."""
    import shutil

    from .errors import CheckpointError, TrackingError
    from .model_registry import model_name, pull, registry_tracker

    tracker = registry_tracker()
    if not tracker.active:
        raise TrackingError(f"--from-registry: the Model Registry is not reachable ({tracker.reason})")
    if not cached.exists():
        from .artifacts import zoo_home

        if pull(tracker, entry.name, cached, "dynamo", zoo_home(), lambda msg: print(msg, file=sys.stderr)) is None:
            raise CheckpointError(f"--from-registry: no registered version of {model_name(entry.name)} matches this "
                                  "data and training config; train it without --from-registry on one machine")
    if output:
        shutil.copyfile(cached, output)
    print(json.dumps({"preset": entry.name, "checkpoint": str(output or cached), "from_registry": True}, indent=1))
    return 0


def cmd_export(args) -> int:
    from .artifacts import serving_metadata
    from .checkpoint import load_checkpoint
    from .export import export_to_onnx, optimize_onnx_model

    model, meta = load_checkpoint(args.checkpoint)
    out = args.output or os.path.splitext(args.checkpoint)[0] + ".onnx"
    info = export_to_onnx(model, out, metadata=serving_metadata(meta), exporter=args.exporter)
    result = {"export": info.to_dict()}
    if args.optimize:
        kw = meta["model_kwargs"]
        rep = optimize_onnx_model(out, os.path.splitext(out)[0] + ".optimized.onnx", kw["nhead"], kw["d_model"])
        result["optimize"] = {k: v for k, v in rep.to_dict().items() if k not in ("ops_before", "ops_after")}
    print(json.dumps(result, indent=1))
    return 0


# -- bench / sync ----------------------------------------------------------------------------------
def cmd_bench(args) -> int:
    from dataclasses import replace

    from .harness import BenchConfig, run_bench
    from .report import comparison_table, timing_check_table
    from .results import flat_records

    kw = dict(presets=args.preset, backends=args.backends, threads=args.threads, data=args.data, seed=args.seed,
              no_train=args.no_train, retrain=args.retrain, from_registry=args.from_registry, epochs=args.epochs,
              exporter=args.exporter,
              json_path=args.json, experiment=args.experiment, track=not args.no_track, stream=not args.no_stream,
              zoo_file=args.zoo, progress=not args.no_progress)
    if args.batch_sizes:
        kw["batch_sizes"] = args.batch_sizes
    cfg = BenchConfig.quick(**kw) if args.quick else BenchConfig(**kw)
    cfg.check_timing = args.check_timing
    overrides = {"warmup": args.warmup, "min_iters": args.min_iters, "min_time": args.min_time,
                 "schedule": args.schedule, "timeout": args.timeout}
    cfg.timing = replace(cfg.timing, **{k: v for k, v in overrides.items() if v is not None})
    doc = run_bench(cfg)
    flat = flat_records(doc)
    print(comparison_table(flat, fmt="terminal"))
    if args.check_timing:
        print("\n" + timing_check_table(flat, fmt="terminal"))
    print(f"\nresults: {doc['result_file']}")
    for path in doc.get("outputs", []):
        print(f"         {path}")
    return 0


def cmd_sync(args) -> int:
    from pathlib import Path

    from .artifacts import zoo_home
    from .results import sync

    folder = Path(args.results or zoo_home() / "results")
    rep = sync(folder, args.experiment)
    for p in rep.interrupted:
        print(f"{p.name}: its bench stopped before the end; uploaded the presets it had saved", file=sys.stderr)
    for p in rep.running:
        print(f"{p.name}: skipped, a bench is still writing it; sync again when it has finished", file=sys.stderr)
    for p, why in rep.malformed:
        print(f"{p}: skipped, {why}; fix or move it out of {folder}", file=sys.stderr)
    if rep.pending:
        reasons = sorted({why for _, why in rep.pending})
        print(f"uploaded {len(rep.uploaded)} result file(s); {len(rep.pending)} still pending: {'; '.join(reasons)}",
              file=sys.stderr)
        return 1
    print(f"uploaded {len(rep.uploaded)} result file(s); nothing pending in {folder}")
    return 0 if rep.ok else 1


def cmd_doctor(args) -> int:
    from .doctor import run_doctor

    return run_doctor(json_out=args.json)


def cmd_ui(args) -> int:
    import subprocess

    from .tracking import redact, tracking_uri

    uri = tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    print("starting:", redact(" ".join(cmd)), file=sys.stderr)
    return subprocess.call(cmd)


# -- parser ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="signflow-zoo", description="Model zoo and benchmark harness for SignFlow's "
                                "sign-language transformers: which preset, on which runtime, at what accuracy and latency.")
    p.add_argument("--version", action="version", version=f"signflow-zoo {__version__}")
    p.add_argument("--zoo", metavar="PATH", help="extra zoo file with [[entry]] tables (or $SIGNFLOW_ZOO_FILE)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("presets", help="list zoo entries with counted parameters and GFLOP")
    s.add_argument("--num-classes", type=_positive_int, default=100)
    s.add_argument("--json", action="store_true", help="print a JSON list")
    s.set_defaults(func=cmd_presets)

    s = sub.add_parser("backends", help="list registered backends, where they can run, and broken plugins")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_backends)

    s = sub.add_parser("train", help="train a preset (tracked in MLflow) and save a weights-only checkpoint")
    s.add_argument("--preset", required=True)
    s.add_argument("--epochs", type=_positive_int)
    s.add_argument("--lr", type=float)
    s.add_argument("--batch-size", type=_positive_int)
    s.add_argument("--data", default="synthetic",
                   help="synthetic[:opts] | signflow:PATH | lsfb:PATH[?labels=N] | pose:PATH (README: Data)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--output", "-o", help="checkpoint path (default: the zoo cache)")
    s.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    s.add_argument("--from-registry", action="store_true",
                   help="pull the registered weights of this preset, data and config instead of training")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("export", help="export a checkpoint to ONNX (verified) and optionally optimize it")
    s.add_argument("checkpoint")
    s.add_argument("--output", "-o")
    s.add_argument("--exporter", choices=["dynamo", "legacy"], default="dynamo")
    s.add_argument("--optimize", action="store_true")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("bench", help="train/load, export, check parity, time and score presets x backends")
    s.add_argument("--preset", default="lightweight", help="all | NAME | A,B (default: lightweight)")
    s.add_argument("--backends", default="all", help="all | NAME | A,B (default: all)")
    s.add_argument("--batch-sizes", type=_int_list, help="comma-separated (default 1,32; --quick: 1,8)")
    s.add_argument("--threads", type=_positive_int, help="threads for every backend (default: all cores)")
    s.add_argument("--warmup", type=int, help="untimed calls per backend (default 10)")
    s.add_argument("--min-iters", type=_positive_int, help="timed calls per backend, at least (default 20)")
    s.add_argument("--min-time", type=_non_negative_float, help="seconds of timed calls per backend, at least (default 1)")
    s.add_argument("--quick", action="store_true", help="short timing for a smoke run")
    s.add_argument("--schedule", choices=["interleaved", "sequential"],
                   help="interleaved (default): backends take turns in long blocks with a settling gap; "
                        "sequential: one backend after the other")
    s.add_argument("--check-timing", action="store_true",
                   help="also time every backend alone and report solo vs scheduled p50/p99 per batch size")
    s.add_argument("--timeout", type=_positive_float, metavar="SECONDS",
                   help="seconds a backend may take beyond plan for one request before its worker is stopped "
                        "and its row marked timeout (default 300)")
    s.add_argument("--data", default="synthetic",
                   help="synthetic[:opts] | signflow:PATH | lsfb:PATH[?labels=N] | pose:PATH (README: Data)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--epochs", type=_positive_int, help="override the preset's training epochs")
    s.add_argument("--no-train", action="store_true", help="fail instead of training when no checkpoint is cached")
    s.add_argument("--retrain", action="store_true", help="train again even if a checkpoint is cached")
    s.add_argument("--from-registry", action="store_true",
                   help="take weights from the cache or the MLflow Model Registry, never train here (without it, "
                        "a registered version matching the cache key is pulled automatically when one exists)")
    s.add_argument("--exporter", choices=["dynamo", "legacy"], default="dynamo")
    s.add_argument("--json", metavar="PATH", help="also write the result JSON here")
    s.add_argument("--experiment", default="signflow-zoo")
    s.add_argument("--no-track", action="store_true", help="do not log to MLflow (results still saved as JSON)")
    s.add_argument("--no-stream", action="store_true", help="skip the streaming-latency scenario")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("sync", help="upload result files that could not be tracked earlier (idempotent)")
    s.add_argument("--results", metavar="DIR", help="results folder (default: $SIGNFLOW_ZOO_HOME/results)")
    s.add_argument("--experiment", help="experiment for files that record none (default: signflow-zoo); "
                                        "every other file goes to the experiment its bench used")
    s.set_defaults(func=cmd_sync)

    s = sub.add_parser("doctor", help="check versions, tracking store, zoo, export and every backend")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_doctor)

    s = sub.add_parser("ui", help="start the MLflow UI on the current tracking store")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=5000)
    s.set_defaults(func=cmd_ui)

    for modname in ("cli_report", "cli_serve"):
        try:
            mod = __import__(f"signflow_zoo.{modname}", fromlist=["register"])
        except ImportError:
            continue
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.zoo:
        os.environ["SIGNFLOW_ZOO_FILE"] = args.zoo
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        return int(args.func(args) or 0)
    except SignFlowError as exc:
        if os.environ.get(ENV_TRACEBACK):
            raise
        print(f"signflow-zoo {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
