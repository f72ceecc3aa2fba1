"""Class labels given by the user (a list, or a labels file) for a model file that carries none.

A model exported the original SignFlow way (``torch.onnx.export`` of its model, one input, no metadata) or an
original checkpoint saved without ``class_labels`` does not say which sign each output is; the user gives the
labels, in output order, as a Python list or a file:

* **a JSON list** of strings: ``["hello", "thanks", "yes"]``;
* **a JSON object** with a ``labels`` or ``class_labels`` list (the original's ``export_model_metadata`` file);
* **text**, one label per line (surrounding spaces and blank lines ignored); a first line such as ``[NONE]``
  (the original's "no sign" class) is a label, not JSON: JSON starts with ``{``, ``["``, ``[[`` or ``[]``.

Whatever the source, the labels must be non-empty strings, each class its own (no repeats), at most
:data:`MAX_LABELS` of them; a file is read with a bounded size and nesting. Every problem is one
:class:`LabelsError` line naming the file (or "labels") and the fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from signflow_zoo.common.documents import DocumentError, loads_json
from signflow_zoo.common.errors import SignFlowError

MAX_LABELS = 100_000  # as many classes as a model file may have (signflow_zoo.serve.modelfile.MAX_CLASSES)
MAX_LABELS_FILE_BYTES = 16 * 1024 * 1024  # 100,000 labels of ~160 characters: more is not a labels file


_JSON_START = re.compile(r'\{|\[\s*["\[\]]')


class LabelsError(SignFlowError, ValueError):
    """A labels list or labels file is malformed, or does not fit the model it is given for."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_labels(labels: Any, what: str = "labels") -> list[str]:
    """``labels`` as a list of strings when it is a usable label list; :class:`LabelsError` naming ``what`` else."""
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
        raise LabelsError(f"{what}: expected a list of label strings (one per model output, in output order), "
                          f"got {type(labels).__name__}")
    out = list(labels)
    if not out:
        raise LabelsError(f"{what}: the list is empty; give one label per model output")
    if len(out) > MAX_LABELS:
        raise LabelsError(f"{what}: {len(out)} labels; at most {MAX_LABELS} classes are supported")
    for i, label in enumerate(out):
        if not isinstance(label, str) or not label.strip():
            raise LabelsError(f"{what}: label {i} is {_shown(label)}; every label must be a non-empty string")
    seen: set[str] = set()
    for label in out:
        if label in seen:
            raise LabelsError(f"{what}: {label!r} is listed twice; each class needs its own label")
        seen.add(label)
    return out


def read_labels(source: str | os.PathLike[str] | Sequence[str]) -> list[str]:
    """The labels of ``source``: a list of strings (checked), or the path of a labels file (see the module)."""
    if not isinstance(source, (str, os.PathLike)):
        return check_labels(source)
    path = Path(source)
    if not path.is_file():
        raise LabelsError(f"{path}: labels file not found (give a JSON list or one label per line)")
    size = path.stat().st_size
    if size > MAX_LABELS_FILE_BYTES:
        raise LabelsError(f"{path}: {size} bytes is too large for a labels file (at most {MAX_LABELS_FILE_BYTES})")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelsError(f"{path}: not UTF-8 text ({exc}); write one label per line, or a JSON list") from None
    stripped = text.lstrip()
    if _JSON_START.match(stripped):  # a JSON list or object; "[NONE]" on the first line is a label
        try:
            doc = loads_json(stripped, f"{path}: labels file")
        except DocumentError as exc:
            raise LabelsError(str(exc)) from None
        if isinstance(doc, dict):
            key = next((k for k in ("labels", "class_labels") if k in doc), None)
            if key is None:
                raise LabelsError(f"{path}: a JSON object without a 'labels' (or 'class_labels') list; give a JSON "
                                  "list of labels, or one label per line")
            return check_labels(doc[key], f"{path}: {key}")
        return check_labels(doc, str(path))
    return check_labels([line.strip() for line in text.splitlines() if line.strip()], str(path))


__all__ = ["LabelsError", "check_labels", "read_labels", "MAX_LABELS"]
