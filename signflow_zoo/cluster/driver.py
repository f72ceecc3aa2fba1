"""``signflow-zoo bench --cluster ADDRESS``: the same bench on every selected node of a Ray cluster.

The steps, in order (docs/cluster.md):

1. connect to the cluster and name its nodes (:mod:`signflow_zoo.cluster.nodes`); probe each selected node for its
   host class and installed backends (a small task pinned to it);
2. open the cluster run in the shared MLflow store (:mod:`signflow_zoo.cluster.runs`): a new one, or the unfinished
   one of the same command, whose done cells are skipped;
3. train once: the presets that still have cells to run get their weights on one node (the one with the most CPUs),
   from its cache, the Model Registry, or training there, and registered; every node then pulls them;
4. one task per node, pinned to it and holding all of its CPUs and GPUs, so no other cell runs beside it while it
   times; it runs the node's missing cells, logging each preset's results to the store when it ends;
5. the cells: done ones from the store; those of a node that died, or of tasks cancelled by Ctrl-C, are ``lost``
   with the reason; the cluster document is written locally and to the cluster run.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from signflow_zoo.bench.harness import BenchConfig
from signflow_zoo.cluster import task as node_task
from signflow_zoo.cluster.nodes import Node, alive_nodes, check_address, select
from signflow_zoo.cluster.runs import ClusterRun, ClusterRuns, command_key
from signflow_zoo.common.cachefiles import zoo_home
from signflow_zoo.common.errors import ClusterError
from signflow_zoo.results.files import now_iso, write_json_atomic, write_result
from signflow_zoo.results.store import redact, redact_uri, sqlite_path, tracking_uri

CLUSTER_SCHEMA = "signflow-zoo-cluster/1"
# Ray errors that mean the node (or its worker process) went away: the cells are lost, not failed
LOST_ERRORS = ("NodeDiedError", "WorkerCrashedError", "LocalRayletDiedError", "ObjectLostError", "OwnerDiedError",
               "TaskUnschedulableError", "ObjectReconstructionFailedError", "RaySystemError")
RAY_MISSING = "bench --cluster needs Ray: pip install 'signflow-zoo[ray]' (on the driver and on every node)"


def import_ray():
    try:
        import ray
    except ImportError:
        raise ClusterError(RAY_MISSING) from None
    return ray


def _tracking_env() -> dict[str, str]:
    """The store every node logs to: it must be one they reach, so a file on this machine is refused."""
    uri = tracking_uri()
    if sqlite_path(uri) is not None or uri.startswith("file:") or "://" not in uri:
        raise ClusterError(f"--cluster: every node logs to the tracking store, but {redact_uri(uri)} is a file on this "
                           "machine; start a tracking server the nodes reach (see docs/team.md) and set "
                           "MLFLOW_TRACKING_URI=http://HOST:PORT")
    env = {k: os.environ[k] for k in node_task.TRACKING_ENV if os.environ.get(k)}
    env["MLFLOW_TRACKING_URI"] = uri
    return env


@contextmanager
def _ray_logging() -> Iterator[None]:
    """How the nodes' forwarded log lines read while the command runs: every node's line kept (Ray merges identical
    lines of different workers by default, and a node's lines do not name it), no colour codes in a file or a pipe."""
    wanted = {"RAY_DEDUP_LOGS": "0", **({} if sys.stderr.isatty() else {"RAY_COLOR_PREFIX": "0"})}
    unset = [k for k in wanted if k not in os.environ]  # a user's own setting is kept, and left as it was
    for k in unset:
        os.environ[k] = wanted[k]
    try:
        yield
    finally:
        for k in unset:
            os.environ.pop(k, None)


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """A TCP connection to ``HOST:PORT`` (or Ray Client's ``ray://HOST:PORT``) opens, or a :class:`ClusterError`."""
    import socket

    if address == "auto":  # Ray looks the address up on this machine and says when there is none
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}): is its head running "
                           "(`ray status` on it) and the port open from here? The GCS port is 6379 unless `ray start "
                           "--head --port` said otherwise; Ray Client listens on 10001") from None


def _zoo_text(zoo_file: str | None) -> str | None:
    """A custom zoo file's text, sent to the nodes (its path is this machine's); None for the built-in zoo."""
    from signflow_zoo.model.zoo import ZOO_ENV_VAR, Zoo

    path = zoo_file or os.environ.get(ZOO_ENV_VAR)
    if not path:
        return None
    Zoo.load(path)  # its errors here, once, not on every node
    return Path(path).read_text()


def _why_lost(exc: BaseException) -> str:
    import ray.exceptions as rex

    name = type(exc).__name__
    text = redact(str(exc)).strip().splitlines()
    first = next((ln for ln in text if ln.strip()), "")
    if isinstance(exc, rex.TaskCancelledError):
        return "cancelled (Ctrl-C)"
    return f"node lost mid-run ({name}: {first[:200]})" if first else f"node lost mid-run ({name})"


def _fault(exc: BaseException, step: str) -> tuple[str, str]:
    """(status, reason) of a node's cells after its ``step`` task raised: lost when the node or worker went away (or
    the task was cancelled), failed with the node's own error otherwise."""
    if _is_lost(exc):
        return "lost", _why_lost(exc)
    return "failed", f"{step} on the node failed: {_task_error(exc)}"


def _is_lost(exc: BaseException) -> bool:
    """The node or its worker went away, or the task was cancelled (Ray's exception classes, subclasses included)."""
    import ray.exceptions as rex

    kinds = tuple(getattr(rex, name) for name in LOST_ERRORS + ("TaskCancelledError",) if hasattr(rex, name))
    return isinstance(exc, kinds + (KeyboardInterrupt,))


def _task_error(exc: BaseException) -> str:
    """The node's own error (a RayTaskError wraps it), redacted, one paragraph."""
    cause = getattr(exc, "cause", None) or exc
    return redact(f"{type(cause).__name__}: {cause}").strip().splitlines()[0][:500]


class ClusterBench:
    """One ``bench --cluster`` command."""

    def __init__(self, config: BenchConfig, address: str, hosts: str = "all", resume: bool = True,
                 log: Callable[[str], None] | None = None):
        self.cfg = config.validate()
        self.address = check_address(address)
        self.hosts = hosts
        self.resume = resume
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        if config.model:
            raise ClusterError("--model with --cluster: a model file would have to be on every node; bench presets on "
                               "the cluster, or the file on one machine")
        if not config.track:
            raise ClusterError("--no-track with --cluster: the nodes' results meet in the tracking store; drop --no-track")
        if config.retrain:
            raise ClusterError("--retrain with --cluster: the nodes would keep their cached copies of the old weights; "
                               "retrain on one machine (`signflow-zoo train --preset P` registers a new version) and "
                               "clear the nodes' checkpoint caches, or change --epochs/--seed (a new cache key)")
        self.tracking_env = _tracking_env()
        self.zoo_text = _zoo_text(config.zoo_file)
        self.json_out = config.json_output()
        self.ray: Any = None  # imported when connecting: the store's errors come first
        self.runs: ClusterRuns | None = None
        self.run_id = ""
        self.done: dict[tuple[str, str, str], dict[str, str]] = {}  # the cells with a record in the store
        self.docs: list[dict[str, Any]] = []  # the result documents the nodes sent back
        self.cells: dict[tuple[str, str, str], dict[str, Any]] = {}
        # host -> (status, reason) of its cells that did not run: "lost" (node died, cancelled) or "failed" (its
        # task raised, e.g. no registered weights); a rerun of the same command runs them
        self.faults: dict[str, tuple[str, str]] = {}

    # -- connecting -------------------------------------------------------------------------------
    def connect(self) -> list[Node]:
        ray = self.ray = import_ray()
        self.log(f"connecting to the Ray cluster at {self.address} ...")
        _check_reachable(self.address)  # Ray itself retries an unreachable GCS for minutes
        try:
            ray.init(address=self.address, logging_level="warning", log_to_driver=True, namespace="signflow-zoo")
        except Exception as exc:  # noqa: BLE001 - any failure to connect is the user's address or cluster to fix
            raise ClusterError(f"cannot connect to the Ray cluster at {self.address}: {type(exc).__name__}: "
                               f"{redact(str(exc)).splitlines()[0] if str(exc) else ''} (start one with `ray start --head "
                               f"--labels signflow-zoo-host=NAME`, or check the address)") from None
        nodes, notes = alive_nodes(ray.nodes())
        for note in notes:
            self.log(f"note: {note}")
        chosen = select(nodes, self.hosts)
        self.log("hosts: " + ", ".join(f"{n.name} ({n.cpus:g} CPUs{f', {n.gpus:g} GPUs' if n.gpus else ''}, named by "
                                       f"{n.named_by})" for n in chosen))
        return chosen

    def _pinned(self, fn, node: Node, cpus: float, gpus: float = 0.0):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # max_calls=1: a fresh worker process per task, gone after it: nothing it set (the store's credentials in its
        # environment, the bench's forkserver, torch's thread count) outlives the task
        return self.ray.remote(max_calls=1)(fn).options(
            num_cpus=cpus, num_gpus=gpus, max_retries=0, retry_exceptions=False, name=f"signflow-zoo:{node.name}",
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False))

    def probe(self, nodes: list[Node]) -> dict[str, dict[str, Any]]:
        """Each node's host class and backends; a node that cannot answer is left out with its reason."""
        refs = {n.name: self._pinned(node_task.probe, n, 0).remote(n.name) for n in nodes}
        facts = {}
        for name, ref in refs.items():
            try:
                facts[name] = self.ray.get(ref, timeout=300)
            except Exception as exc:  # noqa: BLE001 - the node's cells are lost, the others go on
                self.faults[name] = _fault(exc, "probe")
                self.log(f"{name}: {self.faults[name][0]}: {self.faults[name][1]}")
                continue
            self.log(f"{name}: {facts[name]['host_class']} ({len(facts[name]['backends'])} backends installed)")
        return facts

    # -- planning ---------------------------------------------------------------------------------
    def plan(self, nodes: list[Node], facts: dict[str, dict[str, Any]], run: ClusterRun) -> dict[str, list]:
        """Per node, per preset, the backends whose cells are not done; every cell is entered in ``self.cells``."""
        from signflow_zoo.model.zoo import Zoo

        presets = [e.name for e in Zoo.load(self.cfg.zoo_file).select(self.cfg.presets)]
        wanted = [b.strip() for b in self.cfg.backends.split(",") if b.strip()]
        # a node that did not answer: its cells are those of the backends the others have ("all"), all lost
        anywhere = sorted({b for info in facts.values() for b in info["backends"]})
        plans: dict[str, list] = {}
        for node in nodes:
            info = facts.get(node.name)
            installed = list(info["backends"]) if info else anywhere
            names = installed if wanted == ["all"] else wanted
            plans[node.name] = []
            for preset in presets:
                todo = []
                for backend in names:
                    cell = (node.name, preset, backend)
                    if cell in run.done:
                        self.cells[cell] = {**run.done[cell], "reason": "", "earlier": True}
                    elif not info:
                        status, why = self.faults.get(node.name, ("lost", "the node did not answer"))
                        self.cells[cell] = {"status": status, "reason": why, "node_fault": True}
                    elif backend not in installed:
                        self.cells[cell] = {"status": "unavailable", "reason": f"backend {backend!r} is not installed on "
                                            f"{node.name} (installed there: {', '.join(installed)})"}
                    else:
                        self.cells[cell] = {"status": "pending", "reason": ""}
                        todo.append(backend)
                if todo:
                    plans[node.name].append((preset, todo))
        return plans

    # -- running ----------------------------------------------------------------------------------
    def _job(self, node: Node, run: ClusterRun, plan: list) -> node_task.NodeJob:
        return node_task.NodeJob(name=node.name, cluster_run_id=run.run_id, config=self.cfg, plan=plan,
                                 threads=self.cfg.threads or node.threads, tracking_env=self.tracking_env,
                                 zoo_text=self.zoo_text)

    def weights(self, nodes: list[Node], plans: dict[str, list], run: ClusterRun) -> list[dict[str, Any]]:
        """Train once: the presets still to run, on the node with the most CPUs (the next one if it dies)."""
        presets = list(dict.fromkeys(p for plan in plans.values() for p, _ in plan))
        if not presets or self.cfg.no_train:
            return []
        for node in sorted(nodes, key=lambda n: (-n.cpus, n.name)):
            if node.name in self.faults:
                continue
            job = self._job(node, run, [(p, []) for p in presets])
            self.log(f"weights of {', '.join(presets)}: on {node.name} (cache, Model Registry, or trained there and "
                     "registered) ...")
            ref = self._pinned(node_task.ensure_weights, node, node.cpus, node.gpus).remote(job)
            try:
                self._wait([ref], f"weights on {node.name}")
                got = self.ray.get(ref)
            except Exception as exc:  # noqa: BLE001
                if not _is_lost(exc):
                    raise ClusterError(f"the weights could not be made on {node.name}: {_task_error(exc)}") from None
                self.faults[node.name] = _fault(exc, "weights")
                self.log(f"{node.name}: {self.faults[node.name][1]}; the weights go to the next node")
                continue
            for w in got:
                self.log(f"{w['preset']}: Model Registry version {w['version']} ({w['source']}"
                         f"{' on ' + w['trained_on'] if w['trained_on'] else ''})")
            return got
        raise ClusterError("no node could make the weights: " + "; ".join(f"{k}: {v[1]}" for k, v in self.faults.items()))

    def _wait(self, refs: list, what: str) -> list:
        """Until one of ``refs`` is ready (returned), saying every 30 s what still runs and refreshing the cluster run's
        heartbeat (so that the same command started elsewhere does not take it over). Ctrl-C cancels them all."""
        started = time.monotonic()
        try:
            while True:
                ready, _ = self.ray.wait(refs, num_returns=1, timeout=30)
                if self.runs is not None and self.run_id:
                    self.runs.heartbeat(self.run_id)
                if ready:
                    return ready
                self.log(f"still running: {what} ({time.monotonic() - started:.0f} s)")
        except KeyboardInterrupt:
            for ref in refs:
                self.ray.cancel(ref, force=True)
            raise

    def dispatch(self, nodes: list[Node], plans: dict[str, list], run: ClusterRun) -> None:
        """One task per node with cells to run; the result documents the nodes send back go to ``self.docs``."""
        ray = self.ray
        refs = {}
        for node in nodes:
            if plans.get(node.name) and node.name not in self.faults:
                job = self._job(node, run, plans[node.name])
                refs[self._pinned(node_task.bench_node, node, node.cpus, node.gpus).remote(job)] = node.name
        pending = list(refs)
        while pending:
            for ref in self._wait(pending, "bench on " + ", ".join(sorted(refs[r] for r in pending))):
                pending.remove(ref)
                name = refs[ref]
                try:
                    got = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - one node's failure is its cells'
                    self.faults[name] = _fault(exc, "bench")
                    self.log(f"{name}: {self.faults[name][0]}: {self.faults[name][1]}")
                    continue
                self.docs.extend(got)
                self.log(f"{name}: done ({len(got)} bench run(s))")

    # -- the record -------------------------------------------------------------------------------
    def settle(self, runs: ClusterRuns, run: ClusterRun) -> None:
        """Every cell's final status: the store's done cells, what the nodes sent back but could not log, and the
        rest lost (with the node's reason) or failed."""
        try:
            done = runs.done_cells(run.run_id)
        except Exception as exc:  # noqa: BLE001 - the nodes' own documents still say what ran
            self.log(f"warning: reading the cluster's cells back failed ({redact(str(exc))}); using the nodes' reports")
            done = {}
        sent = {(d["environment"].get("host", ""), r["preset"], r["backend"]): r for d in self.docs for r in d["records"]}
        self.done = done
        for cell, info in self.cells.items():
            if info["status"] != "pending":
                continue
            if cell in done:
                info.update(status=done[cell]["status"], run_id=done[cell]["run_id"])
            elif cell in sent:
                rec = sent[cell]
                info.update(status=rec["status"], reason="not in the tracking store: its result file is kept for "
                            "`signflow-zoo sync`" + (f"; {rec['reason']}" if rec.get("reason") else ""))
            else:
                status, why = self.faults.get(cell[0], ("lost", "no result came back from the node"))
                info.update(status=status, reason=why, node_fault=True)

    def document(self, run: ClusterRun, nodes: list[Node], facts: dict, weights: list, created: str) -> dict[str, Any]:
        selected = {n.name for n in nodes}
        for c in run.previous_cells:  # an earlier attempt's cells of hosts not selected this time
            cell = (c["host"], c["preset"], c["backend"])
            if c["host"] in selected or cell in self.cells:
                continue
            if cell in self.done:
                self.cells[cell] = {**self.done[cell], "reason": "", "earlier": True}
            else:
                self.cells[cell] = {"status": c.get("status", "lost"), "earlier": True,
                                    "reason": f"{c.get('reason', '')} (an earlier attempt; host not selected now)",
                                    "node_fault": not c.get("ran", False)}
        unknown = sorted(set(run.previous_hosts) - selected - {c[0] for c in self.cells})
        if unknown:
            self.log(f"note: this cluster run also had hosts {', '.join(unknown)}, not selected now, whose cells no "
                     "earlier attempt recorded: it stays incomplete until they are run (--hosts all)")
        cells = [{"host": h, "preset": p, "backend": b, "status": i["status"], "reason": i.get("reason", ""),
                  "run_id": i.get("run_id", ""), "earlier_run": bool(i.get("earlier")), "ran": not i.get("node_fault")}
                 for (h, p, b), i in sorted(self.cells.items())]
        # complete: every cell has a result (in the store, or kept for sync) or a reason it cannot run on its host
        state = "complete" if not unknown and all(c["ran"] and c["status"] != "pending" for c in cells) else "incomplete"
        return {"schema": CLUSTER_SCHEMA, "cluster_run_id": run.run_id, "key": run.key, "resumed": run.resumed,
                "created": created, "finished": now_iso(), "address": self.address, "state": state,
                "hosts": [{"name": n.name, "named_by": n.named_by, "node_id": n.node_id, "cpus": n.cpus, "gpus": n.gpus,
                           "address": n.address, **{k: v for k, v in (facts.get(n.name) or {}).items()
                                                    if k in ("host_class", "hostname", "cpu", "gpu")}}
                          for n in nodes],
                "unchecked_hosts": unknown, "config": self.cfg.to_dict(), "weights": weights, "cells": cells}

    def run(self) -> dict[str, Any]:
        created = now_iso()
        home = zoo_home()
        self.runs = runs = ClusterRuns(self.cfg.experiment)  # first: without it no node's result meets the others
        with _ray_logging():
            try:
                nodes = self.connect()
                facts = self.probe(nodes)
                run = runs.open(command_key(self.cfg), [n.name for n in nodes], self.cfg.to_dict(), resume=self.resume)
                self.run_id = run.run_id
                self.log(f"cluster run {run.run_id}" + (f" (resumed: {len(run.done)} cell(s) already done)"
                                                          if run.resumed else ""))
                plans = self.plan(nodes, facts, run)
                todo = sum(len(b) for plan in plans.values() for _, b in plan)
                self.log(f"{todo} cell(s) to run on {sum(1 for p in plans.values() if p)} host(s)")
                weights: list[dict[str, Any]] = []
                stopped: BaseException | None = None
                why = ""  # what stopped the command, when an error did
                try:
                    weights = self.weights(nodes, plans, run)
                    self.dispatch(nodes, plans, run)
                except KeyboardInterrupt as exc:
                    stopped = exc
                    for host in plans:
                        self.faults.setdefault(host, ("lost", "cancelled (Ctrl-C)"))
                except Exception as exc:  # noqa: BLE001 - recorded in the document and the run, then raised
                    stopped = exc
                    why = str(exc) if isinstance(exc, ClusterError) else f"{type(exc).__name__}: {redact(str(exc))}"
                    for host in plans:
                        self.faults.setdefault(host, ("failed", f"the command stopped: {why}"))
                self._keep_unsynced(home)
                self.settle(runs, run)
                doc = self.document(run, nodes, facts, weights, created)
                stamp = created.replace(":", "").replace("-", "")
                path = home / "results" / "cluster" / f"cluster-{stamp}-{run.run_id[:12]}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(path, doc)
                doc["result_file"] = str(path)
                runs.finish(run.run_id, doc, str(path))
                if self.json_out is not None:
                    write_json_atomic(self.json_out, doc)
                if isinstance(stopped, KeyboardInterrupt):
                    raise stopped
                if stopped is not None:
                    raise ClusterError(f"{why}; the cells so far are in {path} and cluster run {run.run_id}: run the "
                                       "same command again to run the missing ones") from None
                return doc
            finally:
                if self.ray is not None:
                    self.ray.shutdown()

    def _keep_unsynced(self, home: Path) -> None:
        """A node's result document that did not reach the store is saved here too, where ``sync`` finds it."""
        for d in self.docs:
            if (d.get("tracking") or {}).get("uploaded"):
                continue
            target = home / "results" / Path(str(d.get("result_file") or f"bench-{uuid.uuid4().hex}.json")).name
            write_result(d, target)
            self.log(f"warning: {d['environment'].get('host', '?')}'s results did not reach the store; kept in {target} "
                     "for `signflow-zoo sync`")


def run_cluster_bench(config: BenchConfig, address: str, hosts: str = "all", resume: bool = True,
                      log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``bench --cluster ADDRESS --hosts H``: the bench ``config`` on every selected node; returns the cluster document
    (``cells``: every (host, preset, backend) with its status, ``lost`` ones with the reason; ``state`` complete or
    incomplete). Raises KeyboardInterrupt after cancelling the tasks and writing the document when interrupted."""
    return ClusterBench(config, address, hosts, resume, log).run()
