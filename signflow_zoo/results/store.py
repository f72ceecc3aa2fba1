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
KIND_CLUSTER = "bench-cluster"  # one `bench --cluster` command: links the bench invocations of every node
CLUSTER_RUN_TAG = "signflow_zoo.cluster_run_id"  # on a node's invocation and record runs: its cluster run
CLUSTER_KEY_TAG = "signflow_zoo.cluster_key"  # on a cluster run: what was asked (the same command has the same key)
CLUSTER_STATE_TAG = "signflow_zoo.cluster_state"  # on a cluster run: complete | incomplete | running
CLUSTER_LOST_TAG = "signflow_zoo.lost"  # on a cluster run: JSON list of its lost cells {host, preset, backend, reason}
IDENTITY_TAGS = ("preset", "backend", "host", "status")  # plain tags on every record run, for filtering
PARENT_TAG = "mlflow.parentRunId"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")  # where a URI starts, in free text too
_PORT = re.compile(r"[0-9]+")


def tracking_uri() -> str:
    """The store MLflow would use now (``MLFLOW_TRACKING_URI`` or its default)."""
    try:
        import mlflow

        return str(mlflow.get_tracking_uri())
    except ImportError:
        return os.environ.get("MLFLOW_TRACKING_URI", "")


def _authority_end(text: str, start: int) -> int:
    """Where the URI whose authority begins at ``text[start]`` (just after ``scheme://``) ends for the search
    of its credentials: at whitespace or where the next ``scheme://`` starts (a URI in a query string)."""
    end = start
    while end < len(text) and not text[end].isspace():
        end += 1
    nested = _SCHEME.search(text, start, end)
    return nested.start() if nested else end


def _userinfo(rest: str) -> tuple[int, int | None, int] | None:
    """Where the user name and password are in ``rest``, the text after ``scheme://`` up to
    :func:`_authority_end`: ``(end of the user name, start of the password or None, index of the @ that ends
    the userinfo)``, or None when there is no userinfo.

    The userinfo runs up to the *last* ``@`` (RFC 3986: a password may hold ``@``); the user name up to the
    first ``:``. A password may also hold ``/ ? #`` unencoded (SQLAlchemy, thus MLflow's database stores,
    accepts that): then the userinfo runs to the last ``@`` of the URI, unless what follows the ``:`` is a
    port (``host:5000/path@x`` has no password). When in doubt more is hidden, never less.
    """
    if rest.startswith("["):  # an IPv6 host first: no userinfo
        return None
    cut = min([i for i in (rest.find(c) for c in "/?#") if i >= 0], default=len(rest))
    authority = rest[:cut]
    colon = authority.find(":")
    last_at = rest.rfind("@")
    if colon >= 0 and last_at > colon:
        head = rest[colon + 1:cut]  # up to the first / ? #
        if not ("@" not in head and _PORT.fullmatch(head) and cut < len(rest)):
            return colon, colon + 1, last_at
    at = authority.rfind("@", 0, colon if colon >= 0 else len(authority))
    return None if at < 0 else (at, None, at)


def parse_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``(uri without its userinfo, user, password)`` of any ``scheme://user:password@host`` URI, user and
    password percent-decoded (None when absent); a URI without credentials comes back unchanged."""
    m = _SCHEME.match(uri)
    if not m:
        return uri, None, None
    end = _authority_end(uri, m.end())
    info = _userinfo(uri[m.end():end])
    if info is None:
        return uri, None, None
    user_end, pw_start, at = (m.end() + i if i is not None else None for i in info)
    assert user_end is not None and at is not None
    unquote = urllib.parse.unquote
    password = None if pw_start is None else unquote(uri[pw_start:at])
    return uri[:m.end()] + uri[at + 1:], unquote(uri[m.end():user_end]), password


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``(uri without user:password, user, password)`` for an HTTP(S) URI; others come back unchanged
    (a database URI keeps its credentials: the driver needs them in the URI)."""
    if not uri.lower().startswith(("http://", "https://")):
        return uri, None, None
    return parse_credentials(uri)


def redact_uri(uri: str) -> str:
    """The URI with any password replaced by ``***`` (the user name stays: it says who logs)."""
    return redact(str(uri))


def _known_secrets() -> list[str]:
    """The passwords and tokens of this process's tracking settings, as given and percent-encoded."""
    out = []
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_BACKEND_STORE_URI", "MLFLOW_REGISTRY_URI"):
        uri = os.environ.get(var, "")
        m = _SCHEME.match(uri)
        info = _userinfo(uri[m.end():_authority_end(uri, m.end())]) if m else None
        if m and info and info[1] is not None:
            given = uri[m.end() + info[1]:m.end() + info[2]]
            pw = urllib.parse.unquote(given)
            out += [given, pw, urllib.parse.quote(pw, safe="")]
    for var in ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        if os.environ.get(var):
            out.append(os.environ[var])
    return sorted({s for s in out if len(s) >= 3}, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` in it, and every known tracking
    secret (the password of ``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_PASSWORD``/``TOKEN``), replaced by
    ``***``. The one redaction for whatever is printed, logged, stored or put on a command line.

    Any scheme (``http``, ``https``, ``postgresql+psycopg2``, ``mysql``...); the user name stays. The password
    runs up to the last ``@`` before the host, so one holding ``@``, ``:`` or ``/`` is hidden whole.
    """
    text = str(text)
    out, pos = [], 0
    for m in _SCHEME.finditer(text):
        if m.start() < pos:
            continue
        end = _authority_end(text, m.end())
        info = _userinfo(text[m.end():end])
        if info is None or info[1] is None:
            continue
        out += [text[pos:m.end() + info[1]], "***"]
        pos = m.end() + info[2]
    text = "".join(out) + text[pos:]
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


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:
        port = None
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


class _SameOriginAuth(urllib.request.HTTPRedirectHandler):
    """Follows redirects; the ``Authorization`` header goes along only to the same scheme, host and port
    (a redirect to another host, or from https to http, is asked without credentials)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        auth = req.unredirected_hdrs.get("Authorization")
        if new is not None and auth and _origin(new.full_url) == _origin(req.full_url):
            new.add_unredirected_header("Authorization", auth)
        return new


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
    if auth:  # unredirected: a redirect gets it again only to the same origin (_SameOriginAuth)
        request.add_unredirected_header("Authorization", auth)
    try:
        with urllib.request.build_opener(_SameOriginAuth).open(request, timeout=timeout) as resp:
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
            f"no bench results exist yet: there is no MLflow store at {path} (tracking URI {redact_uri(uri)}). "
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
    """The command line of the MLflow UI (what ``signflow-zoo ui`` runs, with :func:`ui_environment`).

    It names no store: the store's URI, which may hold a database password, goes to the child in its
    environment (``MLFLOW_BACKEND_STORE_URI``, read by ``mlflow ui``/``mlflow server``), not on a command line
    that any user of the machine can read (``ps``)."""
    return [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port)]


def ui_environment(uri: str | None = None) -> dict[str, str]:
    """The environment of the MLflow UI child: this one, with ``MLFLOW_BACKEND_STORE_URI`` set to ``uri``
    (default: :func:`tracking_uri`, credentials included)."""
    return {**os.environ, "MLFLOW_BACKEND_STORE_URI": uri or tracking_uri()}


def short_error(exc: BaseException) -> str:
    """``Type: first line`` of an exception, at most 300 characters of it (store errors can be pages long),
    with any password redacted."""
    lines = redact(str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"
