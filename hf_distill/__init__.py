"""hf_distill: knowledge distillation as a `transformers.Trainer` extension."""

from .alignment import parse_layer_map, resolve_layer_map
from .config import DistillationConfig
from .losses import (
    HiddenProjector,
    attention_map_loss,
    cross_entropy_loss,
    hidden_state_loss,
    logit_distillation_loss,
    token_divergence,
)
from .trainer import PROJECTOR_NAME, DistillationTrainer

__version__ = "0.1.0"

__all__ = [
    "PROJECTOR_NAME",
    "DistillationConfig",
    "DistillationTrainer",
    "HiddenProjector",
    "attention_map_loss",
    "cross_entropy_loss",
    "hidden_state_loss",
    "logit_distillation_loss",
    "parse_layer_map",
    "resolve_layer_map",
    "token_divergence",
]
