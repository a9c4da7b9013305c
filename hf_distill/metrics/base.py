"""What the shipped score metrics (AUROC, AUPRC) share; each `evaluate` module adds only its name and function."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import datasets
import evaluate
import numpy as np

from .functional import multiclass_scores

SCORES_INPUTS = """
Args:
    prediction_scores (`list[list[float]]`): Per example, the probability of each class (or one score for class 1).
    references (`list[int]`): The true classes.
Returns:
    dict with one float: binary (scores of class 1) or the one-vs-rest macro average over classes.
"""


class ScoresMetric(evaluate.Metric):
    """An `evaluate` metric on class scores; each shipped module subclasses it with `metric_name` and `score_fn`."""

    metric_name: str
    score_fn: Callable[[Sequence[int], Sequence[float]], float]
    description: str = ""

    def _info(self) -> evaluate.MetricInfo:
        features = {"prediction_scores": datasets.Sequence(datasets.Value("float64"))}
        features["references"] = datasets.Value("int64")
        return evaluate.MetricInfo(
            description=self.description,
            citation="",
            inputs_description=SCORES_INPUTS,
            features=datasets.Features(features),
        )

    def _compute(self, prediction_scores, references) -> dict[str, float]:
        scores = np.asarray(prediction_scores, dtype=np.float64)
        score_fn = type(self).score_fn
        if scores.shape[1] <= 2:
            return {self.metric_name: score_fn(references, scores[:, -1])}
        return {self.metric_name: multiclass_scores(references, scores, score_fn)}
