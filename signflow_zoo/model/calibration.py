"""Confidence calibration fitted on the validation set after training, stored with the weights.

A softmax temperature (one scalar dividing the logits) makes the probabilities honest, measured by the
expected calibration error (:func:`signflow_zoo.model.metrics.expected_calibration_error`, 15 equal-width bins)
before and after. Per-class thresholds say how sure the model must be before a prediction of that class
is accepted; they are learned the way the original SignFlow learned them. Both travel in the checkpoint
metadata (``calibration``) and from there into the ONNX file (``calibration_temperature``,
``class_thresholds``), where the streaming pipeline reads them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from signflow_zoo.model.metrics import ECE_BINS, expected_calibration_error

__all__ = ["TEMPERATURE_BOUNDS", "THRESHOLD_CANDIDATES", "softmax", "nll", "fit_temperature",
           "expected_calibration_error", "fit_class_thresholds", "fit_calibration"]

# The original clamped its fitted temperature to [0.5, 10]: a small validation set can otherwise push
# T towards 0 (all predictions right: sharper is always "better") or towards infinity.
TEMPERATURE_BOUNDS = (0.5, 10.0)
# The original's threshold grid, and its threshold for a class the validation set never shows.
THRESHOLD_CANDIDATES = np.linspace(0.25, 0.95, 15)
UNSEEN_CLASS_THRESHOLD = 0.75
COST_WEIGHT = 0.02  # weight of (false positives + false negatives) / N against F1 when picking a threshold

METHOD = ("temperature: golden-section search of log T in [0.5, 10] minimising the validation NLL; "
          "class_thresholds: per class, the threshold in linspace(0.25, 0.95, 15) on the calibrated "
          "probability maximising one-vs-rest F1 - 0.02 * (FP + FN) / N (0.75 for a class absent from "
          "validation), as the original SignFlow learned them")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / temperature)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    m = z.max(1, keepdims=True)
    log_norm = (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]
    return float(np.mean(log_norm - z[np.arange(len(z)), np.asarray(labels, dtype=np.int64)]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
                    tol: float = 1e-5) -> float:
    """The temperature in ``bounds`` minimising the NLL of ``labels`` under softmax(logits / T).

    The NLL is convex in 1/T, hence unimodal in log T: a golden-section search on log T finds the
    minimum (or the bound it lies beyond) to ``tol`` in log T. 1.0 for an empty set.
    """
    if len(labels) == 0:
        return 1.0
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = nll(logits, labels, math.exp(c)), nll(logits, labels, math.exp(d))
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = nll(logits, labels, math.exp(d))
    # the search never evaluates the bounds themselves; a minimum beyond them is the bound
    best = min((nll(logits, labels, math.exp(x)), x) for x in (lo, (a + b) / 2, hi))
    return float(math.exp(best[1]))


def fit_class_thresholds(probs: np.ndarray, labels: np.ndarray, num_classes: int | None = None,
                         candidates: np.ndarray = THRESHOLD_CANDIDATES) -> list[float]:
    """One acceptance threshold per class (label order), learned one-vs-rest on validation probabilities.

    For class c, a sample counts as predicted c when its probability of c reaches the threshold. The
    chosen threshold maximises F1 - 0.02 * (FP + FN) / N over ``candidates``; on a tie the higher F1 and
    then the lower threshold wins. A class with no validation sample gets 0.75. This is the original
    SignFlow's rule (its default objective, beta 1, equal costs).
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = num_classes or probs.shape[1]
    cand = np.asarray(candidates, dtype=np.float64)
    out: list[float] = []
    for c in range(num_classes):
        truth = labels == c
        if not truth.any():
            out.append(UNSEEN_CLASS_THRESHOLD)
            continue
        pred = probs[:, c][None, :] >= cand[:, None]  # [candidates, N]
        tp = (pred & truth).sum(1)
        fp = (pred & ~truth).sum(1)
        fn = (~pred & truth).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = np.where(tp > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        score = f1 - COST_WEIGHT * (fp + fn) / len(labels)
        best = np.lexsort((np.arange(len(cand)), -f1, -np.round(score, 12)))[0]
        out.append(float(cand[best]))
    return out


def fit_calibration(logits: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any] | None:
    """The checkpoint's ``calibration`` entry fitted on validation ``logits`` [N, C]; None for an empty set."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return None
    temperature = fit_temperature(logits, labels)
    calibrated = softmax(logits, temperature)
    return {
        "temperature": temperature,
        "class_thresholds": fit_class_thresholds(calibrated, labels, logits.shape[1]),
        "ece_before": expected_calibration_error(softmax(logits), labels, bins),
        "ece_after": expected_calibration_error(calibrated, labels, bins),
        "bins": bins,
        "fitted_on": "validation",
        "method": METHOD,
    }
