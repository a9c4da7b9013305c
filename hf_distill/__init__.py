"""hf_distill: knowledge distillation as a `transformers.Trainer` extension."""

from .alignment import parse_layer_map, resolve_layer_map
from .config import DistillationConfig
from .data import DomainCollator, DSGKDCollator, concatenate_domains, split_by_domain
from .domains import DDKCallback, DomainTermTagger, DomainWeightedSampler, ddk_update, discrepancy_factor
from .losses import (
    HiddenProjector,
    attention_map_loss,
    cross_entropy_loss,
    hidden_state_loss,
    logit_distillation_loss,
    pool_word_states,
    sparse_distillation_loss,
    token_divergence,
    word_attention_maps,
)
from .teacher_cache import TeacherCache, TeacherCacheCollator, build_teacher_cache
from .trainer import PROJECTOR_NAME, DistillationTrainer

__version__ = "0.1.0"

__all__ = [
    "PROJECTOR_NAME",
    "DDKCallback",
    "DistillationConfig",
    "DistillationTrainer",
    "DSGKDCollator",
    "DomainCollator",
    "DomainTermTagger",
    "DomainWeightedSampler",
    "HiddenProjector",
    "TeacherCache",
    "TeacherCacheCollator",
    "attention_map_loss",
    "build_teacher_cache",
    "concatenate_domains",
    "cross_entropy_loss",
    "ddk_update",
    "discrepancy_factor",
    "hidden_state_loss",
    "logit_distillation_loss",
    "parse_layer_map",
    "pool_word_states",
    "sparse_distillation_loss",
    "resolve_layer_map",
    "split_by_domain",
    "token_divergence",
    "word_attention_maps",
]
