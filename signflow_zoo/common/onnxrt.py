"""Opening an ONNX model file in ONNX Runtime with an error that names the file.

The one implementation behind ``signflow_zoo.api.open_session`` (re-exported by
:mod:`signflow_zoo.backends.ort`) and the export's verification and optimization
(:mod:`signflow_zoo.model.export`): it sits here, below both. ``onnxruntime`` is imported only when a
session is opened.
"""

from __future__ import annotations

from pathlib import Path

from signflow_zoo.common.errors import ModelFileError


def open_session(path: str | Path, options=None, providers=("CPUExecutionProvider",)):
    """An ``onnxruntime.InferenceSession``; a missing or corrupt file is a :class:`ModelFileError` naming it."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: ONNX model file not found")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as exc:  # ORT raises several exception types for corrupt protobufs
        msg = str(exc).splitlines()[0][:300]
        raise ModelFileError(f"{path}: not a loadable ONNX model ({msg}); re-export it with `signflow-zoo export`") from None
