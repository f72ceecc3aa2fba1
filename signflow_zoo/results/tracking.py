"""MLflow tracking that never loses work: untracked runs go on with one warning.

The store is MLflow's own default (SQLite ``./mlflow.db`` in MLflow 3) or ``MLFLOW_TRACKING_URI``.
An HTTP store is probed on ``/health`` before use so that an unreachable server costs seconds, not the
client's minutes of retries. Metrics go in batches (``log_batch``), never one HTTP call per value.

Credentials: a URI ``http://user:password@host`` works (the password is sent as basic auth, also on the
``/health`` probe, and handed to MLflow through ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` so that the URL
MLflow sees, and puts in its error messages, holds none). Whatever is printed, logged or stored goes
through :func:`redact` first. A local SQLite store shared by several processes is used under a file lock
(two processes creating or migrating one fresh database at once fail otherwise), and "database is
locked" is retried.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from signflow_zoo.results.store import (check_reachable, client_settings, make_client, redact, redact_uri, short_error,
                           split_credentials, sqlite_path, tracking_uri)

# The store's names, credentials and checks live in signflow_zoo.results.store; these stay importable from here.
__all__ = ["Tracker", "check_reachable", "redact", "redact_uri", "short_error", "split_credentials", "sqlite_path",
           "tracking_uri"]
MAX_PARAM_LEN = 6000
SQLITE_RETRIES = 5


class Tracker:
    """A thin MLflow client wrapper. ``active`` is False when mlflow is missing, disabled or failing."""

    def __init__(self, experiment: str, enabled: bool = True, quiet: bool = False):
        self.experiment = experiment
        self.active = False
        self.reason = "tracking disabled"
        self.quiet = quiet
        # an MlflowClient once connected (mlflow ships no types); None while not, and then ``active`` is False
        self.client: Any = None
        self.experiment_id: str | None = None
        self.uri = ""  # redacted: safe to print and to store
        self._db: Path | None = None
        self._locked = False
        if not enabled:
            return
        try:
            client_settings()
            import mlflow
        except ImportError as exc:
            self.disable(f"mlflow is not importable ({exc}); results are kept locally only")
            return
        try:
            raw = mlflow.get_tracking_uri()
            self.uri = redact_uri(raw)
            check_reachable(raw)
            self._db = sqlite_path(split_credentials(raw)[0])
            with self.store_lock():
                self.client = make_client(raw)  # credentials go to MLflow's env, not its URL
                self.experiment_id = self._experiment_id(experiment)
            self.active = True
            self.reason = ""
        except Exception as exc:  # noqa: BLE001 - any store failure means: go on untracked
            self.disable(short_error(exc))

    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # noqa: BLE001 - another process created it at the same moment
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    @contextlib.contextmanager
    def store_lock(self) -> Iterator[None]:
        """Serialize access to a local SQLite store across processes; nothing for a server."""
        if self._db is None or self._locked:
            yield
            return
        from signflow_zoo.common.cachefiles import exclusive

        with exclusive(self._db):
            self._locked = True
            try:
                yield
            finally:
                self._locked = False

    def disable(self, reason: str) -> None:
        """Stop tracking (one warning, unless quiet); ``reason`` says why, without any password."""
        reason = redact(reason)
        if self.active or self.reason == "tracking disabled":
            if not self.quiet:
                warnings.warn(f"MLflow tracking off: {reason}", RuntimeWarning, stacklevel=3)
        self.active = False
        self.reason = reason

    def call(self, fn, *args, **kwargs):
        """``fn(*args)`` under the store lock, retrying SQLite's "database is locked"; raises otherwise."""
        for attempt in range(SQLITE_RETRIES):
            try:
                with self.store_lock():
                    return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001
                if self._db is None or "database is locked" not in str(exc) or attempt == SQLITE_RETRIES - 1:
                    raise
                time.sleep(0.2 * 2 ** attempt)

    def _guard(self, what: str, fn, *args, **kwargs):
        if not self.active:
            return None
        try:
            return self.call(fn, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            self.disable(f"{what} failed: {short_error(exc)}")
            return None

    # -- runs -----------------------------------------------------------------------------------
    def create_run(self, name: str, tags: dict[str, Any] | None = None, parent_id: str | None = None) -> str | None:
        tags = {k: redact(str(v)) for k, v in (tags or {}).items()}
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        run = self._guard("create run", self.client.create_run if self.client else None,
                          self.experiment_id, run_name=name, tags=tags)
        return run.info.run_id if run else None

    def end_run(self, run_id: str | None, status: str = "FINISHED") -> None:
        if run_id:
            self._guard("end run", self.client.set_terminated, run_id, status)

    # -- logging (batched) ------------------------------------------------------------------------
    def log_batch(self, run_id: str | None, params: dict[str, Any] | None = None,
                  metrics: dict[str, float] | None = None, step: int = 0, tags: dict[str, Any] | None = None) -> None:
        if not run_id or not self.active:
            return
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        p = [Param(k, redact(str(v))[:MAX_PARAM_LEN]) for k, v in (params or {}).items()]
        m = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items() if _is_number(v)]
        t = [RunTag(k, redact(str(v))) for k, v in (tags or {}).items()]
        # MLflow caps one batch at 100 params, 100 tags and 1000 metrics.
        chunks = max(-(-len(p) // 100), -(-len(m) // 1000), -(-len(t) // 100), 1)
        for i in range(chunks):
            self._guard("log_batch", self.client.log_batch, run_id, metrics=m[i * 1000:(i + 1) * 1000],
                        params=p[i * 100:(i + 1) * 100], tags=t[i * 100:(i + 1) * 100])

    def log_artifact(self, run_id: str | None, path: str, artifact_path: str | None = None) -> None:
        if run_id:
            self._guard("log_artifact", self.client.log_artifact, run_id, str(path), artifact_path)


def _is_number(v: Any) -> bool:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return f == f and f not in (float("inf"), float("-inf"))

