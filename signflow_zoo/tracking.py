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

import base64
import contextlib
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Iterator

from .errors import TrackingError

MAX_PARAM_LEN = 6000
SQLITE_RETRIES = 5
_CREDENTIALS_IN_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/@:]*):(?P<pw>[^\s/@]*)@")


def tracking_uri() -> str:
    try:
        import mlflow

        return mlflow.get_tracking_uri()
    except ImportError:
        return os.environ.get("MLFLOW_TRACKING_URI", "")


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``(uri without user:password, user, password)`` for an HTTP(S) URI; others come back unchanged."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or (parts.username is None and parts.password is None):
        return uri, None, None
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    clean = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    unquote = urllib.parse.unquote
    return clean, unquote(parts.username or ""), None if parts.password is None else unquote(parts.password)


def redact_uri(uri: str) -> str:
    """The URI with any password replaced by ``***`` (the user name stays: it says who logs)."""
    return redact(str(uri))


def _known_secrets() -> list[str]:
    out = []
    for uri in (os.environ.get("MLFLOW_TRACKING_URI", ""),):
        _, _, pw = split_credentials(uri)
        if pw:
            out += [pw, urllib.parse.quote(pw, safe="")]
    for var in ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        if os.environ.get(var):
            out.append(os.environ[var])
    return sorted({s for s in out if len(s) >= 3}, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every ``scheme://user:password@`` password and every known tracking secret
    (the password of ``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_PASSWORD``/``TOKEN``) replaced by ``***``."""
    text = _CREDENTIALS_IN_URL.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(text))
    for secret in _known_secrets():
        text = text.replace(secret, "***")
    return text


def _auth_header(user: str | None, password: str | None) -> str | None:
    if user is None:
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user is not None:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        return f"Basic {token}"
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    return None


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """Raise :class:`TrackingError` when an HTTP tracking server does not answer ``/health``.

    Credentials in the URI (or MLflow's ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``) go as basic auth,
    so a server behind an authenticating proxy is reachable too; the host is asked without them.
    """
    if not uri.startswith(("http://", "https://")):
        return
    clean, user, password = split_credentials(uri)
    shown = redact_uri(uri)
    request = urllib.request.Request(clean.rstrip("/") + "/health")
    auth = _auth_header(user, password)
    if auth:
        request.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            if resp.status != 200:
                raise TrackingError(f"tracking server {shown} answered /health with HTTP {resp.status}")
    except urllib.error.HTTPError as exc:
        hint = ("; give user:password in MLFLOW_TRACKING_URI (http://USER:PASSWORD@HOST) or set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD") if exc.code in (401, 403) else ""
        raise TrackingError(f"tracking server {shown} answered /health with HTTP {exc.code} {exc.reason}{hint}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = redact(str(getattr(exc, "reason", exc)))
        raise TrackingError(
            f"tracking server {shown} is unreachable ({reason}); start it, or unset MLFLOW_TRACKING_URI "
            "to use the local store"
        ) from None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


class Tracker:
    """A thin MLflow client wrapper. ``active`` is False when mlflow is missing, disabled or failing."""

    def __init__(self, experiment: str, enabled: bool = True, quiet: bool = False):
        self.experiment = experiment
        self.active = False
        self.reason = "tracking disabled"
        self.quiet = quiet
        self.client = None
        self.experiment_id: str | None = None
        self.uri = ""  # redacted: safe to print and to store
        self._db: Path | None = None
        self._locked = False
        if not enabled:
            return
        try:
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # our stdout holds tables
            import mlflow
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            self.disable(f"mlflow is not importable ({exc}); results are kept locally only")
            return
        try:
            raw = mlflow.get_tracking_uri()
            self.uri = redact_uri(raw)
            clean, user, password = split_credentials(raw)
            if user is not None:  # MLflow sends these as basic auth; its URL (and messages) stay clean
                os.environ["MLFLOW_TRACKING_USERNAME"] = user
                os.environ["MLFLOW_TRACKING_PASSWORD"] = password or ""
            check_reachable(raw)
            self._db = sqlite_path(clean)
            with self.store_lock():
                self.client = MlflowClient(clean)
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
        from .cachefiles import exclusive

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


def short_error(exc: BaseException) -> str:
    text = redact(str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"
