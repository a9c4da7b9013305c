"""Logit distillation against a teacher known only by its top-k log-probabilities (a teacher-output cache).

The teacher's distribution at temperature `T` is known on its top-k tokens `S` (log-probabilities `log p_T(i)`, the
teacher's softmax over the whole vocabulary); its tail mass is `m_T = 1 - sum_S p_T(i)`. Both distributions are
coarsened to `k + 1` outcomes: the `k` tokens of `S` and one "tail" outcome holding the rest, with the student's
tail `m_S = 1 - sum_S p_S(i)` computed exactly from its full softmax. The divergence (forward KL, reverse KL or
generalized JSD) is taken between the two coarsened distributions. This is exact when `k` is the vocabulary size
(there is no tail), and otherwise a lower bound of the full divergence (log-sum inequality): the student is pushed
to give the top-k tokens their teacher probabilities and the same total mass to all other tokens, without any
constraint on how that mass is spread. The teacher tail is floored at `1e-8` so that the reverse KL and JSD stay
finite when the top-k hold (almost) all of the mass.
"""

from __future__ import annotations

import torch

from .logits import _chunked_sum, _select, logprob_divergence

TAIL_FLOOR = 1e-8
STUDENT_TAIL_FLOOR = 1e-12  # float32 rounding can make the top-k mass reach 1; keeps log(tail) finite
ZERO_LOGPROB = -1e30  # finite stand-in for log(0): exp() is 0 and products with it stay 0, also in gradients


def coarsened_logprobs(
    student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, teacher_indices: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Student and teacher log-probabilities on the teacher's top-k tokens, plus the tail outcome when `k < V`.

    Args:
        student_logits (`torch.Tensor` of shape `(N, V)`): Student logits.
        teacher_logprobs (`torch.Tensor` of shape `(N, k)`): The teacher's top-k log-probabilities at `temperature`.
        teacher_indices (`torch.Tensor` of shape `(N, k)`): Their token ids.
        temperature (`float`): Softmax temperature of the student (the cache's temperature).

    Returns:
        `(student, teacher)`: float32 log-probabilities of shape `(N, k + 1)` (or `(N, V)` when `k == V`).
    """
    scaled = student_logits.float() / temperature
    indices = teacher_indices.long()
    s = scaled.gather(-1, indices) - scaled.logsumexp(-1, keepdim=True)  # one pass over the vocabulary
    t = teacher_logprobs.float()
    if indices.shape[-1] >= scaled.shape[-1]:
        return s, t
    # tails from the top-k mass: log(1 - sum_S p) = log(-expm1(logsumexp_S log p)), O(k) per token
    s_tail = torch.log((-torch.expm1(s.logsumexp(-1, keepdim=True))).clamp_min(STUDENT_TAIL_FLOOR))
    t_tail = torch.log((-torch.expm1(t.logsumexp(-1, keepdim=True))).clamp_min(TAIL_FLOOR))
    return torch.cat([s, s_tail], dim=-1), torch.cat([t, t_tail], dim=-1).clamp_min(ZERO_LOGPROB)


def sparse_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_indices: torch.Tensor,
    mask: torch.Tensor | None = None,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    jsd_beta: float = 0.5,
    chunk_size: int = 256,
) -> torch.Tensor:
    """
    Sum over the selected tokens of `T^2 * D(p_T^T, p_S^T)` on the coarsened top-k distributions (module docstring),
    computed `chunk_size` tokens at a time like [`logit_distillation_loss`].

    Args:
        student_logits (`torch.Tensor` of shape `(..., V)`): Student logits.
        teacher_logprobs (`torch.Tensor` of shape `(..., k)`): Cached teacher top-k log-probabilities.
        teacher_indices (`torch.Tensor` of shape `(..., k)`): Their token ids.
        mask (`torch.Tensor` of shape `(...)`, *optional*): Boolean mask of the tokens that count.
        divergence (`str`): `"forward_kl"`, `"reverse_kl"` or `"jsd"`.
        temperature (`float`): The cache's temperature; the result is multiplied by `temperature**2`.
        jsd_beta (`float`): Mixture coefficient of the generalized JSD.
        chunk_size (`int`): Number of tokens per chunk.

    Returns:
        `torch.Tensor`: scalar, the summed divergence over the selected tokens.
    """
    if teacher_logprobs.shape != teacher_indices.shape or teacher_logprobs.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)}, teacher top-k log-probabilities "
            f"{tuple(teacher_logprobs.shape)} and indices {tuple(teacher_indices.shape)} do not match."
        )
    student, logprobs, indices = _select(mask, student_logits, teacher_logprobs, teacher_indices)

    def chunk_divergence(x: torch.Tensor, values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        s, t = coarsened_logprobs(x, values, ids, temperature)
        return logprob_divergence(s, t, divergence, jsd_beta).sum()

    return _chunked_sum(chunk_divergence, student, logprobs, indices, chunk_size=chunk_size) * temperature**2
