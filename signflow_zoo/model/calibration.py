"""Confidence calibration fitted on the validation set after training, stored with the weights.

The validation set is split in two (:func:`holdout_split`): by signer when it holds at least two signers,
else into a fixed seeded half stratified by class. A softmax temperature (one scalar dividing the logits) and
per-class thresholds are fitted on the *fit* part; the temperature is kept only when it lowers the negative
log-likelihood of the other, *held-out* part (else it is 1.0, and the record says why). The expected
calibration error (:func:`signflow_zoo.model.metrics.expected_calibration_error`, 15 equal-width bins) and the
NLL are reported on the held-out part, before and after, so they are not measured on the clips the
temperature was fitted on. Per-class thresholds say how sure the model must be before a prediction of that
class is accepted; they are learned the way the original SignFlow learned them. Both travel in the checkpoint
metadata (``calibration``) and from there into the ONNX file (``calibration_temperature``,
``class_thresholds``), where the streaming pipeline reads them.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from signflow_zoo.model.metrics import ECE_BINS, expected_calibration_error

__all__ = ["TEMPERATURE_BOUNDS", "THRESHOLD_CANDIDATES", "SPLIT_SEED", "softmax", "nll", "fit_temperature",
           "expected_calibration_error", "fit_class_thresholds", "holdout_split", "fit_calibration"]

# The original clamped its fitted temperature to [0.5, 10]: a small validation set can otherwise push
# T towards 0 (all predictions right: sharper is always "better") or towards infinity.
TEMPERATURE_BOUNDS = (0.5, 10.0)
# The original's threshold grid, and its threshold for a class the validation set never shows.
THRESHOLD_CANDIDATES = np.linspace(0.25, 0.95, 15)
UNSEEN_CLASS_THRESHOLD = 0.75
COST_WEIGHT = 0.02  # weight of (false positives + false negatives) / N against F1 when picking a threshold

SPLIT_SEED = 0  # the fixed seed of the validation split when it cannot be split by signer

METHOD = ("validation split in two (by signer when it has >= 2 signers, else a seeded half stratified by class); "
          "temperature: golden-section search of log T in [0.5, 10] minimising the NLL of the fit part, kept only "
          "when it lowers the NLL of the held-out part (else 1.0); class_thresholds: per class, the threshold in "
          "linspace(0.25, 0.95, 15) on the calibrated probability of the fit part maximising one-vs-rest "
          "F1 - 0.02 * (FP + FN) / N (0.75 for a class absent from it), as the original SignFlow learned them; "
          "ECE (15 bins) and NLL before and after on the held-out part")


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


def holdout_split(labels: np.ndarray, signers: Sequence[str] | None = None,
                  seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray, str]:
    """(fit positions, held-out positions, how) of a validation set: two disjoint parts that cover it.

    With ``signers`` naming at least two signers, by signer: the signers in a seeded order, each into the
    part that holds fewer clips so far (the fit part on a tie), so no signer is in both. Else a fixed seeded
    half stratified by class: each class's clips in a seeded order, alternately fit and held out (the fit
    part gets the odd one). A set of one clip is all fit, nothing held out. ``how`` is ``"signer"`` or
    ``"seeded-half"``.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    n = len(labels)
    rng = np.random.default_rng(seed)
    if signers is not None and len(signers) == n and len(set(signers)) >= 2:
        names = sorted(set(signers))
        order = [names[i] for i in rng.permutation(len(names))]
        count = {name: 0 for name in names}
        for s in signers:
            count[s] += 1
        fit_names: set[str] = set()
        sizes = [0, 0]
        for name in order:
            part = 0 if sizes[0] <= sizes[1] else 1
            sizes[part] += count[name]
            if part == 0:
                fit_names.add(name)
        fit = np.array([i for i, s in enumerate(signers) if s in fit_names], dtype=np.int64)
        held = np.array([i for i, s in enumerate(signers) if s not in fit_names], dtype=np.int64)
        return fit, held, "signer"
    ordered = np.concatenate([np.flatnonzero(labels == c)[rng.permutation(int((labels == c).sum()))]
                              for c in np.unique(labels)]) if n else np.zeros(0, np.int64)
    return np.sort(ordered[0::2]), np.sort(ordered[1::2]), "seeded-half"


def fit_calibration(logits: np.ndarray, labels: np.ndarray, signers: Sequence[str] | None = None,
                    bins: int = ECE_BINS, seed: int = SPLIT_SEED) -> dict[str, Any] | None:
    """The checkpoint's ``calibration`` entry from validation ``logits`` [N, C]; None for an empty set.

    Fitted on one part of the validation set and measured on the other (:func:`holdout_split`, by ``signers``
    when they name two or more). ``temperature`` is the one served: the fitted one (``fitted_temperature``)
    when it lowers the held-out NLL, else 1.0 (``temperature_kept`` False, ``temperature_reason`` says why).
    ``ece_before``/``nll_before`` are the held-out part at temperature 1, ``ece_after``/``nll_after`` at the
    served temperature; all four are None when nothing could be held out. ``fit_size``/``eval_size`` count
    the two parts.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return None
    fit, held, split = holdout_split(labels, signers, seed)
    fitted = fit_temperature(logits[fit], labels[fit])
    ece_before = ece_after = nll_before = nll_after = None
    if len(held) == 0:
        temperature, kept = 1.0, False
        reason = (f"the validation set ({len(labels)} clip) is too small to hold out a part to check a temperature "
                  "on: none is kept")
    else:
        lh, yh = logits[held], labels[held]
        nll_before, nll_fitted = nll(lh, yh), nll(lh, yh, fitted)
        kept = nll_fitted < nll_before
        temperature = fitted if kept else 1.0
        if kept:
            reason = (f"the temperature fitted on {len(fit)} clips lowers the NLL of the {len(held)} held-out clips "
                      f"from {nll_before:.4g} to {nll_fitted:.4g}")
        else:
            reason = (f"the temperature {fitted:.4g} fitted on {len(fit)} clips does not lower the NLL of the "
                      f"{len(held)} held-out clips ({nll_before:.4g} -> {nll_fitted:.4g}): 1.0 is kept")
        nll_after = nll(lh, yh, temperature)
        ece_before = expected_calibration_error(softmax(lh), yh, bins)
        ece_after = expected_calibration_error(softmax(lh, temperature), yh, bins)
    return {
        "temperature": float(temperature),
        "class_thresholds": fit_class_thresholds(softmax(logits[fit], temperature), labels[fit], logits.shape[1]),
        "ece_before": ece_before,
        "ece_after": ece_after,
        "nll_before": nll_before,
        "nll_after": nll_after,
        "fitted_temperature": float(fitted),
        "temperature_kept": bool(kept),
        "temperature_reason": reason,
        "split": split,
        "split_seed": int(seed),
        "fit_size": int(len(fit)),
        "eval_size": int(len(held)),
        "bins": bins,
        "fitted_on": "validation",
        "method": METHOD,
    }
