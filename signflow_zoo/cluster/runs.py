"""The cluster run in MLflow: one parent run per ``bench --cluster`` command, the nodes' bench invocations nested
under it (tag :data:`~signflow_zoo.results.store.CLUSTER_RUN_TAG`), and the cells it still misses.

A *cell* is (host, preset, backend). A cell is done when a complete record run of that host, preset and backend
carries the cluster run's tag; the store, not the driver's memory, says so, so a driver that died, a node that
died after logging one preset, and a rerun all agree. The same command (same :func:`command_key`) run again
resumes the newest cluster run of that key that is not complete and runs only its missing cells.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from signflow_zoo.bench.harness import BenchConfig
from signflow_zoo.common.cachefiles import stable_hash
from signflow_zoo.common.errors import ClusterError
from signflow_zoo.results.store import (CLUSTER_KEY_TAG, CLUSTER_LOST_TAG, CLUSTER_RUN_TAG, CLUSTER_STATE_TAG, COMPLETE_TAG, KIND_CLUSTER, KIND_RECORD,
                                        KIND_TAG, kind_filter, search_all_runs)
from signflow_zoo.results.tracking import Tracker
from signflow_zoo.report.records import lost_cells

STATE_TAG = CLUSTER_STATE_TAG  # complete | incomplete (cells lost or failed on their node) | running
LOST_TAG = CLUSTER_LOST_TAG  # JSON list of the lost cells {host, preset, backend, reason}, as many as fit in a tag
# what does not change the results: output places, progress bars, plots
_NOT_IN_KEY = ("json_path", "progress", "plots", "track")


def command_key(cfg: BenchConfig) -> str:
    """What a cluster command asks for, hosts aside: the same command (any host selection) has the same key."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_IN_KEY}
    return stable_hash(d)


Cell = tuple[str, str, str]  # (host, preset, backend)


@dataclass
class ClusterRun:
    run_id: str
    key: str
    resumed: bool
    done: dict[Cell, dict[str, str]] = field(default_factory=dict)  # cell -> {"status", "run_id"}
    lost_before: list[dict[str, str]] = field(default_factory=list)  # the lost cells an earlier attempt recorded


class ClusterRuns:
    """The experiment's cluster runs, through one tracker (its store must be reachable: the nodes log there)."""

    def __init__(self, experiment: str):
        self.tracker = Tracker(experiment, quiet=True)  # its failure is the error below, said once
        if not self.tracker.active:
            raise ClusterError(f"--cluster: the MLflow tracking store is not reachable ({self.tracker.reason}); every "
                               "node logs there, so start it (or fix MLFLOW_TRACKING_URI) and run again")

    def _search(self, filter_string: str) -> list[Any]:
        tr = self.tracker
        return tr.call(search_all_runs, tr.client, tr.experiment_id, filter_string)

    def open(self, key: str, hosts: list[str], config: dict[str, Any], resume: bool = True) -> ClusterRun:
        """The newest unfinished cluster run of ``key`` (``resume``), or a new one."""
        if resume:
            for run in self._search(kind_filter(KIND_CLUSTER, {CLUSTER_KEY_TAG: key})):
                if run.data.tags.get(STATE_TAG) != "complete":
                    found = ClusterRun(run.info.run_id, key, resumed=True, lost_before=lost_cells(run.data.tags))
                    found.done = self.done_cells(found.run_id)
                    self.tracker.call(self.tracker.client.set_tag, found.run_id, STATE_TAG, "running")
                    return found
                break  # the newest is complete: the same command again is a new measurement
        run_id = self.tracker.create_run(f"cluster-{key}", {KIND_TAG: KIND_CLUSTER, CLUSTER_KEY_TAG: key,
                                                           STATE_TAG: "running", "hosts": ",".join(hosts)})
        if run_id is None:
            raise ClusterError(f"--cluster: creating the cluster run failed ({self.tracker.reason})")
        self.tracker.log_batch(run_id, params={f"config.{k}": v for k, v in config.items()})
        return ClusterRun(run_id, key, resumed=False)

    def done_cells(self, run_id: str) -> dict[Cell, dict[str, str]]:
        """The cells with a complete record run under ``run_id`` (status and record run id)."""
        done: dict[Cell, dict[str, str]] = {}
        for run in self._search(kind_filter(KIND_RECORD, {CLUSTER_RUN_TAG: run_id})):
            tags = run.data.tags
            if tags.get(COMPLETE_TAG) != "1":
                continue
            cell = (tags.get("host", ""), tags.get("preset", ""), tags.get("backend", ""))
            done.setdefault(cell, {"status": tags.get("status", ""), "run_id": run.info.run_id})
        return done

    def finish(self, run_id: str, doc: dict[str, Any], path: str | None) -> None:
        """The cluster document as an artifact, the lost cells as a tag, the state last."""
        tr = self.tracker
        lost = [{k: c[k] for k in ("host", "preset", "backend", "reason")} for c in doc["cells"] if c["status"] == "lost"]
        counts: dict[str, float] = {}
        for c in doc["cells"]:
            counts[f"cells_{c['status'].replace('-', '_')}"] = counts.get(f"cells_{c['status'].replace('-', '_')}", 0) + 1
        while len(json.dumps(lost)) > 4900:  # MLflow's tag limit: the first ones that fit (the document has all)
            lost.pop()
        tr.log_batch(run_id, metrics=counts, tags={LOST_TAG: json.dumps(lost), "hosts": ",".join(
            sorted({c["host"] for c in doc["cells"]}))})
        if path:
            tr.log_artifact(run_id, path)
        if tr.active:
            tr.call(tr.client.set_terminated, run_id, "FINISHED" if doc["state"] == "complete" else "FAILED")
            tr.call(tr.client.set_tag, run_id, STATE_TAG, doc["state"])
