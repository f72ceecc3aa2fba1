"""``signflow-zoo report``: compare bench results kept in MLflow (tables, preset vs preset, plots)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import report
from .argtypes import in_range
from .limits import BATCH_SIZE, REPORT_SINCE_DAYS
from .output_paths import check_output_file


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to the main CLI's subparsers."""
    p = subparsers.add_parser(
        "report",
        help="compare bench results from MLflow: tables, preset vs preset, plots",
        description="Build comparison tables and plots from the bench runs stored in MLflow "
        "(MLFLOW_TRACKING_URI, or MLflow's default local store). By default only the newest run per "
        "(preset, backend, host) is shown.",
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
    p.add_argument("--compare", metavar="A,B",
                   help="print the preset-vs-preset table (e.g. baseline,large) instead of the full table")
    p.add_argument("--plots", metavar="DIR", help="also write the plots into DIR and print their paths")
    p.add_argument("--batch-size", type=in_range(BATCH_SIZE), default=1,
                   help=f"batch size for the Pareto plot (default: %(default)s); {BATCH_SIZE.what}")
    p.set_defaults(func=handler)
    return p


def handler(args: argparse.Namespace) -> int:
    """Python: ``report.collect_records(..., required=True)``, then ``report.comparison_table(records, fmt)``
    (or ``compare_presets_table``) and ``report.plot_pareto``."""
    compare = _pair(args.compare) if args.compare else None
    plot = Path(args.plots) / f"pareto_b{args.batch_size}.png" if args.plots else None
    if plot is not None:
        check_output_file(plot, "--plots")  # before the store is read
    records = report.collect_records(
        experiment=args.experiment, preset=args.preset, backend=args.backend, host=args.host,
        since=args.since, latest=not args.all_runs, required=True,
    )
    if compare:
        print(report.compare_presets_table(records, a=compare[0], b=compare[1], fmt=args.format))
    else:
        print(report.comparison_table(records, fmt=args.format))
    if args.plots:
        path = report.plot_pareto(records, plot, batch_size=args.batch_size)
        # csv/json on stdout stay machine-readable: the path goes to stderr then.
        out = sys.stderr if args.format in ("csv", "json") else sys.stdout
        print(f"wrote {path}", file=out)
    return 0


def _pair(spec: str) -> tuple[str, str]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if len(names) != 2:
        raise report.ReportError(f"--compare takes two presets separated by a comma, e.g. baseline,large; got {spec!r}")
    return names[0], names[1]
