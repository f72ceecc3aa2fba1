"""The whole plugin contract of signflow-zoo.

A plugin is a module or object with functions marked ``@signflow_zoo.hookimpl`` named like the
hooks below. Third-party plugins are found through the ``signflow_zoo`` entry-point group; the
built-in backends in ``signflow_zoo.default_plugins`` are registered the same way.
"""

import pluggy

hookspec = pluggy.HookspecMarker("signflow_zoo")
hookimpl = pluggy.HookimplMarker("signflow_zoo")


@hookspec
def register_runners(register):
    """Register backend Runner classes: call ``register(RunnerSubclass)`` once per backend.

    :param register: callable taking a :class:`signflow_zoo.runners.Runner` subclass; it raises
        ``BackendError`` for a class that is not a Runner or whose ``name`` is already taken.
    """
