"""AUROC as an `evaluate` module shipped with hf_distill (offline; see `hf_distill.metrics.load_metric`)."""

import evaluate

from hf_distill.metrics.base import ScoresMetricMixin
from hf_distill.metrics.functional import roc_auc


class RocAuc(ScoresMetricMixin, evaluate.Metric):
    metric_name = "roc_auc"
    score_fn = staticmethod(roc_auc)
    description = "Area under the ROC curve (ties counted half), binary or one-vs-rest macro."
