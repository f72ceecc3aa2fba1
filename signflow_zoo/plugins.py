"""Loads backend plugins: the built-in ones, then the ``signflow_zoo`` entry points.

One broken plugin never breaks the others: failures are kept in :attr:`PluginRegistry.broken` and
shown by ``signflow-zoo backends``. ``SIGNFLOW_ZOO_BLOCK_PLUGINS=name,name`` skips plugins by name.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from importlib.metadata import entry_points

import pluggy

from . import hookspecs
from .errors import BackendError
from .runners import Runner, validate_runner_class

ENTRY_POINT_GROUP = "signflow_zoo"
BLOCK_ENV_VAR = "SIGNFLOW_ZOO_BLOCK_PLUGINS"
DEFAULT_PLUGINS = (
    "signflow_zoo.default_plugins.torch_eager",
    "signflow_zoo.default_plugins.onnx_cpu",
    "signflow_zoo.default_plugins.onnx_cuda",
    "signflow_zoo.default_plugins.onnx_optimized",
)


@dataclass
class PluginInfo:
    name: str
    package: str  # "built-in" or "distribution version"
    error: str = ""


@dataclass
class RunnerEntry:
    cls: type[Runner]
    plugin: PluginInfo


class PluginRegistry:
    """Backends by name. ``extra`` plugin objects (e.g. from a notebook) register after all others."""

    def __init__(self, extra: list | tuple = ()) -> None:
        self.extra = list(extra)
        self.pm = pluggy.PluginManager("signflow_zoo")
        self.pm.add_hookspecs(hookspecs)
        self.runners: dict[str, RunnerEntry] = {}
        self.plugins: list[PluginInfo] = []
        self.broken: list[PluginInfo] = []

    def _blocked(self) -> set[str]:
        return {s.strip() for s in os.environ.get(BLOCK_ENV_VAR, "").split(",") if s.strip()}

    def load(self) -> "PluginRegistry":
        blocked = self._blocked()
        infos: dict[str, PluginInfo] = {}
        for modname in DEFAULT_PLUGINS:
            short = modname.rsplit(".", 1)[1]
            if short in blocked or modname in blocked:
                continue
            info = PluginInfo(short, "built-in")
            try:
                self.pm.register(importlib.import_module(modname), name=short)
                infos[short] = info
            except Exception as exc:  # noqa: BLE001
                info.error = f"{type(exc).__name__}: {exc}"
                self.broken.append(info)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in blocked:
                continue
            dist = getattr(ep, "dist", None)
            package = f"{dist.metadata['Name']} {dist.version}" if dist else ep.value
            info = PluginInfo(ep.name, package)
            try:
                if self.pm.has_plugin(ep.name):
                    raise BackendError(f"plugin name {ep.name!r} is already registered")
                self.pm.register(ep.load(), name=ep.name)
                infos[ep.name] = info
            except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, the rest run
                info.error = f"{type(exc).__name__}: {exc}"
                self.broken.append(info)
        for i, plugin in enumerate(self.extra):
            name = getattr(plugin, "__name__", None) or f"inline-{i}"
            self.pm.register(plugin, name=name)
            infos[name] = PluginInfo(name, "inline")
        # Built-ins first, then entry points, then inline: the first to claim a backend name keeps it.
        # Call each implementation on its own so that one failing plugin cannot stop the others.
        for impl in self.pm.hook.register_runners.get_hookimpls():
            info = infos.get(impl.plugin_name) or PluginInfo(impl.plugin_name, "unknown")
            added: list[str] = []

            def register(cls, _info=info, _added=added):
                validate_runner_class(cls)
                if cls.name in self.runners:
                    other = self.runners[cls.name].plugin
                    raise BackendError(f"backend name {cls.name!r} is already registered by plugin {other.name!r}")
                self.runners[cls.name] = RunnerEntry(cls, _info)
                _added.append(cls.name)

            try:
                impl.function(register=register)
                self.plugins.append(info)
            except Exception as exc:  # noqa: BLE001
                for name in added:
                    self.runners.pop(name, None)
                info.error = f"{type(exc).__name__}: {exc}"
                self.broken.append(info)
        return self

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
        names = [s.strip() for s in spec.split(",") if s.strip()]
        if not names:
            raise BackendError(f"no backend given; registered backends: all, {', '.join(self.runners)}")
        return [self.get(n) for n in names]


_registry: PluginRegistry | None = None


def get_registry(reload: bool = False) -> PluginRegistry:
    """The process-wide registry, loaded lazily once."""
    global _registry
    if _registry is None or reload:
        _registry = PluginRegistry().load()
    return _registry
