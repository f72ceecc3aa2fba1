"""The cluster run in MLflow: one parent run per ``bench --cluster`` command, the nodes' bench invocations nested
under it (tag :data:`~signflow_zoo.results.store.CLUSTER_RUN_TAG`), and the cells it still misses.

A *cell* is (host, preset, backend). A cell is done when a complete record run of that host, preset and backend
carries the cluster run's tag; the store, not the driver's memory, says so, so a driver that died, a node that
died after logging one preset, and a rerun all agree. The same command (same :func:`command_key`) run again
resumes the newest cluster run of that key that is not complete and runs only its missing cells.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from signflow_zoo.bench.harness import BenchConfig
from signflow_zoo.common.cachefiles import stable_hash
from signflow_zoo.common.errors import ClusterError
from signflow_zoo.results.store import (CLUSTER_KEY_TAG, CLUSTER_LOST_TAG, CLUSTER_RUN_TAG, CLUSTER_STATE_TAG, COMPLETE_TAG, KIND_CLUSTER, KIND_RECORD,
                                        KIND_TAG, kind_filter, search_all_runs)
from signflow_zoo.results.tracking import Tracker
from signflow_zoo.report.records import lost_cells

HEARTBEAT_TAG = "signflow_zoo.heartbeat"  # the driver's last sign of life (epoch seconds)
DRIVER_TAG = "signflow_zoo.driver"  # which driver runs it: host and pid
HEARTBEAT_STALE_S = 120.0  # a running cluster run whose heartbeat is older was left by a driver that died
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
    previous_cells: list[dict[str, Any]] = field(default_factory=list)  # the cells of the last attempt's document
    previous_hosts: list[str] = field(default_factory=list)  # every host an earlier attempt selected


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


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
        """The newest unfinished cluster run of ``key`` (``resume``), or a new one. One that another driver is running
        (its heartbeat younger than :data:`HEARTBEAT_STALE_S`) is an error, not a run to share."""
        if resume:
            for run in self._search(kind_filter(KIND_CLUSTER, {CLUSTER_KEY_TAG: key})):
                tags = run.data.tags
                if tags.get(STATE_TAG) == "complete":
                    break  # the newest is complete: the same command again is a new measurement
                beat = _float(tags.get(HEARTBEAT_TAG))
                if tags.get(STATE_TAG) == "running" and beat is not None and time.time() - beat < HEARTBEAT_STALE_S:
                    raise ClusterError(
                        f"cluster run {run.info.run_id} of this command is running now (its driver's last heartbeat "
                        f"{time.time() - beat:.0f} s ago, from {tags.get(DRIVER_TAG, '?')}): wait for it to end, or "
                        "start a separate run with --no-resume")
                found = ClusterRun(run.info.run_id, key, resumed=True, previous_cells=self._previous_cells(run),
                                   previous_hosts=[h for h in tags.get("hosts", "").split(",") if h])
                found.done = self.done_cells(found.run_id)
                self._claim(found.run_id)
                return found
        run_id = self.tracker.create_run(f"cluster-{key}", {KIND_TAG: KIND_CLUSTER, CLUSTER_KEY_TAG: key,
                                                           STATE_TAG: "running", "hosts": ",".join(hosts)})
        if run_id is None:
            raise ClusterError(f"--cluster: creating the cluster run failed ({self.tracker.reason})")
        self.tracker.log_batch(run_id, params={f"config.{k}": v for k, v in config.items()})
        self._claim(run_id)
        return ClusterRun(run_id, key, resumed=False)

    def _claim(self, run_id: str) -> None:
        """This driver runs ``run_id`` now: its name, the state and a first heartbeat."""
        import os
        import socket

        self.tracker.log_batch(run_id, tags={STATE_TAG: "running", DRIVER_TAG: f"{socket.gethostname()} pid {os.getpid()}",
                                             HEARTBEAT_TAG: f"{time.time():.0f}"})

    def heartbeat(self, run_id: str) -> None:
        """Refreshed while the driver waits on its nodes; a failing store only costs this one."""
        try:
            self.tracker.call(self.tracker.client.set_tag, run_id, HEARTBEAT_TAG, f"{time.time():.0f}")
        except Exception:  # noqa: BLE001 - the nodes' results do not depend on it
            pass

    def _previous_cells(self, run: Any) -> list[dict[str, Any]]:
        """The cells of the newest cluster document logged with ``run`` (none when no attempt finished)."""
        import tempfile

        tr = self.tracker
        try:
            names = sorted(a.path for a in tr.call(tr.client.list_artifacts, run.info.run_id)
                           if a.path.startswith("cluster-") and a.path.endswith(".json"))
            if not names:
                return []
            with tempfile.TemporaryDirectory() as tmp:
                got = tr.call(tr.client.download_artifacts, run.info.run_id, names[-1], tmp)
                cells = json.loads(Path(got).read_text()).get("cells") or []
        except Exception:  # noqa: BLE001 - unreadable: the lost-cells tag says as much as it holds
            cells = lost_cells(run.data.tags)
        return [c for c in cells if isinstance(c, dict) and {"host", "preset", "backend"} <= set(c)]

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
        # the cells without a record in the store: lost or failed on their node, or a backend not installed there
        lost = [{k: c[k] for k in ("host", "preset", "backend", "status", "reason", "ran")} for c in doc["cells"]
                if not c.get("run_id")]
        counts = Counter(f"cells_{c['status'].replace('-', '_')}" for c in doc["cells"])
        while len(json.dumps(lost)) > 4900:  # MLflow's tag limit: the first ones that fit (the document has all)
            lost.pop()
        hosts = sorted({c["host"] for c in doc["cells"]} | set(doc.get("unchecked_hosts") or ()))
        tr.log_batch(run_id, metrics=dict(counts), tags={LOST_TAG: json.dumps(lost), "hosts": ",".join(hosts)})
        if path:
            tr.log_artifact(run_id, path)
        if tr.active:
            tr.call(tr.client.set_terminated, run_id, "FINISHED" if doc["state"] == "complete" else "FAILED")
            tr.call(tr.client.set_tag, run_id, STATE_TAG, doc["state"])
