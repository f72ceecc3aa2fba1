"""Tables and plots of bench results, under one name: ``from signflow_zoo import report``.

The work is done in these modules, re-exported here so that ``report.comparison_table(...)`` and friends
keep working:

* :mod:`signflow_zoo.report.records` -- flat records read back from MLflow (:func:`collect_records`,
  :func:`flatten_run`, :func:`parse_since`) and the accessors tables and plots read them with;
* :mod:`signflow_zoo.report.tables` -- comparison, preset-vs-preset and timing-check tables;
* :mod:`signflow_zoo.report.deployment` -- the deployment table and the streams-per-machine plot;
* :mod:`signflow_zoo.report.hosts` -- the by-host table (one column per host or host class);
* :mod:`signflow_zoo.report.plots` -- Pareto, latency and confusion plots, and :func:`write_report`.

The store's experiment and tag names live in :mod:`signflow_zoo.results.store`.
"""

from __future__ import annotations

from signflow_zoo.results.store import EXPERIMENT, KIND_RECORD, KIND_TAG
from signflow_zoo.report.compare import (DEFAULT_THRESHOLD, VERDICTS, RunComparison, Side, compare_runs, compare_sides,
                             render_comparison, select_side)
from signflow_zoo.report.plots import (pareto_front, plot_confusion, plot_latency_distributions, plot_pareto,
                           write_report)
from signflow_zoo.report.deployment import deployment_table, plot_capacity
from signflow_zoo.report.hosts import by_host_table
from signflow_zoo.report.records import (REFERENCE_BACKEND, ReportError, batch_sizes_of, cluster_run_lost,
                                         collect_records, flatten_run, parse_since)
from signflow_zoo.report.tables import (FORMATS, INVALID_MARK, NOISY_LEGEND, NOISY_MARK, SAME_LEGEND, SAME_MARK,
                            TERMINAL_WIDTH, compare_presets_table, comparison_table, drift_lines, fmt_count, fmt_ms,
                            timing_check_table)

__all__ = [
    "EXPERIMENT", "KIND_RECORD", "KIND_TAG", "REFERENCE_BACKEND", "FORMATS", "NOISY_LEGEND", "NOISY_MARK",
    "SAME_LEGEND", "SAME_MARK", "INVALID_MARK", "TERMINAL_WIDTH", "ReportError", "batch_sizes_of", "cluster_run_lost", "collect_records",
    "flatten_run", "parse_since",
    "compare_presets_table", "comparison_table", "drift_lines", "fmt_count", "fmt_ms", "timing_check_table",
    "pareto_front", "plot_confusion", "plot_latency_distributions", "plot_pareto", "write_report",
    "DEFAULT_THRESHOLD", "VERDICTS", "RunComparison", "Side", "compare_runs", "compare_sides", "render_comparison",
    "select_side", "deployment_table", "plot_capacity", "by_host_table",
]
