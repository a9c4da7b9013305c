"""DDK (arXiv 2407.16154) and multi-domain training: the weighted domain sampler, the mixture update, the per-domain
evaluator and the callback that re-weights the mixture during training."""

from .callback import DDKAttach, DDKCallback, DDKParts
from .data import DOMAIN_IDS, DomainCollator, concatenate_domains, domain_ids, domain_labels, split_by_domain
from .domains import TrainingDomains
from .estimate import DomainEstimate, gap_standard_error, mean_standard_error, overlapping
from .evaluator import DomainBatches, DomainEvaluator
from .mixture import DomainMixture
from .packing import DomainReader
from .sampler import DomainWeightedSampler
from .stream import DomainStream, StreamMixture
from .update import (
    GAPS,
    bound_weights,
    check_weight_bounds,
    ddk_update,
    discrepancy_factor,
    domain_gap,
    parse_domain_weights,
)

__all__ = [
    "DOMAIN_IDS",
    "GAPS",
    "DDKAttach",
    "DDKCallback",
    "DDKParts",
    "DomainBatches",
    "DomainCollator",
    "DomainEstimate",
    "DomainEvaluator",
    "DomainMixture",
    "DomainReader",
    "DomainStream",
    "DomainWeightedSampler",
    "StreamMixture",
    "TrainingDomains",
    "bound_weights",
    "check_weight_bounds",
    "concatenate_domains",
    "ddk_update",
    "discrepancy_factor",
    "domain_gap",
    "domain_ids",
    "domain_labels",
    "gap_standard_error",
    "mean_standard_error",
    "overlapping",
    "parse_domain_weights",
    "split_by_domain",
]
