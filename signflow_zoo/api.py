"""The public API for signflow-zoo plugins: a backend imports from this module and nothing else.

The built-in backends (``signflow_zoo.backends.builtin``) and the example plugin
(``plugins/signflow-zoo-ort-int8``) use only these names; import-linter holds them to it. A plugin
implements one or both hooks of :mod:`signflow_zoo.hookspecs`::

    from signflow_zoo.api import ArtifactKind, OrtRunner, hookimpl

    @hookimpl
    def register_artifact_kinds(register):   # compiled forms your backend consumes
        register(MyKind)

    @hookimpl
    def register_runners(register):          # your backends
        register(MyRunner)

What is here:

* ``hookimpl`` marks a plugin's hook functions.
* ``Runner`` is the backend base class (``availability``, ``prepare``, ``infer``, ``describe``, ``close``;
  ``run`` validates input and is provided), with ``RunnerOptions`` (threads, device) and ``Availability``
  (``Availability.yes(detail)`` / ``Availability.no(reason)``). ``Runner.requires`` names the modules that
  must import for the backend to run (``requires = ("torch",)``): they are checked before the runner's own
  ``availability()``, and one that does not import makes the backend unavailable with a reason naming it and
  how to install it, so ``availability()`` need not try the imports itself.
* ``Artifacts`` is what ``prepare`` gets: ``artifacts.path_for(kind)`` is the file of any built-in or
  registered kind, ``artifacts.torch_model()`` the PyTorch reference.
* ``OrtRunner`` is a base for backends running an ONNX graph in ONNX Runtime (choose ``provider`` and
  ``artifact``); ``probe_provider`` says whether an execution provider really binds here and
  ``open_session`` opens a model file with a clear error.
* ``ArtifactKind`` and ``BuildContext`` declare a compiled form of the model built once from another
  kind and cached by signflow-zoo (``ensure_artifact`` builds one outside the harness); a kind whose best
  build depends on the CPU returns its choices from ``ArtifactKind.host_choices()``, deciding from
  ``cpu_flags()`` (this CPU's flags, or ``$SIGNFLOW_ZOO_CPU_FLAGS``).
* ``Tolerance`` is the parity tolerance a backend declares for a precision of its own (``Runner.tolerance``).
* Errors: ``BackendUnavailable`` (this backend cannot run here: the message is the reason),
  ``BackendError``, ``InputError``, ``ModelFileError``; ``check_input`` validates a batch as ``run`` does.
* ``FEATURE_DIM``: the features per frame the model reads (the last axis of ``features``), 469.
"""

from signflow_zoo.backends.kinds import ArtifactKind, BuildContext, ensure_artifact
from signflow_zoo.common.environment import cpu_flags
from signflow_zoo.common.errors import BackendError, InputError, ModelFileError
from signflow_zoo.hookspecs import hookimpl
from signflow_zoo.backends.ort import OrtRunner, open_session, probe_provider
from signflow_zoo.backends.parity import Tolerance
from signflow_zoo.backends.runner import Artifacts, Availability, BackendUnavailable, Runner, RunnerOptions
from signflow_zoo.common.tensors import FEATURE_DIM, check_input

__all__ = [
    "hookimpl",
    "Runner", "RunnerOptions", "Availability", "Artifacts",
    "OrtRunner", "open_session", "probe_provider",
    "ArtifactKind", "BuildContext", "ensure_artifact", "cpu_flags",
    "Tolerance",
    "BackendUnavailable", "BackendError", "InputError", "ModelFileError", "check_input", "FEATURE_DIM",
]
