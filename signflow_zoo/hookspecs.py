"""The whole plugin contract of signflow-zoo: two hooks, each handed a ``register`` callback.

A plugin is a module or object with functions marked ``@hookimpl`` (import it from ``signflow_zoo.api``)
named like the hooks below. Every plugin's artifact kinds are registered before any runner, so a backend
may consume a kind registered by another plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from signflow_zoo.backends.kinds import ArtifactKind
    from signflow_zoo.backends.runner import Runner

hookspec = pluggy.HookspecMarker("signflow_zoo")
hookimpl = pluggy.HookimplMarker("signflow_zoo")


@hookspec
def register_artifact_kinds(register: Callable[[type[ArtifactKind]], None]) -> None:
    """Declare compiled model forms your backends consume: call ``register(ArtifactKindSubclass)`` per kind."""


@hookspec
def register_runners(register: Callable[[type[Runner]], None]) -> None:
    """Register backends: call ``register(RunnerSubclass)`` once per backend."""
