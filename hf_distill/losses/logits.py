"""Logit distillation: forward KL, reverse KL and generalized JSD with temperature, computed in token chunks."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

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
    return logprob_divergence(s, t, divergence, jsd_beta)


def logprob_divergence(
    s: torch.Tensor, t: torch.Tensor, divergence: str = "forward_kl", jsd_beta: float = 0.5
) -> torch.Tensor:
    """
    Per-row divergence between two distributions given as log-probabilities over the last dimension.

    Args:
        s (`torch.Tensor` of shape `(N, C)`): Student log-probabilities (float32).
        t (`torch.Tensor` of shape `(N, C)`): Teacher log-probabilities (float32); very negative finite values stand
            for zero probability.
        divergence (`str`): See [`token_divergence`].
        jsd_beta (`float`): See [`token_divergence`].

    Returns:
        `torch.Tensor` of shape `(N,)`.
    """
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


class _ChunkedSum(torch.autograd.Function):
    """`sum(fn(x_chunk, *other_chunks))` over row chunks, with the gradient for `x` computed chunk by chunk in
    forward and stored in the dtype of `x`: no float32 intermediate of `fn` ever outlives its chunk. With `analytic`,
    `fn` returns `(value, gradient)` in closed form instead of a value to differentiate."""

    @staticmethod
    def forward(ctx, fn, chunk_size, analytic, x, *others):
        grad = torch.empty_like(x) if ctx.needs_input_grad[3] else None
        total = x.new_zeros((), dtype=torch.float32)
        for start in range(0, x.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            if analytic:
                value, chunk_grad = fn(x[rows].detach(), *(o[rows] for o in others))
                if grad is not None:
                    grad[rows] = chunk_grad
            else:
                chunk = x[rows].detach().requires_grad_(grad is not None)
                with torch.enable_grad():
                    value = fn(chunk, *(o[rows] for o in others))
                if grad is not None:
                    (grad[rows],) = torch.autograd.grad(value, chunk)
            total += value.detach()
        ctx.n_others = len(others)
        ctx.grad = grad  # not save_for_backward: backward hands this very buffer on (no copy), so it must own it
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grad, ctx.grad = ctx.grad, None
        return None, None, None, grad.mul_(grad_output.to(grad.dtype)), *([None] * ctx.n_others)


def _chunked_sum(
    fn: Callable[..., Any], x: torch.Tensor, *others: torch.Tensor, chunk_size: int, analytic: bool = False
):
    """`sum(fn(x_chunk, *other_chunks))` over row chunks of `chunk_size`; differentiable in `x` only (`analytic`:
    `fn` returns `(value, d value / d x_chunk)`)."""
    return _ChunkedSum.apply(fn, chunk_size, analytic, x, *others)


def _forward_kl_value_grad(x: torch.Tensor, y: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`sum KL(p_T || p_S)` of a chunk and its gradient `(p_S - p_T) / T`, in closed form (no autograd graph)."""
    s = F.log_softmax(x.float() / temperature, dim=-1)
    t = F.log_softmax(y.float() / temperature, dim=-1)
    p_t = t.exp()
    value = (p_t * (t - s)).sum()
    return value, s.exp_().sub_(p_t).div_(temperature)


def _cross_entropy_value_grad(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of a chunk and its gradient `softmax - onehot`, in closed form."""
    log_p = F.log_softmax(x.float(), dim=-1)
    value = -log_p.gather(-1, y[:, None]).sum()
    grad = log_p.exp_()
    grad[torch.arange(len(y), device=y.device), y] -= 1.0
    return value, grad


def _select(mask: torch.Tensor | None, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Flatten tensors to one row per position (`(..., V)` to `(N, V)`, `mask`-shaped to `(N,)`) and keep the rows
    where `mask` is true."""
    if mask is None:
        return [t.reshape(-1, t.shape[-1]) for t in tensors]
    keep = mask.reshape(-1).nonzero(as_tuple=True)[0]
    rows = [t.reshape(-1) if t.shape == mask.shape else t.reshape(-1, t.shape[-1]) for t in tensors]
    return [t.index_select(0, keep) for t in rows]


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
    """
    Sum of the token cross-entropies over the positions whose label is not -100, computed in float32 chunks.

    Args:
        logits (`torch.Tensor` of shape `(..., V)`): Logits, already aligned with `labels` (shifted for causal LMs).
        labels (`torch.Tensor` of shape `(...)`): Target ids, -100 where ignored.
        chunk_size (`int`): Number of tokens per chunk.

    Returns:
        `torch.Tensor`: scalar float32 sum; the caller divides by the number of label tokens.
    """
    rows, targets = _select(labels.ne(-100), logits, labels)

    return _chunked_sum(_cross_entropy_value_grad, rows, targets, chunk_size=chunk_size, analytic=True)


def logit_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    jsd_beta: float = 0.5,
    chunk_size: int = 256,
) -> torch.Tensor:
    """
    Sum over the selected tokens of `T^2 * D(p_T^T, p_S^T)`, computed `chunk_size` tokens at a time.

    Each chunk is upcast to float32 and its gradient is computed at once and stored in the student's dtype, so the
    float32 probabilities of both models are only ever held for `chunk_size` tokens, never for the whole batch.
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
    student, teacher = _select(mask, student_logits, teacher_logits.detach())

    if divergence == "forward_kl":  # the default: closed-form gradient, no autograd graph per chunk
        value_grad = partial(_forward_kl_value_grad, temperature=temperature)
        return _chunked_sum(value_grad, student, teacher, chunk_size=chunk_size, analytic=True) * temperature**2

    def chunk_divergence(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return token_divergence(x, y, divergence, temperature, jsd_beta).sum()

    return _chunked_sum(chunk_divergence, student, teacher, chunk_size=chunk_size) * temperature**2
