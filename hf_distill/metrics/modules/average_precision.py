"""Average precision (AUPRC) as an `evaluate` module shipped with hf_distill (offline; see `load_metric`)."""

from hf_distill.metrics import base  # the module, not the class: evaluate loads the one class defined here
from hf_distill.metrics.functional import average_precision


class AveragePrecision(base.ScoresMetric):
    metric_name = "average_precision"
    score_fn = staticmethod(average_precision)
    description = "Average precision (step-wise area under the precision-recall curve), binary or one-vs-rest macro."
