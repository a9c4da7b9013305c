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
    matched_columns,
    span_kd_loss,
    span_log_probs,
    span_uld_loss,
    sparse_distillation_loss,
    uld_loss,
)
from ..teacher_cache import CACHE_KEYS
from .inputs import TermInputs, label_mask
from .registry import (
    ALIGNED_SPANS,
    ALIGNED_TEXTS,
    ALIGNED_TOKENS,
    ALIGNMENT,
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


def _needs_cross_tokenizer_batches(x: TermInputs, weight: str, keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if key not in x.batch]
    if missing:
        raise ValueError(
            f"{weight}={getattr(x.args, weight)} needs batches from CrossTokenizerCollator (the teacher's own "
            f"teacher_input_ids, teacher_attention_mask, teacher_labels and the alignment; missing {missing}): use it "
            "as data_collator."
        )


def cross_tokenizer_kd(x: TermInputs) -> torch.Tensor:
    """ULD: summed L1 distance between the sorted next-token probabilities of student and teacher, each on its own
    tokenization of the text, paired by characters (the collator's `uld_student_mask` / `uld_teacher_mask`: the
    `k`-th predicted text token after the first character both predict, on each side); batches of a collator of
    one's own with `teacher_labels` only pair the `k`-th label positions."""
    _needs_cross_tokenizer_batches(x, "uld_weight", ("teacher_labels",))
    if "uld_student_mask" in x.batch:
        masks = x.batch["uld_student_mask"], x.batch["uld_teacher_mask"]
    else:
        masks = x.label_mask, label_mask(x.batch["teacher_labels"], x.task)
    return uld_loss(
        x.aligned(x.student.logits), x.aligned(x.teacher.logits), *masks, x.args.temperature,
        x.args.logit_chunk_size, x.args.uld_normalisation,
    )  # fmt: skip


SPAN_KEYS = ("teacher_labels", "span_student", "span_teacher", "span_rows", "matched_vocab")


def _merged(x: TermInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides' merged span log-probabilities ([`span_log_probs`]), computed once per batch."""
    if "spans" not in x.cache:
        count, temperature = len(x.batch["span_rows"]), x.args.temperature
        student = span_log_probs(x.aligned(x.student.logits), x.batch["span_student"], x.shifted_labels.clamp_min(0),
                                 count, temperature)  # fmt: skip
        teacher_targets = x.batch["teacher_labels"][:, 1:].clamp_min(0)
        with torch.no_grad():
            teacher = span_log_probs(x.aligned(x.teacher.logits), x.batch["span_teacher"], teacher_targets, count,
                                     temperature)  # fmt: skip
        x.cache["spans"] = (student, teacher)
    return x.cache["spans"]


def _span_columns(x: TermInputs, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return matched_columns(x.batch["matched_vocab"].to(student.device), student.shape[-1], teacher.shape[-1])


def span_kd(x: TermInputs) -> torch.Tensor:
    """Span-aligned KD: `T^2 * D` between the merged span probabilities of teacher and student on the tokens both
    vocabularies hold (exact-match mapping)."""
    _needs_cross_tokenizer_batches(x, "span_kd_weight", SPAN_KEYS)
    student, teacher = _merged(x)
    s_cols, t_cols, _, _ = _span_columns(x, student, teacher)
    args = x.args
    return span_kd_loss(student, teacher, s_cols, t_cols, args.divergence, args.temperature, args.jsd_beta)


def span_uld(x: TermInputs) -> torch.Tensor:
    """Span-aligned ULD: sorted-probability L1 of the merged span probabilities, on the tokens the exact-match mapping
    leaves out when `span_kd_weight > 0` (TRL GOLD's hybrid), on every token otherwise."""
    _needs_cross_tokenizer_batches(x, "span_uld_weight", SPAN_KEYS)
    student, teacher = _merged(x)
    s_cols, t_cols, s_rest, t_rest = _span_columns(x, student, teacher)
    if x.args.span_kd_weight > 0:
        return span_uld_loss(student, teacher, s_rest, t_rest)
    every = [torch.arange(m.shape[-1], device=m.device) for m in (student, teacher)]
    return span_uld_loss(student, teacher, *every)


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


def _per_token(args) -> bool:
    return args.uld_normalisation != "texts"


def _per_text(args) -> bool:
    return args.uld_normalisation == "texts"


_LOGIT_SETTINGS = ("temperature", "divergence")
_CROSS_TOKENIZER = {LABELS, LOGITS, TEACHER, TEACHER_INPUTS, ALIGNMENT}
BUILTIN_TERMS = (
    LossTerm("ce", "loss_ce", "alpha_ce", LABEL_TOKENS, {LABELS, LOGITS}, task_cross_entropy,
             description="cross-entropy of the student against the labels"),
    LossTerm("kd", "loss_kd", "gamma", LABEL_TOKENS, {LABELS, LOGITS, TEACHER}, logit_kd, when=_live_teacher,
             settings=_LOGIT_SETTINGS, description="T^2 * divergence of the tempered next-token distributions"),
    LossTerm("cached_kd", "loss_kd", "gamma", LABEL_TOKENS, {LABELS, LOGITS, TEACHER_CACHE}, cached_logit_kd,
             when=_cached_teacher, settings=_LOGIT_SETTINGS,
             description="logit KD against the teacher's cached top-k log-probabilities (tail bucket)"),
    LossTerm("uld", "loss_uld", "uld_weight", ALIGNED_TOKENS, _CROSS_TOKENIZER, cross_tokenizer_kd,
             when=_per_token, settings=("temperature", "uld_normalisation"),
             description="ULD: L1 distance of the sorted next-token probabilities, across tokenizers"),
    LossTerm("uld_texts", "loss_uld", "uld_weight", ALIGNED_TEXTS, _CROSS_TOKENIZER, cross_tokenizer_kd,
             when=_per_text, settings=("temperature", "uld_normalisation"),
             description="ULD averaged per text, then over texts (the paper's code, TRL GOLD)"),
    LossTerm("span_kd", "loss_span_kd", "span_kd_weight", ALIGNED_SPANS, _CROSS_TOKENIZER, span_kd,
             settings=_LOGIT_SETTINGS,
             description="span-aligned KD: divergence of the merged span probabilities on the shared tokens"),
    LossTerm("span_uld", "loss_span_uld", "span_uld_weight", ALIGNED_SPANS, _CROSS_TOKENIZER, span_uld,
             settings=("temperature",),
             description="span-aligned ULD: sorted-probability L1 of the merged span probabilities"),
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
