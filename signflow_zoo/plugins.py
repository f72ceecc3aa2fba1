"""Loads plugins: the built-in backends, the ``signflow_zoo`` entry points, then the modules named in
``SIGNFLOW_ZOO_PLUGINS=module,module``; ``SIGNFLOW_ZOO_BLOCK_PLUGINS=name,name`` skips plugins by name.

Each hook is called through pluggy one plugin at a time, built-ins first and the others in pluggy's
order, so that a plugin that fails (at import, while registering, even with ``SystemExit``, or by
claiming a name already taken) is listed in :attr:`PluginRegistry.broken` with its error, loses what it
registered in that hook, and the others load. Built-ins therefore keep their names whatever a plugin's
hook ordering.

Plugins from entry points and ``SIGNFLOW_ZOO_PLUGINS`` are first tried in a child process (import,
registration and each backend's ``availability()``, one child for all of them), because a plugin can also
fail in ways no ``except`` catches: abort or crash the interpreter, or hang. Such a plugin is listed as
broken (``crashed at import (SIGABRT)``, ``timeout after 60 s in availability() of backend 'x'``) and is not
loaded here; the others load as usual. The verdict is kept in ``$SIGNFLOW_ZOO_HOME/plugins/probe.json`` (and
in memory) until the plugin's files, its distribution's version, Python or signflow-zoo change, so a command
pays the child only the first time. ``SIGNFLOW_ZOO_PLUGIN_TIMEOUT`` (seconds, default 60) bounds each step of
the probe and every ``availability()`` call of a plugin's backend made here; ``SIGNFLOW_ZOO_PLUGIN_REPROBE=1``
ignores kept verdicts; ``SIGNFLOW_ZOO_PLUGIN_ISOLATION=0`` loads plugins without a probe and builds their
artifact kinds in this process. Built-in plugins and plugin objects passed in Python are never probed.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from functools import partial
from importlib import metadata
from pathlib import Path

import pluggy

from signflow_zoo import __version__, hookspecs
from signflow_zoo.backends.kinds import ArtifactKind, validate_kind_class
from signflow_zoo.common.child import (ISOLATION_ENV_VAR, ChildFailed, ChildRaised, call_in_child, isolation_enabled,
                                      seconds_from_env)
from signflow_zoo.common.documents import loads_json
from signflow_zoo.common.errors import BackendError
from signflow_zoo.backends.runner import BUILTIN_ARTIFACT_KINDS, Availability, Runner, validate_runner_class

ENTRY_POINT_GROUP = "signflow_zoo"
PLUGINS_ENV_VAR = "SIGNFLOW_ZOO_PLUGINS"
BLOCK_ENV_VAR = "SIGNFLOW_ZOO_BLOCK_PLUGINS"
TIMEOUT_ENV_VAR = "SIGNFLOW_ZOO_PLUGIN_TIMEOUT"
REPROBE_ENV_VAR = "SIGNFLOW_ZOO_PLUGIN_REPROBE"
DEFAULT_TIMEOUT = 60.0  # seconds: each step of the probe, and each availability() of a plugin's backend
BUILTIN = "built-in"
DEFAULT_PLUGINS = (
    "signflow_zoo.backends.builtin.torch_eager",
    "signflow_zoo.backends.builtin.onnx_cpu",
    "signflow_zoo.backends.builtin.onnx_cuda",
    "signflow_zoo.backends.builtin.onnx_optimized",
    "signflow_zoo.backends.builtin.torch_compile", "signflow_zoo.backends.builtin.onnx_tensorrt",
)


@dataclass
class PluginInfo:
    name: str
    package: str  # "built-in", "<distribution> <version>", "SIGNFLOW_ZOO_PLUGINS" or "inline"
    error: str = ""


@dataclass
class _Source:
    name: str
    package: str
    load: Callable[[], object]
    spec: tuple[str, ...] | None = None  # how a child process finds a third-party plugin; None: never probed


@dataclass
class RunnerEntry:
    cls: type[Runner]
    plugin: PluginInfo


@dataclass
class KindEntry:
    cls: type[ArtifactKind]
    plugin: PluginInfo


class PluginRegistry:
    """Backends and artifact kinds by name. A test builds its own: ``PluginRegistry([plugin], entry_points=False)``.

    ``plugins`` (modules or objects with hook functions) load after all others; ``environment=False`` ignores
    ``SIGNFLOW_ZOO_PLUGINS`` and ``SIGNFLOW_ZOO_BLOCK_PLUGINS``.
    """

    _trace: Callable[[str, str], None] | None = None  # the probe's child: told each step before it starts

    def __init__(self, plugins: Iterable[object] = (), *, builtins: bool = True, entry_points: bool = True,
                 environment: bool = True) -> None:
        self.pm = pluggy.PluginManager("signflow_zoo")
        self.pm.add_hookspecs(hookspecs)
        self.runners: dict[str, RunnerEntry] = {}
        self.artifact_kinds: dict[str, KindEntry] = {}
        self.broken: list[PluginInfo] = []
        self._fresh: dict[str, tuple[str, Availability]] = {}  # backend -> (plugin, what this process's probe found)
        env = os.environ if environment else {}
        blocked = _names(env.get(BLOCK_ENV_VAR))
        sources: list[_Source] = []
        if builtins:
            sources += [_Source(m.rsplit(".", 1)[1], BUILTIN, partial(importlib.import_module, m))
                        for m in DEFAULT_PLUGINS if m not in blocked]
        if entry_points:
            sources += [_Source(ep.name, _package(ep), ep.load, ("entry_point", ep.name, ep.value))
                        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)]
        sources += [_Source(m, PLUGINS_ENV_VAR, partial(importlib.import_module, m), ("module", m))
                    for m in _names(env.get(PLUGINS_ENV_VAR))]
        sources += [_Source(getattr(p, "__name__", None) or f"inline-{i}", "inline", (lambda p=p: p))  # type: ignore[misc]
                    for i, p in enumerate(plugins)]
        sources = [s for s in sources if s.name not in blocked]
        if any(s.spec for s in sources) and isolation_enabled():
            sources = self._probed(sources)
        self._load(sources)

    def _load(self, sources: list[_Source]) -> None:
        loaded = [self._add(s.name, s.package, s.load) for s in sources]
        self._call("register_artifact_kinds", loaded, self._register_kind)
        self._drop_kinds_without_source()
        self._call("register_runners", loaded, self._register_runner)
        self.plugins = [info for info in loaded if not info.error]

    # -- queries ---------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.runners)

    def get(self, name: str) -> RunnerEntry:
        try:
            return self.runners[name]
        except KeyError:
            raise BackendError(f"unknown backend {name!r}; registered backends: {', '.join(self.runners)}") from None

    def select(self, spec: str) -> list[RunnerEntry]:
        """``all``, one name or a comma-separated list."""
        spec = (spec or "").strip()
        if spec == "all":
            return list(self.runners.values())
        names = _names(spec)
        if not names:
            raise BackendError(f"no backend given; registered backends: all, {', '.join(self.runners)}")
        return [self.get(n) for n in names]

    def availability(self, name: str) -> Availability:
        """The backend's ``availability()``, never raising: a plugin's failure becomes a broken reason. A
        plugin's (not a built-in's) is bounded by ``SIGNFLOW_ZOO_PLUGIN_TIMEOUT``; one this process's probe has
        just asked is taken from the probe."""
        entry = self.get(name)
        plugin, fresh = self._fresh.pop(name, ("", None))
        if fresh is not None and plugin == entry.plugin.name:
            return fresh
        if entry.plugin.package == BUILTIN:
            return _availability(entry.cls)
        return _bounded_availability(entry.cls, plugin_timeout())

    def third_party_kind(self, name: str) -> str | None:
        """``plugin 'x' (package)`` when artifact kind ``name`` comes from an entry point or ``SIGNFLOW_ZOO_PLUGINS``
        (:func:`~signflow_zoo.backends.kinds.ensure_artifact` then builds it in a child process), else None."""
        entry = self.artifact_kinds.get(name)
        if entry is None or entry.plugin.package in (BUILTIN, "inline"):
            return None
        return f"plugin {entry.plugin.name!r} ({entry.plugin.package})"

    def kind_names(self) -> list[str]:
        return [*BUILTIN_ARTIFACT_KINDS, *self.artifact_kinds]

    def artifact_kind(self, name: str) -> type[ArtifactKind]:
        if name not in self.artifact_kinds:
            raise BackendError(f"unknown artifact kind {name!r}; known kinds: {', '.join(self.kind_names())}")
        return self.artifact_kinds[name].cls

    # -- loading ---------------------------------------------------------------------------------
    def _add(self, name: str, package: str, load: Callable[[], object]) -> PluginInfo:
        info = PluginInfo(name, package)
        try:
            if self.pm.has_plugin(name):
                raise BackendError(f"plugin name {name!r} is already taken by another plugin")
            if self._trace is not None:
                self._trace("import", name)
            plugin = load()
            self.pm.register(plugin, name=name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit at import included
            self._break(info, exc, registered=False)
            return info
        unknown = [hc.name for hc in self.pm.get_hookcallers(plugin) or () if not hc.has_spec()]
        if unknown:
            self._break(info, BackendError(f"unknown hook {', '.join(unknown)}; hooks: {', '.join(_hook_names())}"))
        return info

    def _call(self, hook: str, infos: list[PluginInfo], register: Callable[..., None]) -> None:
        calls = [impl.plugin_name for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls())]  # pluggy's order
        by_name = {i.name: i for i in infos if not i.error}
        builtins = [n for n, i in by_name.items() if i.package == BUILTIN and n in calls]  # in DEFAULT_PLUGINS order
        for name in builtins + [n for n in calls if n not in builtins]:
            others = [p for n, p in self.pm.list_name_plugin() if n != name]
            added: list[tuple[dict, str]] = []
            if self._trace is not None:
                self._trace(hook, name)
            try:
                self.pm.subset_hook_caller(hook, remove_plugins=others)(register=partial(register, by_name[name], added))
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001
                for table, key in added:
                    del table[key]
                self._break(by_name[name], exc)

    def _register_kind(self, info: PluginInfo, added: list, cls: type[ArtifactKind]) -> None:
        validate_kind_class(cls)
        _claim(self.artifact_kinds, "artifact kind", cls.name, KindEntry(cls, info), added)

    def _register_runner(self, info: PluginInfo, added: list, cls: type[Runner]) -> None:
        validate_runner_class(cls, self.kind_names())
        _claim(self.runners, "backend", cls.name, RunnerEntry(cls, info), added)

    def _drop_kinds_without_source(self) -> None:
        """A kind must lead back to a built-in kind through registered kinds; else its plugin is broken."""
        for name, entry in list(self.artifact_kinds.items()):
            seen, kind = [name], entry.cls
            while kind.source not in BUILTIN_ARTIFACT_KINDS:
                if kind.source not in self.artifact_kinds or kind.source in seen:
                    why = "a cycle" if kind.source in seen else f"unknown source kind {kind.source!r}"
                    for key in [k for k, e in self.artifact_kinds.items() if e.plugin is entry.plugin]:
                        del self.artifact_kinds[key]
                    self._break(entry.plugin, BackendError(f"artifact kind {name!r}: {why} ({' <- '.join(seen)})"))
                    return self._drop_kinds_without_source()
                kind = self.artifact_kinds[kind.source].cls
                seen.append(kind.name)

    def _probed(self, sources: list[_Source]) -> list[_Source]:
        """The sources to load: third-party plugins that crashed or hung in the probe are listed as broken."""
        verdicts, fresh = probe_plugins([s for s in sources if s.spec])
        self._fresh = fresh
        for s in sources:
            if verdicts.get(s.name):
                self.broken.append(PluginInfo(s.name, s.package, verdicts[s.name]))
        return [s for s in sources if not verdicts.get(s.name)]

    def _break(self, info: PluginInfo, exc: BaseException, registered: bool = True) -> None:
        info.error = _error(exc)
        self.broken.append(info)
        if registered:
            self.pm.unregister(name=info.name)


def _claim(table: dict, what: str, key: str, entry: RunnerEntry | KindEntry, added: list) -> None:
    if key in table:
        other = table[key].plugin
        owner = f"built-in plugin {other.name!r}" if other.package == BUILTIN else f"plugin {other.name!r}"
        raise BackendError(f"{what} name {key!r} is already registered by {owner}")
    table[key] = entry
    added.append((table, key))


def _names(spec: str | None) -> list[str]:
    return [s.strip() for s in (spec or "").split(",") if s.strip()]


def _package(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.metadata['Name']} {dist.version}" if dist else ep.value


def _hook_names() -> list[str]:
    return [n for n in dir(hookspecs) if n.startswith("register_")]


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def plugin_timeout() -> float:
    """Seconds each step of the probe, and each availability() of a plugin's backend here, may take."""
    return seconds_from_env(TIMEOUT_ENV_VAR, DEFAULT_TIMEOUT)


def _availability(cls: type[Runner]) -> Availability:
    try:
        av = cls.availability()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a plugin's bug must not stop the others
        return Availability.error(f"availability() raised {_error(exc)}")
    return av if isinstance(av, Availability) else Availability.error(f"availability() returned {av!r}")


def _bounded_availability(cls: type[Runner], timeout: float) -> Availability:
    """``availability()`` in a daemon thread: one that hangs is reported (and left behind), not waited for."""
    box: list[Availability] = []

    def ask() -> None:
        try:
            box.append(_availability(cls))
        except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt cannot reach this thread; anything else
            box.append(Availability.error(f"availability() raised {_error(exc)}"))

    thread = threading.Thread(target=ask, name=f"signflow-zoo availability of {cls.name}", daemon=True)
    thread.start()
    thread.join(timeout)
    return box[0] if box else Availability.error(f"timeout after {timeout:g} s in availability()")


# -- the probe: third-party plugins tried in a child process first ---------------------------------------
_verdicts: dict[str, str] = {}  # fingerprint -> "" (loads) or why it is not loaded; this process's memory
_STEPS = {"import": "at import", "register_artifact_kinds": "in register_artifact_kinds()",
          "register_runners": "in register_runners()"}


def probe_plugins(sources: list[_Source]) -> tuple[dict[str, str], dict[str, tuple[str, Availability]]]:
    """Try third-party plugins in a child process: ``({plugin: "" | why it must not be loaded}, {backend: (plugin,
    availability found)})``, the second only for what was asked now, not remembered.

    One child imports, registers and asks the availability of all of them, as the parent would; when it dies or
    hangs, the plugin whose step was running is the culprit, and the others are tried again without it.
    Exceptions are not verdicts (the parent lists them as usual): only a crash or a timeout keeps a plugin out.
    A plugin nothing could be learnt about (the child failed before its first step) has no verdict and loads.
    """
    reprobe = os.environ.get(REPROBE_ENV_VAR, "").strip().lower() not in ("", "0", "false", "no", "off")
    keys = {s.name: _fingerprint(s) for s in sources}
    kept = {} if reprobe else _read_cache()
    verdicts: dict[str, str] = {}
    for s in sources:
        key = keys[s.name]
        if not reprobe and key in _verdicts:
            verdicts[s.name] = _verdicts[key]
        elif key in kept:
            verdicts[s.name] = kept[key]
    if len(verdicts) == len(sources):
        return verdicts, {}
    timeout = plugin_timeout()
    todo = [s for s in sources if not verdicts.get(s.name)]  # those known to load too: they load together here
    found: dict[str, str] = {}
    fresh: dict[str, tuple[str, Availability]] = {}
    while todo:
        try:
            result = call_in_child("signflow_zoo.plugins:_probe_child", [list(s.spec or ()) for s in todo],
                                   timeout=timeout, capture_stderr=True)
        except ChildFailed as failed:
            step = failed.last
            if not step or step[0] not in (*_STEPS, "availability") or step[1] not in {s.name for s in todo}:
                break  # nothing to blame a plugin for: they load as they always did
            where = _STEPS.get(step[0]) or f"in availability() of backend {step[2]!r}"
            if failed.status == "timeout":
                what = f"timeout {failed.how} {where} ({TIMEOUT_ENV_VAR})"
            else:
                what = f"crashed {where} ({failed.how})"
            if failed.stderr and failed.status == "crashed":
                what += f": {failed.stderr}"
            found[step[1]] = f"{what}; not loaded (kept until the plugin changes; {REPROBE_ENV_VAR}=1 checks again)"
            todo = [s for s in todo if s.name != step[1]]
            continue
        except ChildRaised:
            break  # the probe itself failed, not a plugin
        found.update({s.name: "" for s in todo})
        fresh = {backend: (plugin, Availability(*av)) for backend, (plugin, av) in result.items()}
        break
    verdicts.update(found)
    for name, verdict in found.items():
        _verdicts[keys[name]] = verdict
    if found:
        _write_cache({keys[name]: {"plugin": name, "verdict": verdict} for name, verdict in found.items()})
    return verdicts, fresh


def _probe_child(specs: list[list[str]], channel) -> dict[str, tuple[str, tuple[bool, str, bool]]]:
    """In the probe's child: load the plugins as the parent would, then ask each backend's availability."""
    os.environ[ISOLATION_ENV_VAR] = "0"  # a plugin that builds a registry here must not start a probe of its own
    sources = []
    for spec in specs:
        if spec[0] == "entry_point":
            ep = metadata.EntryPoint(spec[1], spec[2], ENTRY_POINT_GROUP)
            sources.append(_Source(spec[1], "", ep.load))
        else:
            sources.append(_Source(spec[1], "", partial(importlib.import_module, spec[1])))
    reg = PluginRegistry(builtins=False, entry_points=False, environment=False)
    reg._trace = lambda step, name: channel.event((step, name))
    reg._load(sources)
    found = {}
    for backend, entry in reg.runners.items():
        channel.event(("availability", entry.plugin.name, backend))
        av = _availability(entry.cls)
        found[backend] = (entry.plugin.name, (av.ok, av.reason, av.broken))
    channel.event(("done", ""))
    return found


def _fingerprint(source: _Source) -> str:
    """What a kept verdict depends on: the plugin's files (found without importing them), its distribution's
    version, this Python, signflow-zoo and the host."""
    from signflow_zoo.common.cachefiles import stable_hash

    spec = source.spec or ("module", source.name)
    module = spec[2].partition(":")[0].strip() if spec[0] == "entry_point" else spec[1]
    return stable_hash({"spec": list(spec), "package": source.package, "files": _module_files(module),
                        "python": [sys.executable, sys.version], "signflow_zoo": __version__, "host": platform.node()})


def _module_files(module: str, limit: int = 2000) -> list[list[Any]]:
    """``[path, mtime_ns, size]`` of the files that make up ``module`` (all of a package's), located the way import
    locates them but without importing anything (a dotted name's parents included)."""
    parts = module.split(".")
    path = None
    spec = None
    for i in range(len(parts)):
        spec = _find_spec(".".join(parts[: i + 1]), path)
        if spec is None or (i < len(parts) - 1 and spec.submodule_search_locations is None):
            return [["missing", module]]
        path = spec.submodule_search_locations
    assert spec is not None
    roots = list(spec.submodule_search_locations or ()) or ([spec.origin] if spec.origin else [])
    files: list[list[Any]] = []
    for root in roots:
        if os.path.isfile(root):
            found = [root]
        else:
            found = []
            for folder, dirs, names in os.walk(root):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                found += [os.path.join(folder, n) for n in sorted(names) if n.endswith((".py", ".so", ".pyd"))]
                if len(found) > limit:
                    break
        for f in found[:limit]:
            try:
                st = os.stat(f)
                files.append([f, st.st_mtime_ns, st.st_size])
            except OSError:
                files.append([f, None, None])
    return files


def _find_spec(name: str, path: Any):
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if find is None:
            continue
        try:
            spec = find(name, path)
        except Exception:  # noqa: BLE001, S112 - a finder that cannot answer is skipped
            continue
        if spec is not None:
            return spec
    return None


def _cache_file() -> Path:
    from signflow_zoo.common.cachefiles import zoo_home

    return zoo_home() / "plugins" / "probe.json"


def _read_cache() -> dict[str, str]:
    try:
        data = loads_json(_cache_file().read_bytes(), str(_cache_file()))
        entries = data["verdicts"]
        return {k: v["verdict"] for k, v in entries.items() if isinstance(v, dict) and isinstance(v.get("verdict"), str)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_cache(new: dict[str, dict[str, str]], keep: int = 500) -> None:
    from signflow_zoo.common.cachefiles import atomic_write_text

    try:
        try:
            entries = loads_json(_cache_file().read_bytes(), str(_cache_file()))["verdicts"]
            if not isinstance(entries, dict):
                entries = {}
        except (OSError, ValueError, KeyError, TypeError):
            entries = {}
        entries.update({k: {**v, "at": round(time.time())} for k, v in new.items()})
        newest = sorted(entries.items(), key=lambda kv: kv[1].get("at", 0) if isinstance(kv[1], dict) else 0)[-keep:]
        atomic_write_text(_cache_file(), json.dumps({"version": 1, "verdicts": dict(newest)}, indent=1))
    except OSError:
        pass  # a read-only home: the probe runs again next time


_registry: PluginRegistry | None = None


def get_registry(reload: bool = False) -> PluginRegistry:
    """The process-wide registry from built-ins, entry points and the environment, loaded lazily once."""
    global _registry
    if _registry is None or reload:
        _registry = PluginRegistry()
    return _registry


def describe_backends(registry=None) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Every registered backend and whether it can run here, as ``(rows, broken)``: one row per backend
    (name, plugin, package, artifact, precision, device, available, reason when not, summary) and the broken
    plugins with their error. What ``signflow-zoo backends`` lists."""
    reg = registry or get_registry()
    rows, broken = [], [{"plugin": b.name, "package": b.package, "error": b.error} for b in reg.broken]
    for name, be in reg.runners.items():
        av = reg.availability(name)
        rows.append({"name": name, "plugin": be.plugin.name, "package": be.plugin.package, "artifact": be.cls.artifact,
                     "precision": be.cls.precision, "device": be.cls.device_kind, "available": av.ok,
                     "reason": "" if av.ok else av.reason, "detail": av.reason if av.ok else "",
                     "summary": be.cls.summary})
        if av.broken:
            broken.append({"plugin": be.plugin.name, "package": be.plugin.package, "error": f"{name}: {av.reason}"})
    return rows, broken
