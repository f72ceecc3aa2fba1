"""What runs on a node of the cluster: a probe (its host class and backends), the weights (trained once, on one
node, and registered) and the node's benches. Plain functions of picklable arguments: the driver
(:mod:`signflow_zoo.cluster.driver`) wraps them as Ray tasks, and the tests can call them directly.

The tracking store's URI and credentials reach a node in its :class:`NodeJob` (never on a command line, never in a
log line) and live in the task's environment only while it runs: a Ray worker process serves later tasks too.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

from signflow_zoo.bench.harness import BenchConfig

# the variables a node's bench reads its tracking store from (credentials of an HTTP server included), and those of
# an artifact store the clients write to directly (a server started without --serve-artifacts), when the driver has them
TRACKING_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_S3_ENDPOINT_URL",
                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCESS_KEY")
HOST_ENV = "SIGNFLOW_ZOO_HOST"  # signflow_zoo.common.environment.HOST_ENV_VAR: the node's name in every record


@dataclass
class NodeJob:
    """One node's work: which host it is, where results go, and per preset the backends still to run."""

    name: str
    cluster_run_id: str
    config: BenchConfig  # the command's bench settings; presets and backends come from ``plan``
    plan: list[tuple[str, list[str]]] = field(default_factory=list)  # (preset, backends)
    threads: int = 1
    tracking_env: dict[str, str] = field(default_factory=dict)  # never printed
    zoo_text: str | None = None  # the driver's zoo file (a custom one), written on the node: its path is the driver's

    def bench_config(self, **changes: Any) -> BenchConfig:
        """The command's settings for this node: its threads, its copy of the zoo file, tracking on, never a JSON
        output or a progress bar here."""
        zoo_file = None
        if self.zoo_text is not None:
            from signflow_zoo.common.cachefiles import atomic_write_text, stable_hash, zoo_home

            path = zoo_home() / "cluster" / f"zoo-{stable_hash(self.zoo_text)}.toml"
            if not path.is_file() or path.read_text() != self.zoo_text:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(path, self.zoo_text)
            zoo_file = str(path)
        # no progress bars: a node's stderr reaches the driver line by line, through Ray
        return replace(self.config, zoo_file=zoo_file, threads=self.threads, json_path=None, track=True, progress=False,
                       **changes)

    def __repr__(self) -> str:  # a job may appear in Ray's error messages: no credentials in it
        return f"NodeJob(name={self.name!r}, cluster_run_id={self.cluster_run_id!r}, plan={self.plan!r})"


@contextmanager
def node_environment(job: NodeJob) -> Iterator[None]:
    """The node's name and the tracking store, set for the task's duration and restored after (the task's worker
    process ends with it anyway: the driver asks for one per task). An error leaving the task carries its message
    redacted (Ray keeps task errors in its logs and event tables) and no chained exception."""
    from signflow_zoo.common.errors import ClusterError
    from signflow_zoo.results.store import redact

    wanted = {HOST_ENV: job.name, **job.tracking_env}
    keys = set(wanted) | set(TRACKING_ENV)
    before = {k: os.environ.get(k) for k in keys}
    try:
        for k in TRACKING_ENV:
            os.environ.pop(k, None)
        os.environ.update(wanted)
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - redacted while the store's credentials are known to redact()
            raise ClusterError(redact(f"{type(exc).__name__}: {exc}")) from None
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _log(msg: str) -> None:
    """A progress line to the task's stderr, which Ray forwards to the driver as ``(signflow-zoo:NAME pid=...) msg``."""
    print(msg, file=sys.stderr, flush=True)


def probe(name: str) -> dict[str, Any]:
    """What the driver needs to plan a node: its host class and the backends installed there (whether each can run
    there is the node's bench's to say, as locally: ``unavailable`` with the reason)."""
    import socket

    from signflow_zoo.common.environment import environment
    from signflow_zoo.plugins import get_registry

    before = os.environ.get(HOST_ENV)
    os.environ[HOST_ENV] = name
    try:
        env = environment()
    finally:
        if before is None:
            os.environ.pop(HOST_ENV, None)
        else:
            os.environ[HOST_ENV] = before
    return {"name": name, "host_class": env.get("host_class", ""), "hostname": socket.gethostname(),
            "cpu": env.get("cpu", ""), "gpu": env.get("gpu", ""), "backends": list(get_registry().runners)}


def ensure_weights(job: NodeJob) -> list[dict[str, Any]]:
    """Each preset of the plan's weights in the Model Registry: pulled, or taken from this node's cache, or trained
    here; then registered when no version of that cache key is (so that the other nodes pull instead of training).
    Returns, per preset, where the weights came from and the registered version."""
    from signflow_zoo.backends import mlflow_models
    from signflow_zoo.bench.harness import Bench
    from signflow_zoo.common.errors import CheckpointError

    log = _log
    out = []
    with node_environment(job):
        presets = ",".join(p for p, _ in job.plan)
        # --from-registry: pulled or an error, never trained here either
        bench = Bench(job.bench_config(presets=presets, backends="all"), log=log)
        tracker = bench.weights.tracker()
        if not tracker.active:
            raise CheckpointError(f"{job.name}: the Model Registry is not reachable ({tracker.reason})")
        for entry in bench.entries:
            path = bench.checkpoint_file(entry)
            key = mlflow_models.cache_key_of(path, entry.name)
            had = mlflow_models.find_version(tracker, entry.name, key)
            was_cached = path.exists()
            path, _ = bench.checkpoint(entry)  # cache -> registry -> train (and register)
            version = mlflow_models.find_version(tracker, entry.name, key)
            if version is None:  # e.g. a cached checkpoint trained with tracking off: share it now
                label = mlflow_models.register_checkpoint(path, job.config.exporter, bench.home, log, tracker)
                if label is None:
                    raise CheckpointError(f"{job.name}: registering the weights of {entry.name} failed ({tracker.reason}); "
                                          "the other nodes could not pull them")
                version = mlflow_models.find_version(tracker, entry.name, key)
            source = "cache" if was_cached else "registry" if had is not None else "trained"  # obtain()'s order
            out.append({"preset": entry.name, "source": source, "trained_on": job.name if source == "trained" else "",
                        "version": getattr(version, "version", None), "key": key})
    return out


def bench_node(job: NodeJob) -> list[dict[str, Any]]:
    """The node's benches, one per preset of the plan (each logged to the store when it ends, so a node that dies
    later keeps what it finished); weights only from this node's cache or the Model Registry, never trained here.
    Returns the result documents."""
    from signflow_zoo.bench.harness import run_bench

    log = _log
    docs = []
    with node_environment(job):
        for preset, backends in job.plan:
            cfg = job.bench_config(presets=preset, backends=",".join(backends), from_registry=not job.config.no_train,
                                   retrain=False)
            log(f"bench {preset} on {', '.join(backends)} ({job.threads} threads)")
            docs.append(run_bench(cfg, log=log, cluster={"run_id": job.cluster_run_id, "host": job.name}))
    return docs
