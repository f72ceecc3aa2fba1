"""Where results live in MLflow: the experiment and tag names, the client, and checks of the store.

One module for every reader and writer of the store (:mod:`signflow_zoo.tracking`,
:mod:`signflow_zoo.results`, :mod:`signflow_zoo.report_records`), so a tag written by the bench is
the tag the report searches for. The store is MLflow's own default (SQLite ``./mlflow.db`` in
MLflow 3) or ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .errors import TrackingError

EXPERIMENT = "signflow-zoo"  # bench results: one parent run per invocation, one child run per record
KIND_TAG = "signflow_zoo.kind"  # what a run is: one of the KIND_* values below
RESULT_ID_TAG = "signflow_zoo.result_id"  # a record's id in the local result file (sync finds runs by it)
INVOCATION_ID_TAG = "signflow_zoo.invocation_id"  # the bench invocation a run belongs to
KIND_RECORD = "bench-record"
KIND_INVOCATION = "bench-invocation"
KIND_TRAINING = "training"
IDENTITY_TAGS = ("preset", "backend", "host", "status")  # plain tags on every record run, for filtering
PARENT_TAG = "mlflow.parentRunId"


def tracking_uri() -> str:
    """The store MLflow would use now (``MLFLOW_TRACKING_URI`` or its default)."""
    try:
        import mlflow

        return str(mlflow.get_tracking_uri())
    except ImportError:
        return os.environ.get("MLFLOW_TRACKING_URI", "")


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """Raise :class:`TrackingError` when an HTTP tracking server does not answer ``/health``.

    Probing first makes an unreachable server cost seconds, not the client's minutes of retries.
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            if resp.status != 200:
                raise TrackingError(f"tracking server {uri} answered /health with HTTP {resp.status}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"tracking server {uri} is unreachable ({reason}); start it, or unset MLFLOW_TRACKING_URI "
            "to use the local store"
        ) from None


def check_store_exists(uri: str, experiment: str) -> None:
    """Raise :class:`TrackingError` when a local SQLite store file does not exist: readers must not create one
    (building an MLflow client on a missing SQLite file creates it)."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):].split("?", 1)[0])
    if str(path) not in ("", ":memory:") and not path.exists():
        raise TrackingError(
            f"no bench results exist yet: there is no MLflow store at {path} (tracking URI {uri}). "
            f"Run `signflow-zoo bench` first, or set MLFLOW_TRACKING_URI to the store that holds "
            f"experiment {experiment!r}"
        )


def make_client(uri: str | None = None) -> Any:
    """An ``MlflowClient`` on ``uri`` (default: :func:`tracking_uri`) that gives up on a dead server quickly."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise TrackingError(f"mlflow is not importable ({exc}); install it with `pip install mlflow`") from None
    return MlflowClient(uri) if uri else MlflowClient()


def kind_filter(kind: str, tags: dict[str, str] | None = None) -> str:
    """An MLflow ``filter_string`` for runs of ``kind`` whose tags equal ``tags`` (values without quotes)."""
    clauses = [f"tags.`{KIND_TAG}` = '{kind}'"]
    clauses += [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
    return " and ".join(clauses)


def ui_command(host: str, port: int) -> list[str]:
    """The command line of the MLflow UI on the current store (what ``signflow-zoo ui`` runs)."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(), "--host", host,
            "--port", str(port)]


def short_error(exc: BaseException) -> str:
    """``Type: first line`` of an exception, at most 300 characters of it: store errors can be pages long."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"
