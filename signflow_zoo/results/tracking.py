"""MLflow tracking that never loses work: untracked runs go on with one warning.

The store is MLflow's own default (SQLite ``./mlflow.db`` in MLflow 3) or ``MLFLOW_TRACKING_URI``.
An HTTP store is probed on ``/health`` before use so that an unreachable server costs seconds, not the
client's minutes of retries. Metrics go in batches (``log_batch``), never one HTTP call per value.

Credentials: a URI ``http://user:password@host`` works (the password is sent as basic auth, also on the
``/health`` probe, and handed to MLflow through ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` so that the URL
MLflow sees, and puts in its error messages, holds none). Whatever is printed, logged or stored goes
through :func:`redact` first. A local SQLite store shared by several processes is used under a file lock
(two processes creating or migrating one fresh database at once fail otherwise; a wait for it is bounded,
see :func:`signflow_zoo.common.cachefiles.exclusive`), and "database is locked" is retried.

What is sent is made acceptable to MLflow first (:func:`mlflow_key`, :func:`clip_value`): a key with a
character MLflow refuses (``threads(intra)`` from a plugin's ``describe()``) is sent with that character
replaced by ``_``, and a value longer than MLflow keeps is cut, with a marker saying how long it was.
A failed call turns tracking off (:meth:`Tracker.disable`); :meth:`Tracker.resume` then tells a store
that refused one request (it still answers: go on) from a store that is down.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import re
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from signflow_zoo.common.errors import LockTimeout
from signflow_zoo.results.store import (check_reachable, client_settings, make_client, redact, redact_uri, short_error,
                           split_credentials, sqlite_path, tracking_uri)

# The store's names, credentials and checks live in signflow_zoo.results.store; these stay importable from here.
__all__ = ["Tracker", "check_reachable", "redact", "redact_uri", "short_error", "split_credentials", "sqlite_path",
           "tracking_uri"]
MAX_PARAM_LEN = 6000  # MLflow's MAX_PARAM_VAL_LENGTH
MAX_TAG_LEN = 8000  # MLflow's MAX_TAG_VAL_LENGTH
MAX_KEY_LEN = 250  # MLflow's MAX_ENTITY_KEY_LENGTH (param, metric and tag keys)
MAX_BATCH_CHARS = 500_000  # per log_batch request; MLflow refuses requests over 1 MB
SQLITE_RETRIES = 5
_REFUSED_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")  # what every MLflow store accepts (a Windows one: no colon)


def mlflow_key(key: Any) -> str:
    """``key`` as MLflow accepts it: characters other than ASCII letters, digits, ``_ - . /`` and space become
    ``_``; slashes that would make it a path MLflow refuses (``a//b``, ``a/``, ``/a``) become ``_``; a key
    longer than :data:`MAX_KEY_LEN` is cut and ends with a hash of the whole (two long keys stay apart).
    A key MLflow accepts comes back unchanged."""
    k = _REFUSED_KEY_CHARS.sub("_", str(key))
    if "/" in k and (posixpath.normpath(k) != k or k.startswith("/")):
        k = k.replace("/", "_")
    if k in ("", ".") or k.startswith(".."):
        k = "_" + k
    if len(k) > MAX_KEY_LEN:
        k = k[:MAX_KEY_LEN - 17] + "_" + hashlib.sha256(str(key).encode()).hexdigest()[:16]
    return k


def clip_value(value: str, limit: int) -> str:
    """``value`` when at most ``limit`` characters; else its start and a marker ``... [cut from N characters]``."""
    if len(value) <= limit:
        return value
    marker = f" ... [cut from {len(value)} characters]"
    return value[:limit - len(marker)] + marker


def mlflow_entries(items: dict[str, Any] | None, limit: int | None) -> dict[str, Any]:
    """``items`` with every key through :func:`mlflow_key` (a key that then equals an earlier one gets ``_2``,
    ``_3``, ...) and, with a ``limit``, every value redacted and through :func:`clip_value`."""
    out: dict[str, Any] = {}
    for key, value in (items or {}).items():
        k = base = mlflow_key(key)
        n = 1
        while k in out:
            n += 1
            k = f"{base[:MAX_KEY_LEN - 1 - len(str(n))]}_{n}"
        out[k] = value if limit is None else clip_value(redact(str(value)), limit)
    return out


def store_key(uri: str) -> str:
    """Which store ``uri`` names, as result files record it: the URI without user and password (a SQLite path
    made absolute), redacted. Works on a URI already redacted too (``http://user:***@host`` -> ``http://host``)."""
    clean = split_credentials(str(uri))[0]
    db = sqlite_path(clean)
    if db is not None:
        clean = "sqlite:///" + os.path.abspath(db)
    return redact(clean)


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
        self.store = ""  # which store (:func:`store_key`): safe to print and to store
        self.store_down = False  # True when the store itself failed (not this experiment, not one request)
        self._raw = ""  # the URI as given, credentials included: never printed nor stored
        self._db: Path | None = None
        self._locked = False
        if not enabled:
            return
        try:
            client_settings()
            import mlflow
        except ImportError as exc:
            self.store_down = True
            self.disable(f"mlflow is not importable ({exc}); results are kept locally only")
            return
        try:
            raw = self._raw = mlflow.get_tracking_uri()
            self.uri = redact_uri(raw)
            self.store = store_key(raw)
            self.store_down = True  # until the store has answered
            check_reachable(raw)
            self._db = sqlite_path(split_credentials(raw)[0])
            with self.store_lock():
                self.client = make_client(raw)  # credentials go to MLflow's env, not its URL
                self.store_down = False  # a failure from here on is about this experiment
                self.experiment_id = self._experiment_id(experiment)
            self.active = True
            self.reason = ""
        except Exception as exc:  # noqa: BLE001 - any store failure means: go on untracked
            self.store_down = self.store_down or not refused(exc)
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

        with exclusive(self._db, use="store", what="MLflow store"):
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

    def resume(self) -> bool:
        """After a failed request: probe the store once. True (and active again) when it answers, so that the
        failure was the store refusing that request's data; False (``store_down`` set, still off, the reason
        kept) when it does not answer, so that later work costs nothing more."""
        if self.active:
            return True
        if self.client is None or self.experiment_id is None or self.store_down:
            return False
        try:
            check_reachable(self._raw)
            self.call(self.client.get_experiment, self.experiment_id)
        except Exception:  # noqa: BLE001 - the store does not answer
            self.store_down = True
            return False
        self.active = True
        self.reason = ""
        return True

    def call(self, fn, *args, **kwargs):
        """``fn(*args)`` under the store lock, retrying SQLite's "database is locked"; raises otherwise."""
        for attempt in range(SQLITE_RETRIES):
            try:
                with self.store_lock():
                    return fn(*args, **kwargs)
            except LockTimeout:  # another process holds the store (stopped, or for too long): no more waits
                self.store_down = True
                raise
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
        tags = mlflow_entries(tags, MAX_TAG_LEN)
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
        """Params, metrics and tags of one run, keys and values made acceptable to MLflow first (see
        :func:`mlflow_entries`: refused characters in a key become ``_``, over-long values are cut with a marker),
        in as many requests as MLflow's limits per request need."""
        if not run_id or not self.active:
            return
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        p = [Param(k, v) for k, v in mlflow_entries(params, MAX_PARAM_LEN).items()]
        m = [Metric(k, float(v), now, step) for k, v in mlflow_entries(metrics, None).items() if _is_number(v)]
        t = [RunTag(k, v) for k, v in mlflow_entries(tags, MAX_TAG_LEN).items()]
        for batch in _batches(p, m, t):
            self._guard("log_batch", self.client.log_batch, run_id, **batch)
            if not self.active:
                return

    def log_artifact(self, run_id: str | None, path: str, artifact_path: str | None = None) -> None:
        if run_id:
            self._guard("log_artifact", self.client.log_artifact, run_id, str(path), artifact_path)


REFUSAL_CODES = ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE",
                 "BAD_REQUEST")


def refused(exc: BaseException) -> bool:
    """Whether ``exc`` is the store answering "no" to a request (an MLflow error code saying the request was
    wrong, e.g. a bad experiment name or a deleted experiment of that name), not the store failing."""
    return str(getattr(exc, "error_code", "")) in REFUSAL_CODES


def _batches(params: list, metrics: list, tags: list) -> Iterator[dict[str, list]]:
    """Requests within MLflow's limits: 100 params, 100 tags, 1000 metrics and 1000 entries in all per request,
    and (here) at most :data:`MAX_BATCH_CHARS` characters of keys and values."""
    caps = {"params": 100, "tags": 100, "metrics": 1000}
    batch: dict[str, list] = {"params": [], "metrics": [], "tags": []}
    size = 0
    for kind, items in (("params", params), ("tags", tags), ("metrics", metrics)):
        for item in items:
            n = len(item.key) + len(str(item.value)) + 32
            full = (len(batch[kind]) >= caps[kind] or sum(map(len, batch.values())) >= 1000
                    or size + n > MAX_BATCH_CHARS)
            if full and any(batch.values()):
                yield batch
                batch, size = {"params": [], "metrics": [], "tags": []}, 0
            batch[kind].append(item)
            size += n
    if any(batch.values()) or not (params or metrics or tags):
        yield batch


def _is_number(v: Any) -> bool:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return f == f and f not in (float("inf"), float("-inf"))

