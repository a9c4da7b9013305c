"""Logit distillation: forward KL, reverse KL and generalized JSD with temperature, computed in token chunks."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .chunk import DIVERGENCES, ChunkSpec


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


def _select(mask: torch.Tensor | None, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Flatten tensors to one row per position (`(..., V)` to `(N, V)`, `mask`-shaped to `(N,)`) and keep the rows
    where `mask` is true."""
    if mask is None:
        return [t.reshape(-1, t.shape[-1]) for t in tensors]
    keep = mask.reshape(-1).nonzero(as_tuple=True)[0]
    rows = [t.reshape(-1) if t.shape == mask.shape else t.reshape(-1, t.shape[-1]) for t in tensors]
    return [t.index_select(0, keep) for t in rows]


def common_factor(grad_output: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
    """The `c` with `grad_output == c * coefs`: the gradient reaching `[ce_sum, kd_sum]` must be proportional to the
    weights their gradient was computed for (raises otherwise: the precomputed gradient would be wrong)."""
    coefs = coefs.to(grad_output.dtype)
    norm = (coefs * coefs).sum()
    factor = torch.where(norm > 0, (grad_output * coefs).sum() / norm.clamp_min(torch.finfo(coefs.dtype).tiny), 0.0)
    ok = (grad_output - factor * coefs).abs().max() <= 1e-4 * grad_output.abs().max()
    message = (
        "The logit terms' gradient was computed in the forward pass for a loss proportional to "
        "`weights[0] * ce_sum + weights[1] * kd_sum`; the loss combines them otherwise: pass the weights it uses."
    )
    if grad_output.device.type == "cpu":
        if not ok:
            raise RuntimeError(f"{message} (gradient {grad_output.tolist()}, weights {coefs.tolist()})")
    else:  # no synchronisation with the device
        torch._assert_async(ok, message)
    return factor


def loss_coefs(weights: tuple, ce: bool, kd: bool, device: torch.device) -> torch.Tensor:
    """`[ce_coef, kd_coef]` as a float32 tensor, 0 for a term that is not computed (its sum is a constant 0)."""
    coefs = torch.stack([torch.as_tensor(w, dtype=torch.float32).to(device) for w in weights])
    return coefs * torch.tensor([ce, kd], dtype=torch.float32, device=device)


class _LogitTerms(torch.autograd.Function):
    """`[ce_sum, kd_sum]` of the selected rows of `[R, V]` logits, chunk by chunk; the gradient of
    `coefs[0] * ce + coefs[1] * kd` is computed in forward (closed form) into one buffer in the logits' dtype."""

    @staticmethod
    def forward(ctx, spec, logits, teacher, rows, labels, coefs):
        grad = torch.empty_like(logits) if ctx.needs_input_grad[1] else None
        if grad is not None:  # rows that do not count get no gradient
            skipped = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device).index_fill_(0, rows, False)
            grad.index_fill_(0, skipped.nonzero().squeeze(1), 0.0)
        sums = logits.new_zeros(2, dtype=torch.float32)
        for span in spec.spans(len(rows), logits.shape[-1], logits.device):
            index = rows[span]
            ce, kd, chunk_grad = spec(
                logits.index_select(0, index), None if teacher is None else teacher.index_select(0, index),
                None if labels is None else labels[span], coefs, grad is not None,
            )  # fmt: skip
            sums += torch.stack([ce, kd])
            if grad is not None:
                grad.index_copy_(0, index, chunk_grad.to(grad.dtype))
        ctx.grad, ctx.coefs = grad, coefs  # not saved tensors: backward hands this very buffer on (no copy)
        return sums

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grad, ctx.grad = ctx.grad, None
        return None, grad.mul_(common_factor(grad_output, ctx.coefs).to(grad.dtype)), None, None, None, None


def logit_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    weights: tuple[float | torch.Tensor, float | torch.Tensor] = (1.0, 1.0),
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    jsd_beta: float = 0.5,
    vocab: int | None = None,
    chunk_size: int = 256,
    kernel: str = "eager",
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Summed task cross-entropy and summed `T^2 * D(p_T^T, p_S^T)` over the selected tokens, in one pass per chunk.

    Each chunk of tokens is read once by [`logit_chunk`] (both log-softmaxes, the divergence, the cross-entropy,
    sharing the student's log-softmax when `temperature == 1`) and the closed-form gradient of
    `weights[0] * ce_sum + weights[1] * kd_sum` is written in the student's dtype: float32 intermediates exist for
    one chunk only. The loss may use the two sums in any multiple of that combination (a mean over tokens, a loss
    scale); another combination raises in backward.

    Args:
        student_logits (`torch.Tensor` of shape `(..., V_S)`): Student logits.
        teacher_logits (`torch.Tensor` of shape `(..., V_T)`, *optional*): Teacher logits, same leading shape (KD).
        labels (`torch.Tensor` of shape `(...)`, *optional*): Targets aligned with the logits, -100 where ignored
            (CE; shift them for causal LMs).
        mask (`torch.Tensor` of shape `(...)`, *optional*): The tokens that count; default: the labelled ones, or
            all without labels.
        weights (`tuple`): The weights of CE and KD in the loss (floats or 0-dim tensors), up to a common factor.
        divergence, temperature, jsd_beta: See [`token_divergence`].
        vocab (`int`, *optional*): KD compares the first `vocab` logits (the widths must match without it).
        chunk_size (`int`): Tokens per chunk.
        kernel (`str`): `"eager"` or `"compiled"` (see [`ChunkSpec`]).

    Returns:
        `(ce_sum, kd_sum)`: float32 scalars (0 for a term not requested).
    """
    width = student_logits.shape[-1]
    if teacher_logits is not None and (
        teacher_logits.shape[:-1] != student_logits.shape[:-1] or (vocab is None and teacher_logits.shape[-1] != width)
    ):
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "must have the same shape (or pass `vocab`, the width they share)."
        )
    if divergence == "jsd" and not 0.0 < jsd_beta < 1.0:
        raise ValueError(f"jsd_beta must be strictly between 0 and 1, got {jsd_beta}.")
    if mask is None:
        mask = labels.ne(-100) if labels is not None else torch.ones(student_logits.shape[:-1], dtype=torch.bool)
    rows = mask.reshape(-1).to(student_logits.device).nonzero().squeeze(1)
    spec = ChunkSpec(divergence, temperature, jsd_beta, vocab, chunk_size, kernel)
    coefs = loss_coefs(weights, labels is not None, teacher_logits is not None, student_logits.device)
    sums = _LogitTerms.apply(
        spec, student_logits.reshape(-1, width),
        None if teacher_logits is None else teacher_logits.detach().reshape(-1, teacher_logits.shape[-1]),
        rows, None if labels is None else labels.reshape(-1).index_select(0, rows), coefs,
    )  # fmt: skip
    return sums[0], sums[1]


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
    return logit_terms(logits, labels=labels, weights=(1.0, 0.0), chunk_size=chunk_size)[0]


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

    Each chunk is upcast to float32 and its gradient is computed at once ([`logit_terms`]) and stored in the
    student's dtype, so the float32 probabilities of both models are only ever held for one chunk.
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
    return logit_terms(
        student_logits, teacher_logits, mask=mask, weights=(0.0, 1.0), divergence=divergence,
        temperature=temperature, jsd_beta=jsd_beta, chunk_size=chunk_size,
    )[1]  # fmt: skip
