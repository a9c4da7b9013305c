"""Guards of a training step and of a save: no non-finite loss is trained on, no non-finite student is written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers.utils import logging

from ..terms import LossTerm
from ..terms.registry import LABEL_TOKENS

logger = logging.get_logger(__name__)

__all__ = ["EmptyLabelsError", "NonFiniteError", "StepGuard", "check_finite_state"]


class NonFiniteError(FloatingPointError):
    """A loss term or the student's weights hold NaN or infinity: training stops, nothing of it is saved."""


class EmptyLabelsError(ValueError):
    """A training step's batch has no label token for a term that reads labels."""


class StepGuard:
    """
    Checks the terms of one training micro-batch with a single device sync: every value finite, and at least one
    label token in the whole accumulated batch when a term is normalised by label tokens.

    Args:
        empty_labels (`str`): `"error"` raises on a step without label tokens, `"warn"` logs once.
    """

    def __init__(self, empty_labels: str = "error"):
        self.empty_labels = empty_labels
        self._warned = False

    def check(
        self,
        values: Sequence[tuple[LossTerm, torch.Tensor]],
        counts: Mapping[str, torch.Tensor],
        args: Any,
        step: int,
    ) -> None:
        """
        Raises:
            [`NonFiniteError`]: naming the first non-finite term, its weight and the optimizer step.
            [`EmptyLabelsError`]: no label token in the step's batch for a label term (`empty_labels="error"`).
        """
        if not values:
            return
        label_terms = [term for term, _ in values if term.normaliser == LABEL_TOKENS]
        flags = [torch.isfinite(value).all() for _, value in values]
        if label_terms:
            flags.append(counts[LABEL_TOKENS] > 0)
        ok = torch.stack(flags).tolist()  # the one sync
        for (term, value), finite in zip(values, ok, strict=False):
            if not finite:
                raise NonFiniteError(
                    f"loss term {term.log_name} ({term.weight}={getattr(args, term.weight)}) is "
                    f"{value.detach().float().sum().item()} at optimizer step {step}: the teacher's or the student's "
                    "outputs are not finite (check the teacher's weights, the learning rate, fp16 overflow). "
                    "Training stopped before this step was applied; no checkpoint or model of it is saved."
                )
        if label_terms and not ok[-1]:
            message = (
                f"the batch of optimizer step {step} has no label token (every label is -100), so "
                f"{', '.join(t.log_name for t in label_terms)} have nothing to train on: check the data's labels "
                "(or set DistillationConfig.empty_labels='warn' to train the other terms on such batches)."
            )
            if self.empty_labels == "error":
                raise EmptyLabelsError(message)
            if not self._warned:
                logger.warning(message + " Warned once.")
                self._warned = True


def check_finite_state(state_dict: Mapping[str, torch.Tensor], output_dir: str) -> None:
    """
    Refuse to save weights that hold NaN or infinity.

    Raises:
        [`NonFiniteError`]: naming the first non-finite tensor; nothing is written to `output_dir`.
    """
    for name, tensor in state_dict.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteError(
                f"the student's {name} holds non-finite values: it is not saved to {output_dir!r} (a model of this "
                "run would be unusable)."
            )
