"""Multi-domain training: the weighted domain sampler and DDK's domain-gap-driven re-weighting."""

from .ddk import DDKCallback, ddk_update, discrepancy_factor, parse_domain_weights
from .sampler import DomainWeightedSampler

__all__ = ["DDKCallback", "DomainWeightedSampler", "ddk_update", "discrepancy_factor", "parse_domain_weights"]
