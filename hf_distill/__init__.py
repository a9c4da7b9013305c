"""hf_distill: knowledge distillation as a `transformers.Trainer` extension."""

from .alignment import parse_layer_map, resolve_layer_map
from .config import DistillationConfig
from .cross_tokenizer import CrossTokenizerCollator
from .ddk import (
    DDKCallback,
    DomainCollator,
    DomainMixture,
    DomainStream,
    DomainWeightedSampler,
    concatenate_domains,
    ddk_update,
    discrepancy_factor,
    domain_gap,
    split_by_domain,
)
from .dsg_kd import DomainTermTagger, DSGKDCollator
from .logs import install_library_logger
from .losses import (
    HiddenProjector,
    attention_map_loss,
    cross_entropy_loss,
    hidden_state_loss,
    logit_distillation_loss,
    pool_word_states,
    sparse_distillation_loss,
    token_divergence,
    uld_loss,
    word_attention_maps,
)
from .on_policy import PromptCompletionCollator
from .teacher_cache import TeacherCache, TeacherCacheCollator, build_teacher_cache
from .terms import LossTerm, TermInputs, register_loss_term, registered_terms, unregister_loss_term
from .training import (
    PROJECTOR_NAME,
    DistillationStudent,
    DistillationTrainer,
    EmptyLabelsError,
    NonFiniteError,
    convert_checkpoint,
    last_complete_checkpoint,
)

install_library_logger()  # warnings and one-line notices show in any script (HF_DISTILL_VERBOSITY sets the level)

__version__ = "0.2.0"

__all__ = [
    "PROJECTOR_NAME",
    "CrossTokenizerCollator",
    "DDKCallback",
    "DistillationConfig",
    "DistillationStudent",
    "DistillationTrainer",
    "DSGKDCollator",
    "DomainCollator",
    "DomainMixture",
    "DomainStream",
    "DomainTermTagger",
    "DomainWeightedSampler",
    "EmptyLabelsError",
    "HiddenProjector",
    "LossTerm",
    "NonFiniteError",
    "PromptCompletionCollator",
    "TeacherCache",
    "TeacherCacheCollator",
    "TermInputs",
    "attention_map_loss",
    "build_teacher_cache",
    "concatenate_domains",
    "convert_checkpoint",
    "cross_entropy_loss",
    "ddk_update",
    "discrepancy_factor",
    "domain_gap",
    "hidden_state_loss",
    "last_complete_checkpoint",
    "logit_distillation_loss",
    "parse_layer_map",
    "pool_word_states",
    "register_loss_term",
    "registered_terms",
    "sparse_distillation_loss",
    "resolve_layer_map",
    "split_by_domain",
    "token_divergence",
    "uld_loss",
    "unregister_loss_term",
    "word_attention_maps",
]
