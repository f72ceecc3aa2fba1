"""Where results live in MLflow: the experiment and tag names, the client, and checks of the store.

One module for every reader and writer of the store (:mod:`signflow_zoo.results.tracking`,
:mod:`signflow_zoo.results.files`, :mod:`signflow_zoo.report.records`), so a tag written by the bench is
the tag the report searches for. The store is MLflow's own default (SQLite ``./mlflow.db`` in
MLflow 3) or ``MLFLOW_TRACKING_URI``.

Credentials: a URI ``http://user:password@host`` works (the password is sent as basic auth, also on the
``/health`` probe, and handed to MLflow through ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` so that the URL
MLflow sees, and puts in its error messages, holds none). Whatever is printed, logged or stored goes
through :func:`redact` first.
"""

from __future__ import annotations

import base64
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from signflow_zoo.common.errors import TrackingError

EXPERIMENT = "signflow-zoo"  # bench results: one parent run per invocation, one child run per record
KIND_TAG = "signflow_zoo.kind"  # what a run is: one of the KIND_* values below
RESULT_ID_TAG = "signflow_zoo.result_id"  # a record's id in the local result file (sync finds runs by it)
INVOCATION_ID_TAG = "signflow_zoo.invocation_id"  # the bench invocation a run belongs to
COMPLETE_TAG = "signflow_zoo.complete"  # set last on a run: without it the run does not count
KIND_RECORD = "bench-record"
KIND_INVOCATION = "bench-invocation"
KIND_TRAINING = "training"
IDENTITY_TAGS = ("preset", "backend", "host", "status")  # plain tags on every record run, for filtering
PARENT_TAG = "mlflow.parentRunId"
_CREDENTIALS_IN_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/@:]*):(?P<pw>[^\s/@]*)@")


def tracking_uri() -> str:
    """The store MLflow would use now (``MLFLOW_TRACKING_URI`` or its default)."""
    try:
        import mlflow

        return str(mlflow.get_tracking_uri())
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

    Probing first makes an unreachable server cost seconds, not the client's minutes of retries.
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


def check_store_exists(uri: str, experiment: str) -> None:
    """Raise :class:`TrackingError` when a local SQLite store file does not exist: readers must not create one
    (building an MLflow client on a missing SQLite file creates it)."""
    path = sqlite_path(uri)
    if path is not None and not path.exists():
        raise TrackingError(
            f"no bench results exist yet: there is no MLflow store at {path} (tracking URI {uri}). "
            f"Run `signflow-zoo bench` first, or set MLFLOW_TRACKING_URI to the store that holds "
            f"experiment {experiment!r}"
        )


def client_settings() -> None:
    """MLflow client settings for this process: give up on a dead server quickly, keep stdout for tables."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def make_client(uri: str | None = None) -> Any:
    """An ``MlflowClient`` on ``uri`` (default: :func:`tracking_uri`), credentials moved out of the URL.

    The user and password of ``http://user:password@host`` go to ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``
    (MLflow sends them as basic auth), so neither the client's URL nor its error messages hold them.
    """
    client_settings()
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise TrackingError(f"mlflow is not importable ({exc}); install it with `pip install mlflow`") from None
    clean, user, password = split_credentials(uri or tracking_uri())
    if user is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"] = user
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password or ""
    return MlflowClient(clean)


def kind_filter(kind: str, tags: dict[str, str] | None = None) -> str:
    """An MLflow ``filter_string`` for runs of ``kind`` whose tags equal ``tags`` (values without quotes)."""
    clauses = [f"tags.`{KIND_TAG}` = '{kind}'"]
    clauses += [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
    return " and ".join(clauses)


def search_all_runs(client: Any, experiment_id: str, filter_string: str, page_size: int = 1000) -> list[Any]:
    """Every run of ``experiment_id`` matching ``filter_string``, newest first, page by page (MLflow's store
    returns at most ``page_size`` a call). Raises what the client raises."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=page_size,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        runs.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return runs


def ui_command(host: str, port: int) -> list[str]:
    """The command line of the MLflow UI on the current store (what ``signflow-zoo ui`` runs)."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(), "--host", host,
            "--port", str(port)]


def short_error(exc: BaseException) -> str:
    """``Type: first line`` of an exception, at most 300 characters of it (store errors can be pages long),
    with any password redacted."""
    lines = redact(str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"
