"""The loss-term registry: every term of `DistillationTrainer`'s loss is one [`LossTerm`] declaration.

A declaration says what the term is called in the logs, which `DistillationConfig` field weighs it, what it is
normalised by, what it needs from the models and the batch, and the pure function that computes its sum. Config
validation, `compute_loss`, logging, the model card and the error messages read this registry; adding a term is one
declaration (with [`register_loss_term`]) and one function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .inputs import TermInputs

# What a term's sum is divided by: counted over the whole accumulated batch (all processes) in training.
LABEL_TOKENS = "label_tokens"  # label positions != -100 (shifted by one for causal LMs)
ATTENDED_TOKENS = "attended_tokens"  # attention_mask == 1 (student tokenization)
DOMAIN_WORDS = "domain_words"  # DSG-KD domain words (word_mask)
# cross-tokenizer: per row, min(student label positions, teacher label positions) (`teacher_labels`)
ALIGNED_TOKENS = "aligned_tokens"
ALIGNED_TEXTS = "aligned_texts"  # cross-tokenizer: rows with at least one aligned position
ALIGNED_SPANS = "aligned_spans"  # cross-tokenizer: character spans both tokenizations cover (`span_rows`)
NORMALISERS = (LABEL_TOKENS, ATTENDED_TOKENS, DOMAIN_WORDS, ALIGNED_TOKENS, ALIGNED_TEXTS, ALIGNED_SPANS)

# What a term needs.
LABELS = "labels"  # a `labels` column in every batch
LOGITS = "logits"  # the student's output head (a headless or head-skipping forward cannot serve it)
TEACHER = "teacher"  # the live teacher's outputs
TEACHER_CACHE = "teacher_cache"  # the teacher's cached top-k log-probabilities (`teacher_cache`)
TEACHER_INPUTS = "teacher_inputs"  # the teacher reads its own tokenization (`teacher_*` keys, DSG-KD word pools)
ALIGNMENT = "alignment"  # CrossTokenizerCollator's character alignment of the two tokenizations (DDK, on-policy work)
HIDDEN_STATES = "hidden_states"  # `output_hidden_states=True`
ATTENTIONS = "attentions"  # `output_attentions=True` (eager attention on both models)
LAYER_MAP = "layer_map"  # student -> teacher layer pairs (`layer_map`)
PROJECTIONS = "projections"  # learned student-width -> teacher-width projections, trained inside the student module
NEEDS = (
    LABELS, LOGITS, TEACHER, TEACHER_CACHE, TEACHER_INPUTS, ALIGNMENT, HIDDEN_STATES, ATTENTIONS, LAYER_MAP,
    PROJECTIONS,
)  # fmt: skip


def _weight_is_on(args: Any, term: LossTerm) -> bool:
    return getattr(args, term.weight) > 0


@dataclass(frozen=True)
class LossTerm:
    """
    One term of the distillation loss: `weight * compute(inputs) / count(normaliser)`.

    Args:
        name (`str`): Unique registry key (e.g. `"kd"`).
        log_name (`str`): Key of its logged value (`loss_kd`; `eval_loss_kd` in evaluation). Two terms may share it
            only if they are never on together (live and cached logit KD).
        weight (`str`): The `DistillationConfig` field holding its weight (a subclass of the config may add fields
            for its own terms). The term is on when the weight is > 0 and `when(args)` holds.
        normaliser (`str`): One of `"label_tokens"`, `"attended_tokens"`, `"domain_words"`, `"aligned_tokens"`,
            `"aligned_texts"`, `"aligned_spans"`.
        needs (`frozenset[str]`): What it reads: any of `"labels"`, `"logits"`, `"teacher"`, `"teacher_cache"`,
            `"teacher_inputs"`, `"alignment"`, `"hidden_states"`, `"attentions"`, `"layer_map"`, `"projections"`.
        compute (`Callable[[TermInputs], torch.Tensor | None]`): Returns the un-normalised float32 sum over the batch
            (`None` when the batch has nothing for the term, e.g. no cached teacher outputs: neither added nor
            logged).
        when (`Callable`, *optional*): Extra condition on the config (e.g. only with / without `teacher_cache`).
        settings (`tuple[str, ...]`): Other config fields that shape the term, shown on the model card.
        projection_pool (`str`, *optional*): With `"projections"`: the batch key of a `(B, P, T)` matrix that pools
            the student's hidden states to `P` rows before they are projected (DSG-KD's `word_pool`). Every
            projection term that is on must agree on it.
        description (`str`): One line for the model card and the docs.
    """

    name: str
    log_name: str
    weight: str
    normaliser: str
    needs: frozenset[str]
    compute: Callable[[TermInputs], torch.Tensor | None]
    when: Callable[[Any], bool] | None = None
    settings: tuple[str, ...] = ()
    projection_pool: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "needs", frozenset(self.needs))
        if self.normaliser not in NORMALISERS:
            raise ValueError(f"LossTerm {self.name!r}: normaliser={self.normaliser!r}; choose one of {NORMALISERS}.")
        unknown = sorted(self.needs - set(NEEDS))
        if unknown:
            raise ValueError(f"LossTerm {self.name!r}: unknown needs {unknown}; choose from {NEEDS}.")

    def is_on(self, args: Any) -> bool:
        """Whether the term is part of the loss under `args` (weight > 0 and its `when` condition)."""
        return _weight_is_on(args, self) and (self.when is None or self.when(args))


_REGISTRY: dict[str, LossTerm] = {}


def register_loss_term(term: LossTerm, replace: bool = False) -> LossTerm:
    """
    Add a term to the loss of every [`DistillationTrainer`] whose config gives it a weight > 0.

    Args:
        term ([`LossTerm`]): The declaration.
        replace (`bool`): Replace a registered term of the same name (otherwise that is an error).

    Returns:
        [`LossTerm`]: `term`, so the call can decorate a module-level declaration.
    """
    if term.name in _REGISTRY and not replace:
        raise ValueError(f"A loss term named {term.name!r} is already registered: pick another name or replace=True.")
    _REGISTRY[term.name] = term
    return term


def unregister_loss_term(name: str) -> None:
    """Remove a registered term (e.g. a test's toy term)."""
    if name not in _REGISTRY:
        raise KeyError(f"No loss term named {name!r} is registered (registered: {sorted(_REGISTRY)}).")
    del _REGISTRY[name]


def registered_terms() -> list[LossTerm]:
    """Every registered term, in registration order (the built-in ones first)."""
    return list(_REGISTRY.values())


def weight_fields() -> list[str]:
    """The config fields that weigh a registered term, in registration order, each once."""
    return weight_names(_REGISTRY.values())


def active_terms(args: Any) -> list[LossTerm]:
    """The registered terms that are on under `args`; refuses a term whose weight field the config lacks."""
    missing = [t for t in _REGISTRY.values() if not hasattr(args, t.weight)]
    if missing:
        names = ", ".join(f"{t.name!r} (weight field {t.weight!r})" for t in missing)
        raise ValueError(
            f"Loss terms {names} are registered but {type(args).__name__} has no such field: add it to a "
            "DistillationConfig subclass, or unregister_loss_term() them."
        )
    return [t for t in _REGISTRY.values() if t.is_on(args)]


def weight_names(terms: Iterable[LossTerm]) -> list[str]:
    """The weight fields of `terms`, in order, each once."""
    return list(dict.fromkeys(term.weight for term in terms))


def format_weights(terms: Iterable[LossTerm], args: Any, separator: str = ", ") -> str:
    """`name=value` of the weight fields of `terms` under `args` (for error messages)."""
    return separator.join(f"{name}={getattr(args, name)}" for name in weight_names(terms))


def needs_any(terms: Iterable[LossTerm], *needs: str) -> bool:
    """Whether any of `terms` needs any of `needs`."""
    return any(term.needs & set(needs) for term in terms)


MAX_WEIGHT = 1e6  # float32 overflows in products of ~1e19-weights (the logit kernel squares the weights)


def check_weights(args: Any) -> None:
    """Every weight of a registered term is a finite number in [0, `MAX_WEIGHT`], and at least one is > 0."""
    fields = [name for name in weight_fields() if hasattr(args, name)]
    for name in fields:
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(
                f"{type(args).__name__}.{name}={value!r} is not a loss weight: use a finite number >= 0 (0 turns the "
                "term off)."
            )
        if value < 0:
            raise ValueError(f"{type(args).__name__}.{name}={value} is negative: loss weights must be >= 0.")
        if value > MAX_WEIGHT:
            raise ValueError(
                f"{type(args).__name__}.{name}={value:g} is too large: loss weights must be <= {MAX_WEIGHT:g} (they "
                "are relative to each other; a larger one overflows the loss or its gradient): scale the weights "
                "down, and raise learning_rate if you meant a larger step."
            )
    if not any(getattr(args, name) > 0 for name in fields):
        raise ValueError(
            f"{type(args).__name__}: every loss weight ({', '.join(fields)}) is 0, so there is nothing to train on: "
            "set one > 0."
        )


def describe(terms: Iterable[LossTerm], args: Any) -> dict[str, Any]:
    """The weights and shaping settings of `terms` under `args` (for the model card)."""
    described: dict[str, Any] = {}
    for term in terms:
        described[term.weight] = getattr(args, term.weight)
        described.update({name: getattr(args, name) for name in term.settings})
    return described
