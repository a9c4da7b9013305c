"""The loss-term registry and the built-in terms of `DistillationTrainer`."""

from . import builtin  # noqa: F401  (registers the built-in terms)
from .inputs import TermInputs
from .registry import (
    NEEDS,
    NORMALISERS,
    LossTerm,
    active_terms,
    check_weights,
    register_loss_term,
    registered_terms,
    unregister_loss_term,
)

__all__ = [
    "NEEDS",
    "NORMALISERS",
    "LossTerm",
    "TermInputs",
    "active_terms",
    "check_weights",
    "register_loss_term",
    "registered_terms",
    "unregister_loss_term",
]
