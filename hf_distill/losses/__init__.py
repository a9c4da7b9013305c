"""Pure tensor loss functions for distillation; they know nothing of the Trainer."""

from ..dsg_kd.words import pool_word_states, word_attention_maps  # re-exported: DSG-KD owns them
from .attention import ATTENTION_LOSSES, attention_map_loss
from .chunk import CHUNK_KERNELS, ChunkSpec, logit_chunk
from .fused import LogitTransform, OutputHead, fused_logit_terms
from .hidden import HIDDEN_LOSSES, HiddenProjector, hidden_state_loss
from .logits import (
    DIVERGENCES,
    cross_entropy_loss,
    logit_distillation_loss,
    logit_terms,
    logprob_divergence,
    token_divergence,
)
from .spans import matched_columns, span_kd_loss, span_log_probs, span_uld_loss
from .sparse import sparse_distillation_loss
from .uld import ULD_NORMALISATIONS, aligned_positions, sorted_probability_distance, uld_loss

__all__ = [
    "ATTENTION_LOSSES",
    "aligned_positions",
    "CHUNK_KERNELS",
    "ChunkSpec",
    "DIVERGENCES",
    "HIDDEN_LOSSES",
    "HiddenProjector",
    "LogitTransform",
    "OutputHead",
    "attention_map_loss",
    "cross_entropy_loss",
    "fused_logit_terms",
    "hidden_state_loss",
    "logit_chunk",
    "logit_distillation_loss",
    "logit_terms",
    "logprob_divergence",
    "pool_word_states",
    "sparse_distillation_loss",
    "matched_columns",
    "sorted_probability_distance",
    "span_kd_loss",
    "span_log_probs",
    "span_uld_loss",
    "token_divergence",
    "ULD_NORMALISATIONS",
    "uld_loss",
    "word_attention_maps",
]
