"""AUROC as an `evaluate` module shipped with hf_distill (offline; see `hf_distill.metrics.load_metric`)."""

from hf_distill.metrics import base  # the module, not the class: evaluate loads the one class defined here
from hf_distill.metrics.functional import roc_auc


class RocAuc(base.ScoresMetric):
    metric_name = "roc_auc"
    score_fn = staticmethod(roc_auc)
    description = "Area under the ROC curve (ties counted half), binary or one-vs-rest macro."
