"""Backends: the ``Runner`` contract (``runner``), ONNX Runtime helpers (``ort``), artifact kinds and the
artifact store (``kinds``, ``artifacts``), parity tolerances, and the built-in backend plugins (``builtin``),
which like any third-party plugin import only :mod:`signflow_zoo.api`."""
