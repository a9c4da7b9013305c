"""`TermInputs`: what a loss-term function receives for one batch."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class TermInputs:
    """
    One batch as the loss terms see it: both models' outputs, the batch and the run's fixed settings.

    Args:
        args (`DistillationConfig`): The run's settings (weights, temperature, divergence, ...).
        student (`ModelOutput`): The student's outputs. With learned projections they hold
            `projected_hidden_states`: the student's hidden states at the mapped layers in teacher width, one per
            entry of `layer_pairs`.
        teacher (`ModelOutput`, *optional*): The teacher's outputs (`None` without a live teacher).
        batch (`Mapping[str, torch.Tensor]`): The student's inputs and the extra keys of the collators (`word_pool`,
            `teacher_word_pool`, `word_mask`, the cached top-k); `labels` are in `labels`.
        labels (`torch.Tensor`, *optional*): The labels, as in the batch.
        task (`str`): `"causal_lm"`, `"masked_lm"`, `"sequence_classification"` or `"feature_extraction"`.
        vocab_size (`int`, *optional*): Logits are compared on their first `vocab_size` entries.
        layer_pairs (`list[tuple[int, int]]`): Student -> teacher hidden-state layers (0 is the embeddings).
        attention_pairs (`list[tuple[int, int]]`): The pairs that have attention maps (blocks >= 1).
        logit_sums (`Callable`, *optional*): Returns `{"ce": sum, "kd": sum}` when the trainer computes CE and logit
            KD together, in one pass per chunk of tokens (from the logits, or fused from the hidden states and heads);
            computed once per batch, with the gradient of the loss's weighted combination of the two.
        cache (`dict`): Values several terms share, computed by the first that needs them (tensors only).
    """

    args: Any
    student: Any
    teacher: Any
    batch: Mapping[str, Any]
    labels: torch.Tensor | None
    task: str
    vocab_size: int | None = None
    layer_pairs: list[tuple[int, int]] = field(default_factory=list)
    attention_pairs: list[tuple[int, int]] = field(default_factory=list)
    logit_sums: Callable[[], dict[str, torch.Tensor]] | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def fused_logits(self) -> Callable[[], dict[str, torch.Tensor]] | None:
        """The former name of [`logit_sums`]."""
        return self.logit_sums

    @property
    def causal(self) -> bool:
        """Whether position `t` predicts token `t + 1` (logits and labels are shifted by one)."""
        return self.task == "causal_lm"

    @property
    def attention_mask(self) -> torch.Tensor:
        """The attended tokens of the student's tokenization (all ones without an attention mask)."""
        return attended(self.batch)

    @property
    def shifted_labels(self) -> torch.Tensor:
        """The labels aligned with the logits (dropping the first position for causal LMs)."""
        return self.labels[:, 1:] if self.causal else self.labels

    @property
    def label_mask(self) -> torch.Tensor:
        """The label positions that count, aligned with the logits."""
        return label_mask(self.labels, self.task)

    @property
    def logit_labels(self) -> torch.Tensor:
        """The labels aligned with the full logits (for causal LMs shifted left, -100 at the last position): selects
        the logits' rows without slicing them."""
        if not self.causal:
            return self.labels
        return torch.nn.functional.pad(self.labels[..., 1:], (0, 1), value=-100)

    def aligned(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (or per-position cached values) aligned with [`shifted_labels`]."""
        return logits[:, :-1] if self.causal else logits


def attended(batch: Mapping[str, Any]) -> torch.Tensor:
    """The attention mask of a batch, or all ones when it has none."""
    mask = batch.get("attention_mask")
    return mask if mask is not None else torch.ones_like(batch["input_ids"])


def label_mask(labels: torch.Tensor, task: str) -> torch.Tensor:
    """Boolean mask of the label positions that count (shifted by one for causal LMs)."""
    if task == "causal_lm":
        labels = labels[..., 1:]
    return labels.ne(-100)
