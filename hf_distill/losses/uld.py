"""Universal Logit Distillation (ULD, Boizard et al. 2024): logit distillation across different vocabularies."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .logits import _chunked_sum


def aligned_positions(student_mask: torch.Tensor, teacher_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The positions ULD compares when the two tokenizations of a text have different lengths: in each row, the `k`-th
    student label position is paired with the `k`-th teacher label position, for `k < min(n_S, n_T)` (`n` counts a
    row's label positions); the longer tokenization's last positions are left out (the paper's truncation to the
    shorter sequence).

    Args:
        student_mask (`torch.Tensor` of shape `(B, T_S)`): The student's label positions.
        teacher_mask (`torch.Tensor` of shape `(B, T_T)`): The teacher's label positions.

    Returns:
        `(student_keep, teacher_keep)`: boolean masks with the same number of true entries in each row.
    """
    student_mask, teacher_mask = student_mask.bool(), teacher_mask.bool()
    n = torch.minimum(student_mask.sum(1), teacher_mask.sum(1))[:, None]
    return (
        student_mask & (student_mask.long().cumsum(1) <= n),
        teacher_mask & (teacher_mask.long().cumsum(1) <= n),
    )


ULD_NORMALISATIONS = ("tokens", "texts")


def sorted_probability_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per row, `|| sort(p) - sort(q) ||_1` of two probability vectors (`(N, V_S)`, `(N, V_T)`), the shorter padded
    with zeros: ULD's closed form of the Wasserstein distance, which needs no token correspondence."""
    p, q = p.sort(dim=-1, descending=True).values, q.sort(dim=-1, descending=True).values
    width = max(p.shape[-1], q.shape[-1])
    p, q = F.pad(p, (0, width - p.shape[-1])), F.pad(q, (0, width - q.shape[-1]))
    return (p - q).abs().sum(-1)


def _sorted_probability_distance(
    x: torch.Tensor, y: torch.Tensor, temperature: float, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """`sum_rows w_row || sort(p_S) - sort(p_T) ||_1` of the tempered softmaxes (`w = 1` without `weights`)."""
    rows = sorted_probability_distance(
        F.softmax(x.float() / temperature, dim=-1), F.softmax(y.float() / temperature, dim=-1)
    )
    return (rows * weights).sum() if weights is not None else rows.sum()


def uld_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_mask: torch.Tensor,
    teacher_mask: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 256,
    normalisation: str = "tokens",
) -> torch.Tensor:
    r"""
    Summed ULD distance between student and teacher next-token distributions over different vocabularies.

    At each compared position (see [`aligned_positions`]) both distributions `softmax(logits / T)` are sorted in
    decreasing order, the shorter one padded with zeros, and their L1 distance `sum_i |p_S(i) - p_T(i)|` is taken:
    the closed form of the Wasserstein distance ULD uses, which needs no token correspondence. Computed in float32
    chunks of `chunk_size` positions (sorting is differentiable; gradients reach the student only).

    Args:
        student_logits (`torch.Tensor` of shape `(B, T_S, V_S)`): Student logits, aligned with `student_mask`.
        teacher_logits (`torch.Tensor` of shape `(B, T_T, V_T)`): Teacher logits, aligned with `teacher_mask`.
        student_mask (`torch.Tensor` of shape `(B, T_S)`): The student's label positions.
        teacher_mask (`torch.Tensor` of shape `(B, T_T)`): The teacher's label positions.
        temperature (`float`): Softmax temperature of both (no `T^2` factor, as in the paper).
        chunk_size (`int`): Positions per chunk.
        normalisation (`str`): `"tokens"`: the sum over the compared positions; `"texts"`: the sum over rows of each
            row's mean over its compared positions (the paper's code and TRL GOLD's `ULDLoss` average per text, then
            over texts: divide by the rows that compare anything).

    Returns:
        `torch.Tensor`: scalar, the distance summed over the compared positions (or the rows' means, summed).
    """
    if normalisation not in ULD_NORMALISATIONS:
        raise ValueError(f"uld_loss: normalisation={normalisation!r}; choose one of {ULD_NORMALISATIONS}.")
    student_keep, teacher_keep = aligned_positions(student_mask, teacher_mask)
    student, teacher = student_logits[student_keep], teacher_logits.detach()[teacher_keep]
    others = [teacher]
    if normalisation == "texts":
        per_row = student_keep.sum(1, keepdim=True).expand_as(student_keep)[student_keep]
        others.append(1.0 / per_row.clamp_min(1).float())

    def chunk_distance(x: torch.Tensor, y: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        return _sorted_probability_distance(x, y, temperature, weights[0] if weights else None)

    return _chunked_sum(chunk_distance, student, *others, chunk_size=chunk_size)
