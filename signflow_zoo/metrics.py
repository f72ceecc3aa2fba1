"""Classification metrics shared by training and the benchmark harness (numpy only)."""

from __future__ import annotations

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
