"""OpenVINO backends for signflow-zoo: fp32, bf16 (precision hint) and NNCF int8, all on CPU.

Installed with pip, found through the ``signflow_zoo`` entry-point group. The OpenVINO IR and its
int8 quantization are artifact kinds built from the ONNX export (``kinds.py``); runners only compile them.
"""

from .kinds import KINDS
from .runners import RUNNERS
from signflow_zoo.api import hookimpl


@hookimpl
def register_runners(register):
    for cls in RUNNERS:
        register(cls)


@hookimpl
def register_artifact_kinds(register):
    for kind in KINDS:
        register(kind)
