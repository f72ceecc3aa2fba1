"""What ``bench --cluster`` prints at the end: the hosts side by side (``report.by_host_table`` of the cluster run's
records in the store), the cells that did not run with their reasons, and where the cluster document is."""

from __future__ import annotations

from typing import Any, Callable

from signflow_zoo import report
from signflow_zoo.bench.harness import BenchConfig
from signflow_zoo.common.errors import SignFlowError
from signflow_zoo.results.store import redact


def not_run(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The cells without a result: lost (node died, cancelled) or failed on the node before any result."""
    return [c for c in doc["cells"] if not c.get("ran", True) or c["status"] == "pending"]


def print_summary(doc: dict[str, Any], cfg: BenchConfig, log: Callable[[str], None]) -> int:
    """The by-host table and the missing cells; 0 when the cluster run is complete, 1 when cells are missing."""
    missing = not_run(doc)
    # in the table: every cell without a record in the store (missing ones, and backends not installed on a node)
    lost = [{k: c[k] for k in ("host", "preset", "backend", "status", "reason")} for c in doc["cells"]
            if not c.get("run_id")]
    try:
        records = report.collect_records(experiment=cfg.experiment, cluster_run=doc["cluster_run_id"], latest=True)
        print(report.by_host_table(records, fmt="terminal", batch_size=cfg.batch_sizes[0], lost=lost))
    except SignFlowError as exc:  # e.g. nothing ran at all: the cells below say why
        log(f"note: no table: {exc}")
    except Exception as exc:  # noqa: BLE001 - the store failed after the run: the document still holds the cells
        log(f"warning: reading the results back failed ({redact(str(exc))}); they are in the cluster run and "
            f"{doc.get('result_file')}")
    print(f"\ncluster run {doc['cluster_run_id']} ({doc['state']}); document: {doc.get('result_file')}")
    if doc.get("unchecked_hosts"):
        print(f"hosts {', '.join(doc['unchecked_hosts'])} of this cluster run were not selected and no earlier attempt "
              "recorded their cells: run the same command with --hosts all to complete it")
    if not missing:
        return 0 if doc["state"] == "complete" else 1
    print(f"{len(missing)} cell(s) did not run:")
    for c in missing:
        print(f"  {c['host']} / {c['preset']} / {c['backend']}: {c['status']}: {c['reason']}")
    print("run the same command again to run only these (the cells done are kept)")
    return 1
