"""``signflow-zoo report``: compare bench results kept in MLflow (tables, preset vs preset, plots)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from signflow_zoo import report
from signflow_zoo.cli.argtypes import in_range
from signflow_zoo.common.limits import BATCH_SIZE, REPORT_SINCE_DAYS, THRESHOLD
from signflow_zoo.common.output_paths import check_output_file


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to the main CLI's subparsers."""
    p = subparsers.add_parser(
        "report",
        help="compare bench results from MLflow: tables, preset vs preset, plots",
        description="Build comparison tables and plots from the bench runs stored in MLflow "
        "(MLFLOW_TRACKING_URI, or MLflow's default local store). By default only the newest run per "
        "(preset, backend, host) is shown. With --compare A B: two sets of runs (result files, MLflow runs, "
        "commits, hosts, time windows) compared as latency distributions, with a 95%% interval and a verdict.",
    )
    p.add_argument("--experiment", default=report.EXPERIMENT, help="MLflow experiment (default: %(default)s)")
    p.add_argument("--preset", help="only these presets (comma-separated)")
    p.add_argument("--backend", help="only these backends (comma-separated)")
    p.add_argument("--host", help="only runs from these hosts or host classes (comma-separated)")
    p.add_argument("--since", help="only runs started since: an age (7d, 24h, 30m, 2w; at most "
                   f"{REPORT_SINCE_DAYS}d) or an ISO date/time")
    p.add_argument("--all-runs", action="store_true",
                   help="show every matching run, not only the newest per (preset, backend, host)")
    p.add_argument("--format", choices=report.FORMATS, default="terminal", help="table format (default: %(default)s)")
    p.add_argument("--wide", action="store_true",
                   help="the full table in the terminal: one row per preset and backend with p99, seq/s, params, "
                   "roofline share, accuracy change, agreement, parity and memory for each batch size (the default "
                   f"fits {report.TERMINAL_WIDTH} columns: p50, speedup and top-1 with their 95%% intervals, one "
                   "folded line per unavailable backend; markdown, csv and json are always complete)")
    p.add_argument("--compare", nargs="+", metavar="SIDE",
                   help="--compare A B: two sets of bench runs compared as distributions, per preset, backend and "
                   "batch: B/A of the median latency with a 95%% interval (bootstrap over blocks) and a verdict "
                   "(slower/faster/indistinguishable). A side is a result file (PATH.json), an MLflow run id "
                   "(run:ID), or filters joined by commas: commit:SHA, host:NAME, since:7d|DATE, until:7d|DATE "
                   "(searched in $SIGNFLOW_ZOO_HOME/results and MLflow). Across host classes normalized values are "
                   "compared. One value A,B of two presets prints the preset-vs-preset table (old spelling of "
                   "--compare-presets)")
    p.add_argument("--compare-presets", metavar="A,B",
                   help="print the preset-vs-preset table (e.g. baseline,large) instead of the full table")
    p.add_argument("--threshold", type=in_range(THRESHOLD), default=None,
                   help="with --compare A B: the practical difference below which no verdict says slower or faster "
                   f"(default: 0.10 when a side holds one run, 0.02 when both hold several); {THRESHOLD.what}")
    p.add_argument("--normalized", action="store_true",
                   help="with --compare A B: compare normalized values (calls over the reference workload) even "
                   "within one host class (across classes they always are)")
    p.add_argument("--deployment", action="store_true",
                   help="print only the deployment table (bench --scenarios: streams within the deadline, server rate, "
                        "offline throughput, cold start), in --format; terminal and markdown show it below the main "
                        "table anyway")
    p.add_argument("--cluster-run", metavar="RUN_ID",
                   help="only the results of one `bench --cluster` run (its MLflow run id, printed by the command); "
                        "with --by-host its lost cells are shown too")
    p.add_argument("--by-host", nargs="?", const="host", choices=("host", "class"),
                   help="instead of the comparison table: one row per preset and backend, one column per host (or "
                   "per host class with --by-host class: the newest result of any of its hosts), each cell the "
                   "within-host speedup over torch-eager with its 95%% interval and the host's own p50 ms at "
                   "--batch-size; csv/json: one row per cell")
    p.add_argument("--plots", metavar="DIR", help="also write the plots into DIR and print their paths")
    p.add_argument("--batch-size", type=in_range(BATCH_SIZE), default=1,
                   help=f"batch size for the Pareto plot and --by-host (default: %(default)s); {BATCH_SIZE.what}")
    p.set_defaults(func=handler)
    return p


def handler(args: argparse.Namespace) -> int:
    """Python: ``report.collect_records(..., required=True)``, then ``report.comparison_table(records, fmt, wide)``
    (or ``compare_presets_table``, or with ``--by-host``: ``report.by_host_table(records, fmt, by, batch_size)``)
    and ``report.plot_pareto``; ``--compare A B``: ``report.compare_runs(A, B, fmt)``."""
    if args.by_host:
        _check_by_host(args)
    sides, compare = _compare_args(args)
    if sides:
        print(report.compare_runs(sides[0], sides[1], fmt=args.format, threshold=args.threshold,
                                  normalize=True if args.normalized else None, preset=args.preset,
                                  backend=args.backend, experiment=args.experiment))
        return 0
    plot = Path(args.plots) / f"pareto_b{args.batch_size}.png" if args.plots else None
    if plot is not None:
        check_output_file(plot, "--plots")  # before the store is read
    records = report.collect_records(
        experiment=args.experiment, preset=args.preset, backend=args.backend, host=args.host,
        since=args.since, latest=not args.all_runs, required=not args.cluster_run, cluster_run=args.cluster_run,
    )
    lost = report.cluster_run_lost(args.cluster_run, preset=args.preset, backend=args.backend, host=args.host,
                                   records=records) if args.cluster_run else []
    if not records and not lost:
        raise report.ReportError(f"cluster run {args.cluster_run} has no results (with these filters) and no lost cells")
    deployment = report.deployment_table(records, fmt=args.format)
    if args.by_host:
        print(report.by_host_table(records, fmt=args.format, by=args.by_host, batch_size=args.batch_size, lost=lost))
    elif args.deployment:
        if not deployment:
            raise report.ReportError("no deployment results among these runs: run bench with --scenarios, e.g. "
                                     "--scenarios capacity,server,offline,cold-start")
        print(deployment)
    elif compare:
        print(report.compare_presets_table(records, a=compare[0], b=compare[1], fmt=args.format))
    else:
        print(report.comparison_table(records, fmt=args.format, wide=True if args.wide else None))
        if deployment and args.format in ("terminal", "markdown"):  # csv/json stay one table: --deployment
            print("\n" + ("## Deployment\n\n" if args.format == "markdown" else "deployment:\n") + deployment)
    if plot is not None:
        # csv/json on stdout stay machine-readable: the path goes to stderr then.
        out = sys.stderr if args.format in ("csv", "json") else sys.stdout
        capacity = any(r.get("capacity_streams") is not None for r in records)
        try:
            print(f"wrote {report.plot_pareto(records, plot, batch_size=args.batch_size)}", file=out)
        except report.ReportError as exc:
            if not capacity:
                raise
            print(f"note: no Pareto plot: {exc}", file=sys.stderr)  # deployment runs only: the capacity plot still
        if capacity:
            print(f"wrote {report.plot_capacity(records, plot.with_name('streams-per-machine.png'))}", file=out)
    return 0


def _check_by_host(args: argparse.Namespace) -> None:
    """--by-host is a table of its own, of the newest run per cell: the flags of other tables do not go with it."""
    given = [flag for flag, on in (("--compare", args.compare), ("--compare-presets", args.compare_presets),
                                   ("--deployment", args.deployment), ("--wide", args.wide),
                                   ("--all-runs", args.all_runs)) if on]
    if given:
        raise report.ReportError(f"--by-host does not go with {', '.join(given)}: it prints its own table, of the "
                                 "newest run per preset, backend and host; run them as separate commands")


def _compare_args(args: argparse.Namespace) -> tuple[list[str] | None, tuple[str, str] | None]:
    """(two sides of ``--compare A B``, or None; two presets of ``--compare-presets``/``--compare A,B``, or None)."""
    values = list(args.compare or [])
    if args.compare_presets and values:
        raise report.ReportError("give --compare or --compare-presets, not both")
    if args.compare_presets:
        return None, _pair(args.compare_presets, "--compare-presets")
    if len(values) == 1 and "," in values[0] and ":" not in values[0] and not values[0].endswith(".json"):
        return None, _pair(values[0], "--compare")  # the old spelling of --compare-presets
    if (any(v.strip().endswith(",") or v.strip().startswith(",") for v in values)
            and all(":" not in v and not v.endswith(".json") for v in values)):
        return None, _pair("".join(values), "--compare")  # --compare baseline, large
    if not values:
        return None, None
    if len(values) != 2:
        raise report.ReportError(
            f"--compare takes two sides, e.g. --compare bench-a.json bench-b.json or --compare commit:abc123 "
            f"commit:def456 (or two presets separated by a comma, e.g. --compare-presets baseline,large); got "
            f"{' '.join(repr(v) for v in values)}")
    given = [flag for flag, on in (("--host", args.host), ("--since", args.since), ("--all-runs", args.all_runs),
                                   ("--plots", args.plots)) if on]
    if given:
        raise report.ReportError(f"{', '.join(given)} select runs for the MLflow table, not for --compare A B; put "
                                 "filters into each side instead, e.g. --compare host:lab-1,since:7d host:lab-2,since:7d")
    return values, None


def _pair(spec: str, flag: str) -> tuple[str, str]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if len(names) != 2:
        raise report.ReportError(f"{flag} takes two presets separated by a comma, e.g. baseline,large; got {spec!r}")
    return names[0], names[1]
