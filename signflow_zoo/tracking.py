"""MLflow tracking that never loses work: untracked runs go on with one warning.

The store is MLflow's own default (SQLite ``./mlflow.db`` in MLflow 3) or ``MLFLOW_TRACKING_URI``.
An HTTP store is probed on ``/health`` before use so that an unreachable server costs seconds, not the
client's minutes of retries. Metrics go in batches (``log_batch``), never one HTTP call per value.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

from .mlflow_store import check_reachable, make_client, short_error as _short, tracking_uri

__all__ = ["Tracker", "check_reachable", "tracking_uri"]  # the store's names live in signflow_zoo.mlflow_store
MAX_PARAM_LEN = 6000


class Tracker:
    """A thin MLflow client wrapper. ``active`` is False when mlflow is missing, disabled or failing."""

    def __init__(self, experiment: str, enabled: bool = True, quiet: bool = False):
        self.experiment = experiment
        self.active = False
        self.reason = "tracking disabled"
        self.quiet = quiet
        self.client = None
        self.experiment_id: str | None = None
        if not enabled:
            return
        try:
            import mlflow  # noqa: F401 - only to say so when it is missing
        except ImportError as exc:
            self._disable(f"mlflow is not importable ({exc}); results are kept locally only")
            return
        try:
            self.uri = tracking_uri()
            check_reachable(self.uri)
            self.client = make_client(self.uri)
            exp = self.client.get_experiment_by_name(experiment)
            self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
            self.active = True
            self.reason = ""
        except Exception as exc:  # noqa: BLE001 - any store failure means: go on untracked
            self._disable(_short(exc))

    def _disable(self, reason: str) -> None:
        if self.active or self.reason == "tracking disabled":
            if not self.quiet:
                warnings.warn(f"MLflow tracking off: {reason}", RuntimeWarning, stacklevel=3)
        self.active = False
        self.reason = reason

    def _guard(self, what: str, fn, *args, **kwargs):
        if not self.active:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            self._disable(f"{what} failed: {_short(exc)}")
            return None

    # -- runs -----------------------------------------------------------------------------------
    def create_run(self, name: str, tags: dict[str, Any] | None = None, parent_id: str | None = None) -> str | None:
        tags = {k: str(v) for k, v in (tags or {}).items()}
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
        p = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in (params or {}).items()]
        m = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items() if _is_number(v)]
        t = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
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
