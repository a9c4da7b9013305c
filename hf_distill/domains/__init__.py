"""Multi-domain training: the weighted domain sampler and DDK's domain-gap-driven re-weighting."""

from .ddk import DDKCallback, ddk_update, discrepancy_factor, parse_domain_weights
from .sampler import DomainWeightedSampler
from .terms import DomainTermTagger, dominant_script

__all__ = [
    "DDKCallback",
    "DomainTermTagger",
    "DomainWeightedSampler",
    "ddk_update",
    "discrepancy_factor",
    "dominant_script",
    "parse_domain_weights",
]
