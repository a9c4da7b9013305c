"""Logit distillation: forward KL, reverse KL and generalized JSD with temperature, computed in token chunks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    jsd_beta: float = 0.5,
) -> torch.Tensor:
    """
    Per-token divergence between teacher and student distributions at a temperature, computed in float32.

    Args:
        student_logits (`torch.Tensor` of shape `(N, V)`): Student logits.
        teacher_logits (`torch.Tensor` of shape `(N, V)`): Teacher logits (no gradient needed).
        divergence (`str`): `"forward_kl"` (KL(p_T || p_S)), `"reverse_kl"` (KL(p_S || p_T)) or `"jsd"`
            (generalized Jensen-Shannon: `beta * KL(p_T || M) + (1 - beta) * KL(p_S || M)` with
            `M = beta * p_T + (1 - beta) * p_S`).
        temperature (`float`): Softmax temperature applied to both logits.
        jsd_beta (`float`): Mixture coefficient of the generalized JSD, strictly between 0 and 1.

    Returns:
        `torch.Tensor` of shape `(N,)`: the divergence of each token (without the `T^2` factor).
    """
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if divergence == "forward_kl":
        return (t.exp() * (t - s)).sum(-1)
    if divergence == "reverse_kl":
        return (s.exp() * (s - t)).sum(-1)
    if divergence == "jsd":
        if not 0.0 < jsd_beta < 1.0:
            raise ValueError(f"jsd_beta must be strictly between 0 and 1, got {jsd_beta}.")
        m = torch.logsumexp(torch.stack([t + math.log(jsd_beta), s + math.log(1.0 - jsd_beta)]), dim=0)
        kl_t = (t.exp() * (t - m)).sum(-1)
        kl_s = (s.exp() * (s - m)).sum(-1)
        return jsd_beta * kl_t + (1.0 - jsd_beta) * kl_s
    raise ValueError(f"Unknown divergence {divergence!r}; choose one of {DIVERGENCES}.")


def _chunk_sum(student: torch.Tensor, teacher: torch.Tensor, divergence: str, temperature: float, jsd_beta: float):
    return token_divergence(student, teacher, divergence, temperature, jsd_beta).sum()


def logit_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    jsd_beta: float = 0.5,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """
    Sum over the selected tokens of `T^2 * D(p_T^T, p_S^T)`, computed `chunk_size` tokens at a time.

    Each chunk is upcast to float32 and recomputed in backward (activation checkpointing), so the float32
    probabilities of both models are only ever held for `chunk_size` tokens, never for the whole batch.
    The caller divides the sum by the number of tokens of the (accumulated) batch.

    Args:
        student_logits (`torch.Tensor` of shape `(..., V)`): Student logits.
        teacher_logits (`torch.Tensor` of shape `(..., V)`): Teacher logits, same shape.
        mask (`torch.Tensor` of shape `(...)`, *optional*): Boolean mask of the tokens that count.
        divergence (`str`): See [`token_divergence`].
        temperature (`float`): Softmax temperature; the result is multiplied by `temperature**2`.
        jsd_beta (`float`): See [`token_divergence`].
        chunk_size (`int`): Number of tokens per chunk.

    Returns:
        `torch.Tensor`: scalar, the summed divergence over the selected tokens.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "must have the same shape."
        )
    vocab = student_logits.shape[-1]
    student = student_logits.reshape(-1, vocab)
    teacher = teacher_logits.reshape(-1, vocab)
    if mask is not None:
        keep = mask.reshape(-1).nonzero(as_tuple=True)[0]
        student, teacher = student.index_select(0, keep), teacher.index_select(0, keep)
    total = student.new_zeros((), dtype=torch.float32)
    for start in range(0, student.shape[0], chunk_size):
        s, t = student[start : start + chunk_size], teacher[start : start + chunk_size].detach()
        args = (s, t, divergence, temperature, jsd_beta)
        total = total + (checkpoint(_chunk_sum, *args, use_reentrant=False) if s.requires_grad else _chunk_sum(*args))
    return total * temperature**2
