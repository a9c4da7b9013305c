"""Average precision (AUPRC) as an `evaluate` module shipped with hf_distill (offline; see `load_metric`)."""

import evaluate

from hf_distill.metrics.base import ScoresMetricMixin
from hf_distill.metrics.functional import average_precision


class AveragePrecision(ScoresMetricMixin, evaluate.Metric):
    metric_name = "average_precision"
    score_fn = staticmethod(average_precision)
    description = "Average precision (step-wise area under the precision-recall curve), binary or one-vs-rest macro."
