"""Hidden-state distillation: MSE or cosine distance through learned projections when widths differ."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

HIDDEN_LOSSES = ("mse", "cosine")


class HiddenProjector(nn.Module):
    """
    One projection per mapped student layer, from the student width to the teacher width.

    A linear layer is learned where the widths differ; where they are equal the identity is used (no parameters).
    `DistillationTrainer` trains it inside the student module (`DistillationStudent`); checkpoints keep it in a file
    of its own, and the saved student never holds it.

    Args:
        student_layers (`Sequence[int]`): Student layer indices (as used in the layer map) that get a projection.
        student_dim (`int`): Hidden size of the student.
        teacher_dim (`int`): Hidden size of the teacher.
    """

    def __init__(self, student_layers: Sequence[int], student_dim: int, teacher_dim: int):
        super().__init__()
        self.student_layers = list(student_layers)
        self.proj = nn.ModuleDict(
            {
                str(layer): nn.Linear(student_dim, teacher_dim) if student_dim != teacher_dim else nn.Identity()
                for layer in dict.fromkeys(self.student_layers)
            }
        )

    def forward(self, hidden_states: Sequence[torch.Tensor], layers: Sequence[int]) -> list[torch.Tensor]:
        """
        Args:
            hidden_states (`Sequence[torch.Tensor]`): Student hidden states, one per entry of `layers`.
            layers (`Sequence[int]`): Student layer index of each entry.

        Returns:
            `list[torch.Tensor]`: the projected hidden states, in teacher width.
        """
        return [self.proj[str(layer)](h) for h, layer in zip(hidden_states, layers, strict=True)]


def hidden_state_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    mask: torch.Tensor | None = None,
    loss_type: str = "mse",
) -> torch.Tensor:
    """
    Sum over the selected tokens of the per-token distance between (projected) student and teacher hidden states.

    Per token, `"mse"` is the mean over the hidden dimension of the squared difference and `"cosine"` is
    `1 - cos(h_S, h_T)`. The caller divides by the number of tokens of the (accumulated) batch.

    Args:
        student_hidden (`torch.Tensor` of shape `(B, T, D)`): Student hidden states already in teacher width.
        teacher_hidden (`torch.Tensor` of shape `(B, T, D)`): Teacher hidden states.
        mask (`torch.Tensor` of shape `(B, T)`, *optional*): Tokens that count (e.g. the attention mask).
        loss_type (`str`): `"mse"` or `"cosine"`.

    Returns:
        `torch.Tensor`: scalar float32 sum.
    """
    s, t = student_hidden.float(), teacher_hidden.detach().float()
    if loss_type == "mse":
        per_token = (s - t).pow(2).mean(-1)
    elif loss_type == "cosine":
        per_token = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    else:
        raise ValueError(f"Unknown hidden loss {loss_type!r}; choose one of {HIDDEN_LOSSES}.")
    if mask is not None:
        per_token = per_token * mask.to(per_token.dtype)
    return per_token.sum()
