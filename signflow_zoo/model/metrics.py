"""Classification metrics shared by training and the benchmark harness (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return cm


def f1_scores(cm: np.ndarray) -> tuple[float, float]:
    """(macro F1, support-weighted F1) over the classes present in the labels."""
    tp = np.diag(cm).astype(float)
    support = cm.sum(1).astype(float)
    predicted = cm.sum(0).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = support > 0
    if not present.any():
        return 0.0, 0.0
    return float(f1[present].mean()), float((f1 * support).sum() / support.sum())


def classification_report(logits: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> dict:
    """top-1, top-5, macro/weighted F1 and the confusion matrix of ``logits`` against ``labels``."""
    logits = np.asarray(logits)
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = num_classes or logits.shape[1]
    preds = logits.argmax(1)
    k = min(5, logits.shape[1])
    topk = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    cm = confusion_matrix(labels, preds, num_classes)
    macro, weighted = f1_scores(cm)
    n = max(len(labels), 1)
    return {
        "top1": float((preds == labels).sum() / n),
        "top5": float((topk == labels[:, None]).any(1).sum() / n),
        "macro_f1": macro,
        "weighted_f1": weighted,
        "confusion": cm,
    }


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95% by default) of a proportion: honest at small n and near 0 or 1.

    On 320 clips one clip is 0.3 points and the interval around 80% is about +-4.4 points: two
    accuracies whose intervals overlap this much are not a measured difference.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / denom
    # in [0, 1] and around p even where rounding puts centre + half a hair below p = 1 (1 - 1e-16)
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


ECE_BINS = 15


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of class probabilities ``probs`` [N, C] against integer ``labels`` [N].

    Each sample's confidence is its top probability, correct when the top class is its label. The
    confidences fall into ``bins`` equal-width bins over [0, 1] (``[k/B, (k+1)/B)``, the last one closed at
    1.0); ECE = sum over bins of (samples in bin / N) * |accuracy in bin - mean confidence in bin|.
    0 is perfectly calibrated; an empty set gives NaN.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return float("nan")
    conf = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    # per bin, n_b * |acc_b - conf_b| = |sum of correct - sum of confidences|
    gap = np.abs(np.bincount(which, correct, bins) - np.bincount(which, conf, bins))
    return float(gap.sum() / len(labels))


SIGNER_RESAMPLES = 2000
SIGNER_SEED = 0


@dataclass
class SignerAccuracy:
    """Top-1 per signer (:func:`per_signer_accuracy`).

    ``per_signer``: signer -> ``{"top1": float, "n": int}``; ``worst_signer`` and ``worst_signer_top1``: the
    signer with the lowest top-1 (ties: the first by name), ``""`` and None without clips; ``top1_ci``: the 95%
    top-1 interval from a cluster bootstrap over signers, None with fewer than two signers (no interval can be
    drawn from one signer: a resample is always that signer).
    """

    per_signer: dict[str, dict[str, Any]]
    worst_signer: str
    worst_signer_top1: float | None
    top1_ci: tuple[float, float] | None


def per_signer_accuracy(preds: np.ndarray, labels: np.ndarray, signers: Sequence[Any],
                        resamples: int = SIGNER_RESAMPLES, seed: int = SIGNER_SEED,
                        confidence: float = 0.95) -> SignerAccuracy:
    """Top-1 of each signer, the worst signer, and a top-1 interval bootstrapped over signers.

    ``preds`` and ``labels`` are the predicted and true class of each clip, ``signers`` the signer of each
    clip (a clip whose signer is empty or unknown counts in one group named as it is: ``""``, ``"unknown"``;
    ``None`` is ``""``).

    The interval is a cluster (signer-level) percentile bootstrap: ``resamples`` times, draw as many signers as
    there are, with replacement, and take the pooled top-1 of all their clips; the interval is the central
    ``confidence`` share of those top-1s, widened where needed to hold the measured pooled top-1. The clips of one
    signer are not independent (same hands, same habits), so this interval is wider than a Wilson interval over
    clips whenever signers differ. A fixed ``seed``: the same predictions give the same interval. Vectorised over
    per-signer counts: cost ``resamples x signers``, whatever the number of clips.
    """
    preds = np.asarray(preds).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    names = ["" if s is None else str(s) for s in signers]
    if not (len(preds) == len(labels) == len(names)):
        raise ValueError(f"per_signer_accuracy: {len(preds)} predictions, {len(labels)} labels and {len(names)} "
                         "signers: one of each per clip")
    if not names:
        return SignerAccuracy({}, "", None, None)
    groups, which = np.unique(np.asarray(names, dtype=object), return_inverse=True)
    which = which.reshape(-1)
    k = len(groups)
    n = np.bincount(which, minlength=k).astype(np.int64)
    correct = np.bincount(which, weights=(preds == labels).astype(np.float64), minlength=k)
    top1 = correct / n
    per_signer = {str(g): {"top1": float(t), "n": int(c)} for g, t, c in zip(groups, top1, n)}
    worst = int(np.argmin(top1))  # groups are sorted by name: ties go to the first name
    if k < 2:
        return SignerAccuracy(per_signer, str(groups[worst]), float(top1[worst]), None)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, k, size=(int(resamples), k))
    stats = correct[draws].sum(1) / n[draws].sum(1)
    alpha = (1.0 - confidence) / 2
    lo, hi = (float(v) for v in np.quantile(stats, [alpha, 1.0 - alpha]))
    pooled = float(correct.sum() / n.sum())
    return SignerAccuracy(per_signer, str(groups[worst]), float(top1[worst]), (min(lo, pooled), max(hi, pooled)))
