"""Loads plugins: the built-in backends, the ``signflow_zoo`` entry points, then the modules named in
``SIGNFLOW_ZOO_PLUGINS=module,module``; ``SIGNFLOW_ZOO_BLOCK_PLUGINS=name,name`` skips plugins by name.

Each hook is called through pluggy one plugin at a time, built-ins first and the others in pluggy's
order, so that a plugin that fails (at import, while registering, even with ``SystemExit``, or by
claiming a name already taken) is listed in :attr:`PluginRegistry.broken` with its error, loses what it
registered in that hook, and the others load. Built-ins therefore keep their names whatever a plugin's
hook ordering.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from functools import partial
from importlib import metadata

import pluggy

from signflow_zoo import hookspecs
from signflow_zoo.backends.kinds import ArtifactKind, validate_kind_class
from signflow_zoo.common.errors import BackendError
from signflow_zoo.backends.runner import BUILTIN_ARTIFACT_KINDS, Availability, Runner, validate_runner_class

ENTRY_POINT_GROUP = "signflow_zoo"
PLUGINS_ENV_VAR = "SIGNFLOW_ZOO_PLUGINS"
BLOCK_ENV_VAR = "SIGNFLOW_ZOO_BLOCK_PLUGINS"
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

    def __init__(self, plugins: Iterable[object] = (), *, builtins: bool = True, entry_points: bool = True,
                 environment: bool = True) -> None:
        self.pm = pluggy.PluginManager("signflow_zoo")
        self.pm.add_hookspecs(hookspecs)
        self.runners: dict[str, RunnerEntry] = {}
        self.artifact_kinds: dict[str, KindEntry] = {}
        self.broken: list[PluginInfo] = []
        env = os.environ if environment else {}
        blocked = _names(env.get(BLOCK_ENV_VAR))
        sources: list[tuple[str, str, Callable[[], object]]] = []
        if builtins:
            sources += [(m.rsplit(".", 1)[1], BUILTIN, partial(importlib.import_module, m))
                        for m in DEFAULT_PLUGINS if m not in blocked]
        if entry_points:
            sources += [(ep.name, _package(ep), ep.load) for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)]
        sources += [(m, PLUGINS_ENV_VAR, partial(importlib.import_module, m)) for m in _names(env.get(PLUGINS_ENV_VAR))]
        sources += [(getattr(p, "__name__", None) or f"inline-{i}", "inline", (lambda p=p: p))  # type: ignore[misc]
                    for i, p in enumerate(plugins)]
        loaded = [self._add(*s) for s in sources if s[0] not in blocked]
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
        """The backend's ``availability()``, never raising: a plugin's failure becomes a broken reason."""
        try:
            av = self.get(name).cls.availability()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a plugin's bug must not stop the others
            return Availability.error(f"availability() raised {_error(exc)}")
        return av if isinstance(av, Availability) else Availability.error(f"availability() returned {av!r}")

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
