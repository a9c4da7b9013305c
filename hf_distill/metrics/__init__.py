"""Offline classification metrics: AUROC, AUPRC (average precision) and F1 as `evaluate` modules shipped here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .functional import average_precision, f1, multiclass_scores, roc_auc

MODULES = Path(__file__).parent / "modules"
METRICS = ("roc_auc", "average_precision", "f1")


def load_metric(name: str) -> Any:
    """
    Load one of the shipped `evaluate` modules by path, so no hub access is needed (`evaluate.load("f1")` looks the
    module up on the hub and fails offline).

    Args:
        name (`str`): `"roc_auc"`, `"average_precision"` or `"f1"`.

    Returns:
        `evaluate.EvaluationModule`
    """
    import evaluate

    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}: hf_distill ships {list(METRICS)}.")
    return evaluate.load(str(MODULES / f"{name}.py"))


def classification_metrics(eval_pred: Any) -> dict[str, float]:
    """
    `compute_metrics` for the Trainer: AUROC, AUPRC and F1 from logits (binary: of class 1; more classes:
    one-vs-rest macro AUROC/AUPRC and macro F1), computed through the shipped `evaluate` modules.

    Args:
        eval_pred (`EvalPrediction` or `(logits, labels)`).

    Returns:
        `dict` with `auroc`, `auprc` and `f1`.
    """
    logits, labels = eval_pred[0], eval_pred[1]
    logits = np.asarray(logits[0] if isinstance(logits, tuple) else logits, dtype=np.float64)
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    references = np.asarray(labels).astype(np.int64).tolist()
    scores = probabilities.tolist()
    average = "binary" if probabilities.shape[1] == 2 else "macro"
    return {
        "auroc": load_metric("roc_auc").compute(prediction_scores=scores, references=references)["roc_auc"],
        "auprc": load_metric("average_precision").compute(prediction_scores=scores, references=references)[
            "average_precision"
        ],
        "f1": load_metric("f1").compute(
            predictions=probabilities.argmax(-1).tolist(), references=references, average=average
        )["f1"],
    }


__all__ = ["average_precision", "classification_metrics", "f1", "load_metric", "multiclass_scores", "roc_auc"]
