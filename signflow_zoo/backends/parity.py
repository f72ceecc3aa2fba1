"""Numerical parity of a backend against the PyTorch fp32 reference.

Tolerances follow the backend's declared precision. Errors are scaled by the reference's magnitude
(``max|ref|``, at least 1) so that they mean the same for small and large logits. fp32 must agree
tightly; tf32/fp16/bf16 looser, and low-precision backends must also keep top-1 agreement; int8 is
judged by top-1 agreement (and, in the harness, by its accuracy change). A backend with a precision
outside this table declares its own :class:`Tolerance` (``Runner.tolerance``); the table's precisions
keep theirs, so that no plugin can loosen what "fp32" means.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np


class Tolerance(NamedTuple):
    max_error: float | None  # max abs error scaled by max(|reference|, 1); None = judged by top-1 only
    min_top1: float  # min fraction of samples whose arg-max agrees with the reference


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(1e-4, 0.0),
    "tf32": Tolerance(5e-3, 0.98),
    "fp16": Tolerance(1e-2, 0.98),
    "bf16": Tolerance(5e-2, 0.95),
    "int8": Tolerance(None, 0.90),
}


@dataclass
class ParityResult:
    precision: str
    max_abs: float
    max_rel: float  # max abs error / max(|reference|, 1)
    top1_agreement: float
    samples: int
    tolerance_rel: float | None
    min_agreement: float
    ok: bool
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def compare(outputs: np.ndarray, reference: np.ndarray, precision: str = "fp32",
            tolerance: Tolerance | tuple[float | None, float] | None = None) -> ParityResult:
    """Judge by the table's tolerance for ``precision``; outside the table by ``tolerance``, else fp32's."""
    outputs = np.asarray(outputs, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if outputs.shape != reference.shape:
        return ParityResult(precision, float("inf"), float("inf"), 0.0, len(reference), None, 1.0, False,
                            f"output shape {outputs.shape} differs from the reference {reference.shape}")
    tol, min_agree = TOLERANCES.get(precision) or tolerance or TOLERANCES["fp32"]
    if not np.isfinite(outputs).all():
        return ParityResult(precision, float("inf"), float("inf"), 0.0, len(reference), tol, min_agree, False,
                            "outputs contain NaN or infinity")
    diff = np.abs(outputs - reference)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = max(float(np.abs(reference).max()) if reference.size else 1.0, 1.0)
    max_rel = max_abs / scale
    agree = float((outputs.argmax(1) == reference.argmax(1)).mean()) if len(reference) else 1.0
    problems = []
    if tol is not None and max_rel > tol:
        problems.append(f"scaled error {max_rel:.2e} > {tol:.0e} allowed for {precision}")
    if agree < min_agree:
        problems.append(f"top-1 agreement {agree:.3f} < {min_agree} required for {precision}")
    ok = not problems
    msg = "ok" if ok else "; ".join(problems)
    return ParityResult(precision, max_abs, max_rel, agree, len(reference), tol, min_agree, ok, msg)
