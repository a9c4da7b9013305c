"""F1 as an `evaluate` metric module shipped with hf_distill (offline; see `hf_distill.metrics.load_metric`)."""

import datasets
import evaluate

from hf_distill.metrics.functional import f1

_DESCRIPTION = "F1 score: of class 1 (average='binary'), or 'macro' / 'micro' over classes."
_INPUTS = """
Args:
    predictions (`list[int]`): Predicted classes.
    references (`list[int]`): True classes.
    average (`str`): 'binary' (default), 'macro' or 'micro'.
Returns:
    f1 (`float`)
"""


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, average="binary"):
        return {"f1": f1(references, predictions, average)}
