"""The ``signflow-zoo`` command: parses, calls the library, prints.

Every command is one library call a user could make from Python (each command's docstring names it).
User errors exit 2 with one line on stderr and no traceback (``SIGNFLOW_ZOO_TRACEBACK=1`` shows one);
numbers outside their range (:mod:`signflow_zoo.common.limits`) stop at parsing. Output piped into a reader
that stops early (``| head``) ends quietly with exit 141, like other command-line tools.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from signflow_zoo import __version__

from signflow_zoo.common import limits
from signflow_zoo.cli import report as cli_report
from signflow_zoo.cli import serve as cli_serve
from signflow_zoo.cli.argtypes import float_in, in_range, int_list_in
from signflow_zoo.common.errors import SignFlowError
from signflow_zoo.common.text import printable
from signflow_zoo.results.store import EXPERIMENT

ENV_TRACEBACK = "SIGNFLOW_ZOO_TRACEBACK"
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader went away


def _zoo(args):
    from signflow_zoo.model.zoo import Zoo

    return Zoo.load(getattr(args, "zoo", None))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- presets / backends --------------------------------------------------------------------------
def cmd_presets(args) -> int:
    """Python: ``signflow_zoo.describe_presets(zoo, num_classes)``."""
    from tabulate import tabulate

    from signflow_zoo.model.presets import describe_presets

    rows = describe_presets(_zoo(args), num_classes=args.num_classes)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    table = [{**r, "params": f"{r['params'] / 1e6:.2f}M"} for r in rows]
    print(tabulate(table, headers="keys", tablefmt="simple"))
    print(f"\nparams counted by instantiating SignTransformer with {args.num_classes} classes; "
          "GFLOP per 64-frame sequence (2 x multiply-accumulates).")
    return 0


def cmd_backends(args) -> int:
    """Python: ``signflow_zoo.describe_backends()``."""
    from tabulate import tabulate

    from signflow_zoo.cli.output import command_output
    from signflow_zoo.plugins import describe_backends

    with command_output() as out:  # plugins print to stderr, not into the table or the JSON
        rows, broken = describe_backends()
        if args.json:
            print(json.dumps({"backends": rows, "broken_plugins": broken}, indent=1), file=out)
            return 0
        table = [[r["name"], f"{r['plugin']} ({r['package']})", r["artifact"], r["precision"],
                  "yes" if r["available"] else f"no: {r['reason']}"] for r in rows]
        print(tabulate(table, headers=["backend", "plugin", "artifact", "precision", "available here"],
                       tablefmt="simple"), file=out)
        for b in broken:
            print(f"\nbroken plugin {b['plugin']} ({b['package']}): {b['error']}", file=out)
    return 0


# -- train / export ------------------------------------------------------------------------------
def cmd_train(args) -> int:
    """Python: ``signflow_zoo.train_preset(preset, data, output=..., epochs=..., ...)``."""
    from signflow_zoo.bench.weights import train_preset

    summary = train_preset(args.preset, args.data, output=args.output, epochs=args.epochs, seed=args.seed,
                           learning_rate=args.lr, batch_size=args.batch_size, track=not args.no_track,
                           progress=not args.no_progress, from_registry=args.from_registry, zoo_file=args.zoo,
                           log=_log)
    print(json.dumps(summary, indent=1))
    return 0


def cmd_export(args) -> int:
    """Python: ``signflow_zoo.export_checkpoint(checkpoint, output, exporter, optimize)``."""
    from signflow_zoo.model.export import export_checkpoint

    print(json.dumps(export_checkpoint(args.checkpoint, args.output, args.exporter, args.optimize), indent=1))
    return 0


def cmd_import_original(args) -> int:
    """Python: ``signflow_zoo.import_original(checkpoint, labels, output, heads=...)``."""
    from signflow_zoo.model.original import import_original

    summary = import_original(args.checkpoint, args.labels, args.output, heads=args.heads)
    for note in summary["notes"]:
        _log(f"note: {note}")
    print(json.dumps(summary, indent=1))
    return 0


# -- bench / sync ----------------------------------------------------------------------------------
def cmd_bench(args) -> int:
    """Python: ``signflow_zoo.run_bench(signflow_zoo.BenchConfig(...))``; the table is ``comparison_table``."""
    from dataclasses import replace

    from signflow_zoo.bench.harness import BenchConfig, run_bench
    from signflow_zoo.report import comparison_table, deployment_table, timing_check_table
    from signflow_zoo.results.files import flat_records

    kw = dict(presets=args.preset, model=args.model, labels=args.labels, backends=args.backends, threads=args.threads,
              data=args.data, seed=args.seed,
              no_train=args.no_train, retrain=args.retrain, from_registry=args.from_registry, epochs=args.epochs,
              exporter=args.exporter,
              json_path=args.json, experiment=args.experiment, track=not args.no_track, stream=not args.no_stream,
              zoo_file=args.zoo, progress=not args.no_progress, scenarios=args.scenarios,
              deadline_ms=args.deadline_ms, max_batch_wait_ms=args.max_batch_wait_ms, bound_ms=args.bound_ms)
    if args.batch_sizes:
        kw["batch_sizes"] = args.batch_sizes
    cfg = BenchConfig.quick(**kw) if args.quick else BenchConfig(**kw)
    cfg.check_timing = args.check_timing
    overrides = {"warmup": args.warmup, "min_iters": args.min_iters, "tail_iters": args.tail_iters,
                 "min_time": args.min_time,
                 "schedule": args.schedule, "timeout": args.timeout}
    cfg.timing = replace(cfg.timing, **{k: v for k, v in overrides.items() if v is not None})
    if args.cluster is not None:
        return _bench_cluster(cfg, args)
    if args.hosts != "all" or args.no_resume:
        raise SignFlowError("--hosts and --no-resume go with --cluster ADDRESS (a Ray cluster's nodes)")
    doc = run_bench(cfg)
    flat = flat_records(doc)
    print(comparison_table(flat, fmt="terminal"))
    deployment = deployment_table(flat, fmt="terminal")
    if deployment:
        print("\ndeployment:\n" + deployment)
    if args.check_timing:
        print("\n" + timing_check_table(flat, fmt="terminal"))
    print(f"\nresults: {doc['result_file']}")
    for path in doc.get("outputs", []):
        print(f"         {path}")
    return 0


def _bench_cluster(cfg, args) -> int:
    """Python: ``signflow_zoo.cluster.driver.run_cluster_bench(config, address, hosts)``; the table is
    ``report.by_host_table`` of the cluster run's records. Exit 1 when cells were lost (rerun to fill them)."""
    from signflow_zoo.cluster.driver import run_cluster_bench
    from signflow_zoo.cluster.summary import print_summary

    doc = run_cluster_bench(cfg, args.cluster, hosts=args.hosts, resume=not args.no_resume, log=_log)
    return print_summary(doc, cfg, _log)


def cmd_sync(args) -> int:
    """Python: ``signflow_zoo.sync_results(folder, experiment)``.

    Every file on its own: a bad file (unreadable, too deep, wrong shape, refused by the store) is named with
    its reason and the others are uploaded. Exit 0 when everything readable was uploaded (files a running
    bench holds are left for later), 1 when a file was skipped or is still pending (the store is down or
    its lock is held), 2 for a usage error."""
    from pathlib import Path

    from signflow_zoo.common.cachefiles import zoo_home
    from signflow_zoo.results.files import sync

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
    skipped = f"; {len(rep.malformed)} skipped (named above)" if rep.malformed else ""
    print(f"uploaded {len(rep.uploaded)} result file(s){skipped}; nothing pending in {folder}")
    return 0 if rep.ok else 1


def cmd_doctor(args) -> int:
    """Python: ``signflow_zoo.cli.doctor.run_doctor(json_out)``."""
    from signflow_zoo.cli.doctor import run_doctor
    from signflow_zoo.cli.output import command_output

    with command_output() as out:  # plugins' availability() may print: to stderr, not into the report
        return run_doctor(json_out=args.json, out=out)


def cmd_ui(args) -> int:
    """Python: ``subprocess.call(ui_command(host, port), env=ui_environment())``, both from
    ``signflow_zoo.results.store``: the store's URI, which may hold a password, goes to the child in its
    environment (``MLFLOW_BACKEND_STORE_URI``), never on its command line (``ps`` shows that to every user)."""
    import subprocess

    from signflow_zoo.results.store import redact, redact_uri, tracking_uri, ui_command, ui_environment

    uri = tracking_uri()
    cmd = ui_command(args.host, args.port)
    print("starting:", redact(" ".join(cmd)), f"(store {redact_uri(uri)})", file=sys.stderr)
    return subprocess.call(cmd, env=ui_environment(uri))


# -- parser ----------------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``signflow-zoo bench: error: argument --seed: ...``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see `{self.prog} --help`)\n")

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = super().parse_known_args(args, namespace)
        for action in self._actions:  # argparse turns `--output=--` into [] without calling the type
            if action.nargs is None and isinstance(getattr(ns, action.dest, None), list):
                name = "/".join(action.option_strings) or action.metavar or action.dest
                self.error(f"argument {name}: expected one argument")
        return ns, extras


def _ranged(parser, flag: str, help: str, **kw) -> None:
    """An option whose number must lie in ``limits.CLI_OPTIONS[flag]``; the range ends its help text."""
    r = limits.CLI_OPTIONS[flag]
    parser.add_argument(flag, type=in_range(r), help=f"{help}; {r.what}", **kw)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="signflow-zoo", description="Model zoo and benchmark harness for SignFlow's "
               "sign-language transformers: which preset, on which runtime, at what accuracy and latency.")
    p.add_argument("--version", action="version", version=f"signflow-zoo {__version__}")
    p.add_argument("--zoo", metavar="PATH", help="extra zoo file with [[entry]] tables (or $SIGNFLOW_ZOO_FILE)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("presets", help="list zoo entries with counted parameters and GFLOP")
    _ranged(s, "--num-classes", "classes of the model whose parameters are counted (default 100)", default=100)
    s.add_argument("--json", action="store_true", help="print a JSON list")
    s.set_defaults(func=cmd_presets)

    s = sub.add_parser("backends", help="list registered backends, where they can run, and broken plugins")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_backends)

    s = sub.add_parser("train", help="train a preset (tracked in MLflow) and save a weights-only checkpoint")
    s.add_argument("--preset", required=True)
    _ranged(s, "--epochs", "training epochs (default: the preset's)")
    _ranged(s, "--lr", "peak learning rate (default 1e-3)")
    _ranged(s, "--batch-size", "training batch size (default 32)")
    s.add_argument("--data", default="synthetic",
                   help="synthetic[:opts] | signflow:PATH | lsfb:PATH[?labels=N] | pose:PATH (docs/data.md)")
    _ranged(s, "--seed", "seed of the data split, initialisation and augmentation (default 0)", default=0)
    s.add_argument("--output", "-o", help="checkpoint path (default: the zoo cache, where bench finds it)")
    s.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (bars draw only on a terminal anyway)")
    s.add_argument("--from-registry", action="store_true",
                   help="pull the registered weights of this preset, data and config instead of training")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("export", help="export a checkpoint to ONNX (verified) and optionally optimize it")
    s.add_argument("checkpoint")
    s.add_argument("--output", "-o", help="ONNX file (default: the checkpoint's name with .onnx)")
    s.add_argument("--exporter", choices=["dynamo", "legacy"], default="dynamo")
    s.add_argument("--optimize", action="store_true")
    s.set_defaults(func=cmd_export)

    from signflow_zoo.model.zoo import SIZE_BOUNDS  # light: no torch

    s = sub.add_parser("import-original", help="convert a checkpoint of the original SignFlow into a signflow-zoo "
                       "checkpoint (labels, sizes from the shapes, checked by logits)")
    s.add_argument("checkpoint", metavar="CHECKPOINT", help="what the original's SignTrainer.save_model writes, or a "
                   "bare state dict")
    s.add_argument("--labels", metavar="FILE", help="class labels in output order: a JSON list, or one label per line "
                   "(default: the checkpoint's class_labels)")
    s.add_argument("--output", "-o", required=True, metavar="PATH", help="the signflow-zoo checkpoint to write (.pt)")
    heads = limits.Range(int, *SIZE_BOUNDS["nhead"])
    s.add_argument("--heads", type=in_range(heads), metavar="N", help="attention heads, for a bare state dict only (no "
                   f"weight's shape holds them; a checkpoint dict records its nhead); {heads.what}")
    s.set_defaults(func=cmd_import_original)

    s = sub.add_parser("bench", help="train/load, export, check parity, time and score presets (or a model file) "
                       "x backends")
    what = s.add_mutually_exclusive_group()  # argparse: "argument --model: not allowed with argument --preset"
    what.add_argument("--preset", default="lightweight", help="all | NAME | A,B (default: lightweight)")
    what.add_argument("--model", metavar="FILE", help="bench this model file instead of presets: a signflow-zoo "
                      "checkpoint (.pt) or an ONNX file; its rows' preset is model:<file stem>")
    s.add_argument("--labels", metavar="FILE", help="with --model: the model's labels in output order (one per line, "
                   "or a JSON list), for a file that carries none or to replace its own; they must be the data's classes")
    s.add_argument("--backends", default="all", help="all | NAME | A,B (default: all)")
    bs = limits.CLI_OPTIONS["--batch-sizes"]
    s.add_argument("--batch-sizes", type=int_list_in(bs, limits.MAX_BATCH_SIZES),
                   help=f"comma-separated (default 1,32; --quick: 1,8); each {bs.text}, at most "
                        f"{limits.MAX_BATCH_SIZES} sizes, and what fits in this machine's memory")
    _ranged(s, "--threads", "threads for every backend (default: all cores; at most 4 per core, 256 in all)")
    _ranged(s, "--warmup", "untimed calls per backend (default 10)")
    _ranged(s, "--min-iters", "timed calls per backend, at least (default 20)")
    _ranged(s, "--tail-iters", "timed calls per backend at batch 1, at least: enough for a p99 with an upper bound at "
            "99%% confidence needs 459 (default 460; --quick: 0)")
    _ranged(s, "--min-time", "seconds of timed calls per backend, at least (default 1)")
    s.add_argument("--quick", action="store_true", help="short timing for a smoke run")
    s.add_argument("--schedule", choices=["interleaved", "sequential"],
                   help="interleaved (default): backends take turns in long blocks with a settling gap; "
                        "sequential: one backend after the other")
    s.add_argument("--check-timing", action="store_true",
                   help="also time every backend alone and report solo vs scheduled p50/p99 per batch size")
    _ranged(s, "--timeout", "seconds a backend may take beyond plan for one request before its worker is stopped "
            "and its row marked timeout (default 300)", metavar="SECONDS")
    s.add_argument("--data", default="synthetic",
                   help="synthetic[:opts] | signflow:PATH | lsfb:PATH[?labels=N] | pose:PATH (docs/data.md)")
    _ranged(s, "--seed", "seed of the data split, training and parity inputs (default 0)", default=0)
    _ranged(s, "--epochs", "override the preset's training epochs")
    s.add_argument("--no-train", action="store_true", help="fail instead of training when no checkpoint is cached")
    s.add_argument("--retrain", action="store_true", help="train again even if a checkpoint is cached")
    s.add_argument("--from-registry", action="store_true",
                   help="take weights from the cache or the MLflow Model Registry, never train here (without it, "
                        "a registered version matching the cache key is pulled automatically when one exists)")
    s.add_argument("--exporter", choices=["dynamo", "legacy"], default="dynamo")
    s.add_argument("--json", metavar="PATH", help="also write the result JSON here (checked before the bench starts)")
    s.add_argument("--experiment", default=EXPERIMENT)
    s.add_argument("--no-track", action="store_true", help="do not log to MLflow (results still saved as JSON)")
    s.add_argument("--no-stream", action="store_true", help="skip the streaming-latency scenario")
    s.add_argument("--scenarios", default="latency", metavar="LIST",
                   help="what to measure, comma-separated or all: latency (closed-loop timing and the replayed stream), "
                        "capacity (live 30 fps signers within --deadline-ms), server (Poisson requests, highest rate "
                        "with p99 within --bound-ms), offline (best throughput over batch sizes), cold-start (fresh "
                        "process to first prediction); default latency (docs/deployment.md)")
    s.add_argument("--deadline-ms", type=float_in(1.0, 60_000.0), metavar="MS", default=100.0,
                   help="capacity: sign end to prediction p99 within this (default 100: the limit of an immediate "
                        "response, on top of the 333 ms of stillness that ends a sign)")
    s.add_argument("--max-batch-wait-ms", type=float_in(0.0, 1_000.0), metavar="MS", default=10.0,
                   help="capacity, batched: a sign end waits up to this for others to run as one batch (default 10; "
                        "0: no batched search)")
    s.add_argument("--bound-ms", type=float_in(1.0, 60_000.0), metavar="MS", default=100.0,
                   help="server: request latency p99 within this (default 100)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (bars draw only on a terminal anyway)")
    s.add_argument("--cluster", metavar="ADDRESS",
                   help="run the bench on the nodes of a Ray cluster, one task per node holding all its CPUs and GPUs: "
                        "auto, HOST:PORT (the head's GCS address) or ray://HOST:PORT; needs signflow-zoo[ray] and a "
                        "tracking server every node reaches (docs/cluster.md)")
    s.add_argument("--hosts", default="all", metavar="all|NAME,...",
                   help="with --cluster: the nodes to bench on, by their signflow-zoo-host label, else hostname "
                        "(default: all)")
    s.add_argument("--no-resume", action="store_true",
                   help="with --cluster: start a new cluster run even when the same command left one with lost cells "
                        "(by default only the missing cells run again)")
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
    _ranged(s, "--port", "port of the UI (default 5000)", default=5000)
    s.set_defaults(func=cmd_ui)

    cli_report.register(sub)  # report
    cli_serve.register(sub)  # predict, stream
    return p


def _one_line(message: str) -> str:
    """A message on one line: its lines joined, a list after a colon kept readable."""
    out = ""
    for line in (line.strip() for line in str(message).splitlines()):
        if line:
            out = line if not out else out + (" " if out.endswith(":") else "; ") + line
    return out


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (2), --help and --version (0): a code, not an exception, for callers
        return exc.code if isinstance(exc.code, int) else 2
    previous_zoo = os.environ.get("SIGNFLOW_ZOO_FILE")
    if args.zoo:  # for this command only: main() called in a process must leave its environment as it was
        os.environ["SIGNFLOW_ZOO_FILE"] = args.zoo
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        return int(args.func(args) or 0)
    except SignFlowError as exc:
        if os.environ.get(ENV_TRACEBACK):
            raise
        print(f"signflow-zoo {args.command}: error: {printable(_one_line(str(exc)))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if args.zoo:
            if previous_zoo is None:
                os.environ.pop("SIGNFLOW_ZOO_FILE", None)
            else:
                os.environ["SIGNFLOW_ZOO_FILE"] = previous_zoo


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status is returned (the console script passes it to ``sys.exit``)."""
    try:
        code = _run(argv)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at interpreter exit
    except BrokenPipeError:
        _stdout_to_devnull()
        code = EXIT_BROKEN_PIPE
    if argv is None:  # the console script, about to exit: a plugin's thread left running must not keep it
        from signflow_zoo.cli.output import exit_despite_threads

        exit_despite_threads(code)
    return code


def _stdout_to_devnull() -> None:
    """After the reader of stdout went away: point stdout at /dev/null so that the final flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout replaced by an object without a descriptor
        pass


if __name__ == "__main__":
    sys.exit(main())
