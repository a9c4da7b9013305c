"""The built-in loss terms: task CE, logit KD (live or cached teacher), hidden states, attention maps, and DSG-KD's
word-level hidden states and attention maps. Each is a pure function of [`TermInputs`] plus one declaration."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..dsg_kd.words import pool_word_states, word_attention_maps
from ..losses import (
    attention_map_loss,
    cross_entropy_loss,
    hidden_state_loss,
    logit_distillation_loss,
    sparse_distillation_loss,
    uld_loss,
)
from ..teacher_cache import CACHE_KEYS
from .inputs import TermInputs, label_mask
from .registry import (
    ALIGNED_TOKENS,
    ATTENDED_TOKENS,
    ATTENTIONS,
    DOMAIN_WORDS,
    HIDDEN_STATES,
    LABEL_TOKENS,
    LABELS,
    LAYER_MAP,
    LOGITS,
    PROJECTIONS,
    TEACHER,
    TEACHER_CACHE,
    TEACHER_INPUTS,
    LossTerm,
    register_loss_term,
)

WORD_KEYS = ("word_pool", "teacher_word_pool", "word_mask")


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


# ---- logits -------------------------------------------------------------------------------------------------------


def task_cross_entropy(x: TermInputs) -> torch.Tensor:
    """Summed cross-entropy of the student against the labels."""
    if x.logit_sums is not None:
        return x.logit_sums()["ce"]
    return cross_entropy_loss(x.aligned(x.student.logits), x.shifted_labels, x.args.logit_chunk_size)


def logit_kd(x: TermInputs) -> torch.Tensor:
    """Summed `T^2 * D(p_T^T, p_S^T)` over the label positions, on the shared vocabulary."""
    if x.logit_sums is not None:
        return x.logit_sums()["kd"]
    args, vocab = x.args, x.vocab_size
    return logit_distillation_loss(
        x.aligned(x.student.logits)[..., :vocab], x.aligned(x.teacher.logits)[..., :vocab], mask=x.label_mask,
        divergence=args.divergence, temperature=args.temperature, jsd_beta=args.jsd_beta,
        chunk_size=args.logit_chunk_size,
    )  # fmt: skip


def cached_logit_kd(x: TermInputs) -> torch.Tensor | None:
    """Logit KD against the teacher's cached top-k log-probabilities (`None`, i.e. no term, for a batch without them,
    e.g. evaluation data: the cache covers the training set only)."""
    if CACHE_KEYS[0] not in x.batch:
        return None
    args = x.args
    top = [x.aligned(x.batch[key]) for key in CACHE_KEYS]
    return sparse_distillation_loss(
        x.aligned(x.student.logits)[..., : x.vocab_size], *top, x.label_mask, args.divergence, args.temperature,
        args.jsd_beta, args.logit_chunk_size,
    )  # fmt: skip


def cross_tokenizer_kd(x: TermInputs) -> torch.Tensor:
    """ULD: summed L1 distance between the sorted next-token probabilities of student and teacher, each on its own
    tokenization of the text, the `k`-th label position of one paired with the `k`-th of the other."""
    teacher_labels = x.batch.get("teacher_labels")
    if teacher_labels is None:
        raise ValueError(
            f"uld_weight={x.args.uld_weight} needs batches from CrossTokenizerCollator (the teacher's own "
            "teacher_input_ids, teacher_attention_mask, teacher_labels): use it as data_collator."
        )
    return uld_loss(
        x.aligned(x.student.logits), x.aligned(x.teacher.logits), x.label_mask, label_mask(teacher_labels, x.task),
        x.args.temperature, x.args.logit_chunk_size,
    )  # fmt: skip


# ---- hidden states and attention maps ------------------------------------------------------------------------------


def _hidden_distance(x: TermInputs, view: Callable, teacher_view: Callable, mask: torch.Tensor) -> torch.Tensor:
    """Hidden-state distance summed over `mask`, averaged over the layer pairs; the views pick tokens or words."""
    projected = x.student.projected_hidden_states
    return sum(
        hidden_state_loss(view(p), teacher_view(x.teacher.hidden_states[t]), mask, x.args.hidden_loss)
        for p, (_, t) in zip(projected, x.layer_pairs, strict=True)
    ) / len(x.layer_pairs)


def _attention_distance(
    x: TermInputs, view: Callable, teacher_view: Callable, mask: torch.Tensor, loss_type: str
) -> torch.Tensor:
    """Attention-map distance summed over the rows in `mask`, averaged over the attention layer pairs."""
    if not x.student.attentions or not x.teacher.attentions:
        raise RuntimeError(
            "An attention term is on but the student or teacher returned no attention maps: load both with "
            "attn_implementation='eager'."
        )
    return sum(
        attention_map_loss(
            view(x.student.attentions[s - 1]),
            teacher_view(x.teacher.attentions[t - 1]),
            mask,
            loss_type,
            x.args.attention_average_heads,
        )  # fmt: skip
        for s, t in x.attention_pairs
    ) / len(x.attention_pairs)


def hidden_states(x: TermInputs) -> torch.Tensor:
    """Token-level hidden-state distance (through the projections) over the attended tokens."""
    return _hidden_distance(x, _identity, _identity, x.attention_mask)


def attention_maps(x: TermInputs) -> torch.Tensor:
    """Token-level attention-map distance over the attended query rows."""
    return _attention_distance(x, _identity, _identity, x.attention_mask, x.args.attention_loss)


def _word_views(x: TermInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    missing = [key for key in WORD_KEYS if key not in x.batch]
    if missing:
        raise ValueError(
            "word_hidden_weight / word_attention_weight > 0 need batches from DSGKDCollator (word_pool, "
            f"teacher_word_pool, word_mask; missing {missing}): use it as data_collator."
        )
    return tuple(x.batch[key] for key in WORD_KEYS)


def word_hidden_states(x: TermInputs) -> torch.Tensor:
    """DSG-KD: distance between the mean subword hidden states of each domain word, student vs teacher (the student's
    are pooled to words before the projection: `projection_pool="word_pool"`)."""
    _, teacher_pool, words = _word_views(x)
    return _hidden_distance(x, _identity, lambda h: pool_word_states(h, teacher_pool), words)


def word_attention_maps_term(x: TermInputs) -> torch.Tensor:
    """DSG-KD: MSE between the word-to-word attention maps of the domain words."""
    pool, teacher_pool, words = _word_views(x)
    return _attention_distance(
        x, lambda a: word_attention_maps(a, pool), lambda a: word_attention_maps(a, teacher_pool), words, "mse"
    )


# ---- declarations --------------------------------------------------------------------------------------------------


def _live_teacher(args) -> bool:
    return args.teacher_cache is None


def _cached_teacher(args) -> bool:
    return args.teacher_cache is not None


_LOGIT_SETTINGS = ("temperature", "divergence")
BUILTIN_TERMS = (
    LossTerm("ce", "loss_ce", "alpha_ce", LABEL_TOKENS, {LABELS, LOGITS}, task_cross_entropy,
             description="cross-entropy of the student against the labels"),
    LossTerm("kd", "loss_kd", "gamma", LABEL_TOKENS, {LABELS, LOGITS, TEACHER}, logit_kd, when=_live_teacher,
             settings=_LOGIT_SETTINGS, description="T^2 * divergence of the tempered next-token distributions"),
    LossTerm("cached_kd", "loss_kd", "gamma", LABEL_TOKENS, {LABELS, LOGITS, TEACHER_CACHE}, cached_logit_kd,
             when=_cached_teacher, settings=_LOGIT_SETTINGS,
             description="logit KD against the teacher's cached top-k log-probabilities (tail bucket)"),
    LossTerm("uld", "loss_uld", "uld_weight", ALIGNED_TOKENS, {LABELS, LOGITS, TEACHER, TEACHER_INPUTS},
             cross_tokenizer_kd, settings=("temperature",),
             description="ULD: L1 distance of the sorted next-token probabilities, across tokenizers"),
    LossTerm("hidden", "loss_hidden", "hidden_weight", ATTENDED_TOKENS,
             {TEACHER, HIDDEN_STATES, LAYER_MAP, PROJECTIONS}, hidden_states, settings=("hidden_loss",),
             description="hidden-state distance at the mapped layers, through learned projections"),
    LossTerm("attention", "loss_attn", "attention_weight", ATTENDED_TOKENS, {TEACHER, ATTENTIONS, LAYER_MAP},
             attention_maps, settings=("attention_loss",),
             description="attention-map distance at the mapped layers"),
    LossTerm("word_hidden", "loss_word_hidden", "word_hidden_weight", DOMAIN_WORDS,
             {TEACHER, TEACHER_INPUTS, HIDDEN_STATES, LAYER_MAP, PROJECTIONS}, word_hidden_states,
             projection_pool="word_pool",
             description="DSG-KD: hidden states of the domain words (mean of their subwords)"),
    LossTerm("word_attention", "loss_word_attn", "word_attention_weight", DOMAIN_WORDS,
             {TEACHER, TEACHER_INPUTS, ATTENTIONS, LAYER_MAP}, word_attention_maps_term,
             description="DSG-KD: word-to-word attention maps of the domain words"),
)  # fmt: skip
for _term in BUILTIN_TERMS:
    register_loss_term(_term, replace=True)
