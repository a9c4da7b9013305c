"""AUROC, average precision (AUPRC) and F1 in NumPy, following scikit-learn's definitions (ties included)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _binary(y_true: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y, s = np.asarray(y_true).astype(bool).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"Got {y.size} labels and {s.size} scores.")
    if y.all() or not y.any():
        raise ValueError("AUROC/AUPRC need both classes among the references; only one is present.")
    return y, s


def roc_auc(y_true: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve of binary labels `y_true` (0/1) and scores (higher = positive), ties counted half."""
    y, s = _binary(y_true, scores)
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # average 1-based rank of tied scores
    positives, negatives = y.sum(), (~y).sum()
    return float((ranks[y].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def average_precision(y_true: Sequence[int], scores: Sequence[float]) -> float:
    """`sum_n (R_n - R_{n-1}) P_n` over the distinct score thresholds, highest first (scikit-learn's AP)."""
    y, s = _binary(y_true, scores)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # last index of each distinct threshold
    true_positives = np.cumsum(y)[last]
    precision = true_positives / (last + 1)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def f1(y_true: Sequence[int], y_pred: Sequence[int], average: str = "binary") -> float:
    """
    F1 score. `"binary"`: of class 1; `"macro"`: mean over the classes present in `y_true` or `y_pred`; `"micro"`:
    over all decisions. A class with no true or predicted positive scores 0 (scikit-learn's `zero_division` default).
    """
    y, p = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if y.shape != p.shape:
        raise ValueError(f"Got {y.size} labels and {p.size} predictions.")

    def one(label) -> tuple[int, int, int]:
        return (
            int(((p == label) & (y == label)).sum()),
            int(((p == label) & (y != label)).sum()),
            int(((p != label) & (y == label)).sum()),
        )

    def score(tp: int, fp: int, fn: int) -> float:
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0

    if average == "binary":
        return score(*one(1))
    labels = np.union1d(y, p)
    if average == "macro":
        return float(np.mean([score(*one(label)) for label in labels]))
    if average == "micro":
        return score(*np.sum([one(label) for label in labels], axis=0))
    raise ValueError(f"average={average!r}: choose 'binary', 'macro' or 'micro'.")


def multiclass_scores(y_true: Sequence[int], probabilities: np.ndarray, metric) -> float:
    """One-vs-rest macro average of a binary score `metric` over the classes (columns of `probabilities`)."""
    y, probs = np.asarray(y_true).ravel(), np.asarray(probabilities, dtype=np.float64)
    return float(np.mean([metric(y == c, probs[:, c]) for c in range(probs.shape[1])]))
