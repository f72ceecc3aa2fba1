"""Artifact kinds from plugins: compiled forms of a model (an OpenVINO IR, a TensorRT engine, a quantized
ONNX) that a backend consumes, built once from their source artifact and cached.

The built-in kinds (``torch``, ``onnx``, ``onnx-optimized``) come from
:func:`signflow_zoo.backends.artifacts.build_artifacts`. A plugin adds its own through the
``register_artifact_kinds`` hook, and :func:`ensure_artifact` builds it on first use::

    $SIGNFLOW_ZOO_HOME/artifacts/kinds/<kind>/<key>/    the kind's file(s) + signflow-artifact.json
    key = hash(source artifact sha256, kind name, kind version, calibration fingerprint[, host choices])

A kind whose best build depends on the CPU that will run it (int8 weights in 7 bits on CPUs without VNNI,
where 8-bit weights saturate ONNX Runtime's u8s8 kernels) says so in :meth:`ArtifactKind.host_choices`:
the choices are part of the key, given to ``build()`` and recorded with the artifact, so a cache or a
folder shared by hosts of different classes holds one build per choice and never serves an artifact
built for another CPU.

A build writes into a private temporary folder that is renamed into place only when complete, so a
concurrent builder of the same key never sees a half-built folder (the loser of a race keeps the
winner's copy). A cached folder whose files no longer match their recorded hashes is an error naming it,
never silently rebuilt over.

A kind from a third-party plugin (an entry point or ``SIGNFLOW_ZOO_PLUGINS``, as the registry's
``third_party_kind`` says) is built in a child process (:mod:`signflow_zoo.common.child`): a ``build()`` that
aborts, crashes or makes no progress for ``SIGNFLOW_ZOO_BUILD_TIMEOUT`` seconds (default 1800) raises
:class:`ArtifactBuildFailed` (``status`` ``crashed`` / ``timeout``) naming the kind and its plugin, and its
temporary folder is removed. The child's stdout goes to our stderr; ``ctx.log`` and ``ctx.calibration`` reach
it through the parent. A temporary folder is named after its host and process
(``.<key>-tmp-<host>-<pid>-<random>``), so one left by a builder that died anyway (killed, or building in
process) is removed by the next build of that kind on the same host.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Protocol

import numpy as np

from signflow_zoo.common.child import (ISOLATION_ENV_VAR, ChildFailed, ChildRaised, call_in_child, isolation_enabled,
                                      seconds_from_env)
from signflow_zoo.common.documents import loads_json
from signflow_zoo.common.errors import BackendError, ModelFileError
from signflow_zoo.backends.runner import BUILTIN_ARTIFACT_KINDS, Artifacts, BackendUnavailable


class KindRegistry(Protocol):
    """What :func:`ensure_artifact` needs of a registry (:class:`signflow_zoo.plugins.PluginRegistry` is one)."""

    def artifact_kind(self, name: str) -> type[ArtifactKind]: ...

RECORD = "signflow-artifact.json"  # written next to the kind's files; not part of them
BUILD_TIMEOUT_ENV_VAR = "SIGNFLOW_ZOO_BUILD_TIMEOUT"
DEFAULT_BUILD_TIMEOUT = 1800.0  # seconds without progress (a ctx.log line) before a child's build is stopped
_TEMP = re.compile(r"^\.[0-9a-f]+-tmp-(?P<host>[A-Za-z0-9_]*)-(?P<pid>\d+)-[^-]*$")


class ArtifactBuildFailed(BackendError):
    """A plugin's ``build()`` crashed its child process or stopped making progress; ``status``: crashed | timeout."""

    def __init__(self, status: str, message: str):
        self.status = status
        super().__init__(message)
CALIBRATION_PROBE = 16  # clips hashed to fingerprint calibration data that carries no ``fingerprint``

Calibration = Callable[[int], Iterator[tuple[np.ndarray, np.ndarray]]]


@dataclass
class BuildContext:
    """What :meth:`ArtifactKind.build` gets."""

    preset: str
    source: Path  # the file of the kind's source artifact
    dest: Path  # a fresh empty directory; build() writes its file(s) here
    # n -> batches of (features float32 [b, T, 469], mask bool [b, T]) holding n clips of the TRAINING split;
    # None unless the kind sets needs_calibration
    calibration: Calibration | None
    log: Callable[[str], None]  # progress for the user
    # what ArtifactKind.host_choices() said for the CPU this artifact is built for (e.g. {"reduce_range": True})
    host_choices: dict[str, Any] = field(default_factory=dict)


class ArtifactKind:
    """A compiled form of the model, registered with ``register_artifact_kinds(register)``."""

    name: ClassVar[str] = ""  # e.g. "onnx-int8-dynamic"; what Runner.artifact names
    source: ClassVar[str] = ""  # "torch" | "onnx" | "onnx-optimized" | another registered kind
    version: ClassVar[str] = ""  # bump when build() changes: part of the cache key
    main_file: ClassVar[str] = ""  # the file in dest that Artifacts.path_for(name) returns, e.g. "model.xml"
    needs_calibration: ClassVar[bool] = False  # build() needs ctx.calibration (then part of the cache key)

    def build(self, ctx: BuildContext) -> dict[str, Any]:
        """Write the kind's file(s) into ``ctx.dest``; return what to record with the artifact (JSON-able)."""
        raise NotImplementedError

    @classmethod
    def host_choices(cls) -> dict[str, Any]:
        """Build choices that depend on the CPU the artifact will run on (JSON-able; ``cpu_flags()`` says what
        this one has), e.g. ``{"reduce_range": "avx512_vnni" not in cpu_flags()}``. They enter the cache key
        and ``ctx.host_choices``. Default: none."""
        return {}


def validate_kind_class(cls: Any) -> None:
    """Raise :class:`BackendError` naming what is wrong with a class offered to ``register_artifact_kinds``."""
    if not (isinstance(cls, type) and issubclass(cls, ArtifactKind)):
        raise BackendError(f"register() expects an ArtifactKind subclass, got {cls!r}")
    for attr in ("name", "source", "version", "main_file"):
        if not isinstance(getattr(cls, attr), str) or not getattr(cls, attr):
            raise BackendError(f"artifact kind class {cls.__qualname__} must set {attr} (a non-empty string)")
    main = PurePosixPath(cls.main_file)
    if main.is_absolute() or ".." in main.parts or main.name == RECORD:
        raise BackendError(f"artifact kind {cls.name!r}: main_file must be a file name inside dest, got {cls.main_file!r}")
    if cls.name in BUILTIN_ARTIFACT_KINDS:
        raise BackendError(f"artifact kind {cls.name!r} is built in; choose another name")


def ensure_artifact(artifacts: Artifacts, kind_name: str, registry: KindRegistry, home: Path | None = None,
                    calibration: Calibration | None = None, log: Callable[[str], None] = print) -> Path:
    """The main file of ``kind_name`` for ``artifacts``, built from its source (ensured first) once and cached.

    Records the file in ``artifacts.paths``, its sha256 (of the directory listing for a multi-file kind) in
    ``artifacts.hashes`` and the build record in ``artifacts.info``, all under the kind's name. Give
    ``calibration`` a ``fingerprint`` attribute (e.g. the data set's) to key the cache by it; otherwise the
    first clips it yields are hashed.
    """
    if kind_name in BUILTIN_ARTIFACT_KINDS:
        return artifacts.path_for(kind_name)
    kind = registry.artifact_kind(kind_name)()
    source = ensure_artifact(artifacts, kind.source, registry, home, calibration, log)
    source_sha = artifacts.hashes.get(kind.source) or _sha256(source)
    if kind.needs_calibration and calibration is None:
        raise BackendUnavailable(f"artifact kind {kind_name!r} needs calibration data from the training split, "
                                 "and none was given")
    calibration = calibration if kind.needs_calibration else None
    key_parts: dict[str, Any] = {"source_sha256": source_sha, "kind": kind_name, "version": kind.version,
                 "calibration": _fingerprint(calibration)}
    choices = dict(type(kind).host_choices() or {})
    if choices:  # absent otherwise: the keys of host-independent kinds stay what they were
        key_parts["host_choices"] = choices
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    if home is None:
        from signflow_zoo.common.cachefiles import zoo_home

        home = zoo_home()
    folder = Path(home) / "artifacts" / "kinds" / kind_name / key
    if not folder.is_dir():
        owner = getattr(registry, "third_party_kind", lambda name: None)(kind_name)
        _build(kind, artifacts.preset, source, folder, key_parts, calibration, log, choices,
               owner if owner and isolation_enabled() else None)
    record = _verified_record(folder, kind)
    artifacts.paths[kind_name] = folder / kind.main_file
    artifacts.hashes[kind_name] = record["sha256"]
    artifacts.info[kind_name] = record
    return folder / kind.main_file


def _build(kind: ArtifactKind, preset: str, source: Path, folder: Path, key_parts: dict[str, Any],
           calibration: Calibration | None, log: Callable[[str], None], choices: dict[str, Any],
           owner: str | None = None) -> None:
    """``owner`` (``plugin 'x' (package)``): build in a child process."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_builders_folders(folder.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-tmp-{_host_tag()}-{os.getpid()}-", dir=folder.parent))
    try:
        log(f"building artifact {kind.name!r} (v{kind.version}) for {preset} from {kind.source!r} ...")
        t0 = time.perf_counter()
        ctx = BuildContext(preset, source, tmp, calibration, log, choices)
        try:
            if owner and _importable(type(kind)):
                built, notes = _build_in_child(kind, ctx, owner)
            else:
                with _captured_notes() as notes:
                    built = kind.build(ctx)
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin's failure, reported with its kind's name
            raise BackendError(f"building artifact kind {kind.name!r} for {preset} failed: "
                               f"{type(exc).__name__}: {exc}") from exc
        if not (tmp / kind.main_file).is_file():
            raise BackendError(f"artifact kind {kind.name!r}: build() wrote no {kind.main_file!r} into ctx.dest")
        files = {p.relative_to(tmp).as_posix(): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        from signflow_zoo.common.environment import host_class

        record = {**key_parts, "built_on": host_class(), "source": kind.source, "main_file": kind.main_file, "files": files,
                  "sha256": _listing_sha256(files, kind.main_file), "seconds": round(time.perf_counter() - t0, 3),
                  "build": built or {}, "notes": notes[-20:]}
        (tmp / RECORD).write_text(json.dumps(record, indent=1, default=str))
        try:
            os.replace(tmp, folder)  # atomic; refused when a concurrent builder's folder is already there
        except OSError:
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_in_child(kind: ArtifactKind, ctx: BuildContext, owner: str) -> tuple[Any, list[str]]:
    """``kind.build(ctx)`` in a child process: ``(what build() returned, notes)``; failures raised as in process."""
    cls = type(kind)
    payload = {"module": cls.__module__, "qualname": cls.__qualname__, "preset": ctx.preset, "source": str(ctx.source),
               "dest": str(ctx.dest), "host_choices": ctx.host_choices, "calibration": ctx.calibration is not None}
    calibration = ctx.calibration
    services = {} if calibration is None else {
        "calibration": lambda n: [(np.asarray(f), np.asarray(m)) for f, m in calibration(int(n))]}
    timeout = seconds_from_env(BUILD_TIMEOUT_ENV_VAR, DEFAULT_BUILD_TIMEOUT)
    try:
        return call_in_child("signflow_zoo.backends.kinds:_child_build", payload, timeout=timeout,
                             on_event=lambda event: ctx.log(event[1]), services=services, stdout="stderr")
    except ChildFailed as failed:
        how = (f"made no progress for {timeout:g} s ({BUILD_TIMEOUT_ENV_VAR}) and was stopped"
               if failed.status == "timeout" else f"crashed ({failed.how})")
        raise ArtifactBuildFailed(failed.status, f"building artifact kind {kind.name!r} of {owner} for {ctx.preset} "
                                  f"{how}; nothing was cached") from None
    except ChildRaised as raised:
        if "BackendUnavailable" in raised.types:
            raise BackendUnavailable(raised.message) from None
        if "BackendError" in raised.types:
            raise BackendError(raised.message) from None
        raise BackendError(f"building artifact kind {kind.name!r} for {ctx.preset} failed: {raised}") from None


def _child_build(payload: dict[str, Any], channel) -> tuple[Any, list[str]]:
    """In the build's child: import the kind's class, build into the parent's temporary folder."""
    import importlib

    os.environ[ISOLATION_ENV_VAR] = "0"  # a registry built here (by the plugin) loads without a probe of its own
    obj: Any = importlib.import_module(payload["module"])
    for part in payload["qualname"].split("."):
        obj = getattr(obj, part)
    calibration = None
    if payload["calibration"]:
        def calibration(n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            yield from channel.call("calibration", n)
    ctx = BuildContext(payload["preset"], Path(payload["source"]), Path(payload["dest"]), calibration,
                       lambda msg: channel.event(("log", str(msg))), payload["host_choices"])
    with _captured_notes() as notes:
        built = obj().build(ctx)
    return built, notes


def _importable(cls: type) -> bool:
    """Whether a child process finds ``cls`` by its module and qualified name."""
    obj: Any = sys.modules.get(cls.__module__)
    if obj is None or cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        return False
    for part in cls.__qualname__.split("."):
        obj = getattr(obj, part, None)
    return obj is cls


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", platform.node())[:40]


def _remove_dead_builders_folders(parent: Path) -> None:
    """Remove temporary build folders of this host's processes that no longer exist."""
    try:
        names = [n for n in os.listdir(parent) if n.startswith(".")]
    except OSError:
        return
    for name in names:
        m = _TEMP.match(name)
        if m and m["host"] == _host_tag() and not _alive(int(m["pid"])):
            shutil.rmtree(parent / name, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def _verified_record(folder: Path, kind: ArtifactKind) -> dict[str, Any]:
    try:
        record = loads_json((folder / RECORD).read_text(), RECORD)  # nesting bounded: DocumentError is a ValueError
        files = record["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise ModelFileError(f"{folder}: cached artifact has no readable {RECORD} ({exc}); delete the folder "
                             "to build it again") from None
    for rel, sha in files.items():
        name = PurePosixPath(str(rel))
        if not str(rel) or name.is_absolute() or ".." in name.parts or "\\" in str(rel):
            raise ModelFileError(f"{folder / RECORD}: names {rel!r}, not a file inside its folder (modified or corrupt); "
                                 f"delete {folder} to build it again")
        if not (folder / rel).is_file() or _sha256(folder / rel) != sha:
            raise ModelFileError(f"{folder / rel}: cached {kind.name!r} artifact is missing or does not match its "
                                 f"recorded hash (modified or corrupt); delete {folder} to build it again")
    return {**record, "path": str(folder / kind.main_file)}


def _listing_sha256(files: dict[str, str], main_file: str) -> str:
    """The main file's sha256, or for a multi-file kind the sha256 of the listing of every file's sha256."""
    if list(files) == [main_file]:
        return files[main_file]
    return hashlib.sha256("".join(f"{sha}  {rel}\n" for rel, sha in sorted(files.items())).encode()).hexdigest()


def _fingerprint(calibration: Calibration | None) -> str | None:
    if calibration is None:
        return None
    given = getattr(calibration, "fingerprint", None)
    if given:
        return str(given)
    h = hashlib.sha256()
    for features, mask in calibration(CALIBRATION_PROBE):
        h.update(np.ascontiguousarray(features, np.float32).tobytes())
        h.update(np.ascontiguousarray(mask, bool).tobytes())
    return "content:" + h.hexdigest()[:16]


def _sha256(path: Path) -> str:
    from signflow_zoo.model.export import file_sha256

    return file_sha256(path)


class _NoteHandler(logging.Handler):
    def __init__(self, notes: list[str]):
        super().__init__(logging.WARNING)
        self.notes = notes

    def emit(self, record: logging.LogRecord) -> None:
        self.notes.append(f"{record.levelname}: {record.getMessage()}")


@contextmanager
def _captured_notes() -> Iterator[list[str]]:
    """Converters' warnings and root-logger advice go into the artifact's record, not the user's terminal."""
    notes: list[str] = []
    root = logging.getLogger()
    saved = root.handlers[:]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        root.handlers = [_NoteHandler(notes)]
        try:
            yield notes
        finally:
            root.handlers = saved
            notes.extend(f"{w.category.__name__}: {w.message}" for w in caught)
