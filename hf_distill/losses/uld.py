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


def _sorted_probability_distance(x: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """`sum_rows || sort(p_S) - sort(p_T) ||_1`, the shorter vocabulary padded with zero probabilities."""
    p = F.softmax(x.float() / temperature, dim=-1).sort(dim=-1, descending=True).values
    q = F.softmax(y.float() / temperature, dim=-1).sort(dim=-1, descending=True).values
    width = max(p.shape[-1], q.shape[-1])
    p, q = F.pad(p, (0, width - p.shape[-1])), F.pad(q, (0, width - q.shape[-1]))
    return (p - q).abs().sum()


def uld_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_mask: torch.Tensor,
    teacher_mask: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 256,
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

    Returns:
        `torch.Tensor`: scalar, the distance summed over the compared positions.
    """
    student_keep, teacher_keep = aligned_positions(student_mask, teacher_mask)
    student, teacher = student_logits[student_keep], teacher_logits.detach()[teacher_keep]

    def chunk_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _sorted_probability_distance(x, y, temperature)

    return _chunked_sum(chunk_distance, student, teacher, chunk_size=chunk_size)
