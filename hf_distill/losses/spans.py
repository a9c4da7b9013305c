"""Span-aligned logit distillation across tokenizers (as TRL GOLD's merged probabilities): each span of characters
that both tokenizations cover is compared through the probability of the tokens that spell it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .logits import logprob_divergence
from .uld import sorted_probability_distance


def span_log_probs(
    logits: torch.Tensor, spans: torch.Tensor, targets: torch.Tensor, count: int, temperature: float = 1.0
) -> torch.Tensor:
    r"""
    The merged next-token log-probabilities of each span (TRL GOLD's "bayesian" merge, by the chain rule).

    For a span whose tokens are `x_1 ... x_m` (predicted at logit positions `t_1 < ... < t_m`) the merged vector is

        log q[v] = log p(v | x_<m) + sum_{j < m} log p(x_j | x_<j)

    with `p = softmax(logits / T)`: the probability of spelling the span's first `m - 1` tokens and then `v`; its entry
    at `x_m` is the probability of the whole span. A one-token span is the token's own distribution.

    Args:
        logits (`torch.Tensor` of shape `(B, T, V)`): Logits on the logit positions (position `t` predicts token
            `t + 1`).
        spans (`torch.Tensor` of shape `(B, T)`): The span index of each logit position (`0 ... count - 1`), -1
            outside spans; a span's positions lie in one row, in order.
        targets (`torch.Tensor` of shape `(B, T)`): The token each position predicts.
        count (`int`): The number of spans.
        temperature (`float`): Softmax temperature.

    Returns:
        `torch.Tensor` of shape `(count, V)`: log-probabilities in float32 (float64 logits: float64), differentiable
        in `logits`.
    """
    keep = spans >= 0
    index, rows, tokens = spans[keep], logits[keep], targets[keep]
    dtype = torch.promote_types(logits.dtype, torch.float32)  # float32 at least (float64 stays, for checks)
    order = torch.arange(len(index), device=index.device)
    last = torch.full((count,), -1, dtype=torch.long, device=index.device).scatter_reduce(0, index, order, "amax")
    if count and bool((last < 0).any()):
        raise ValueError("span_log_probs: a span has no position on this side (the alignment is broken).")
    is_last = torch.zeros(len(index), dtype=torch.bool, device=index.device)
    is_last[last] = True
    earlier = ~is_last
    prefix = torch.zeros(count, dtype=dtype, device=logits.device)
    if bool(earlier.any()):
        chosen = rows[earlier].to(dtype) / temperature
        token = chosen.gather(1, tokens[earlier][:, None]).squeeze(1) - torch.logsumexp(chosen, dim=-1)
        prefix = prefix.index_add(0, index[earlier], token)
    return F.log_softmax(rows[last].to(dtype) / temperature, dim=-1) + prefix[:, None]


def _columns(width: int, matched: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(matched ids below `width`, the other ids) of one side."""
    unmatched = torch.ones(width, dtype=torch.bool, device=matched.device)
    unmatched[matched] = False
    return matched, unmatched.nonzero(as_tuple=True)[0]


def matched_columns(
    matched_vocab: torch.Tensor, student_width: int, teacher_width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(student matched, teacher matched, student unmatched, teacher unmatched)` column ids: the pairs of
    `matched_vocab` `(M, 2)` that both outputs have, in pair order, and every other column of each."""
    pairs = matched_vocab[(matched_vocab[:, 0] < student_width) & (matched_vocab[:, 1] < teacher_width)]
    student, student_rest = _columns(student_width, pairs[:, 0])
    teacher, teacher_rest = _columns(teacher_width, pairs[:, 1])
    return student, teacher, student_rest, teacher_rest


def span_kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    student_columns: torch.Tensor,
    teacher_columns: torch.Tensor,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    jsd_beta: float = 0.5,
) -> torch.Tensor:
    r"""
    Summed `T^2 * D(q_T, q_S)` over spans, on the columns whose token strings both vocabularies hold (`q`: the merged
    span probabilities of [`span_log_probs`], not renormalised, as TRL GOLD's hybrid loss). With the same tokenizer on
    both sides every span is one token and every column is matched: the token-level logit KD.

    Args:
        student (`torch.Tensor` of shape `(G, V_S)`): The student's merged log-probabilities.
        teacher (`torch.Tensor` of shape `(G, V_T)`): The teacher's merged log-probabilities.
        student_columns (`torch.Tensor` of shape `(M,)`): Student ids of the matched tokens.
        teacher_columns (`torch.Tensor` of shape `(M,)`): Teacher ids of the same tokens, in the same order.
        divergence (`str`): `"forward_kl"`, `"reverse_kl"` or `"jsd"` (see [`logprob_divergence`]).
        temperature (`float`): The temperature of the merged probabilities (for the `T^2` factor).
        jsd_beta (`float`): The generalized JSD's mixture coefficient.

    Returns:
        `torch.Tensor`: scalar.
    """
    if not len(student_columns):
        return student.sum() * 0.0
    s, t = student.index_select(1, student_columns), teacher.detach().index_select(1, teacher_columns)
    return temperature**2 * logprob_divergence(s, t, divergence, jsd_beta).sum()


def span_uld_loss(
    student: torch.Tensor, teacher: torch.Tensor, student_columns: torch.Tensor, teacher_columns: torch.Tensor
) -> torch.Tensor:
    """
    Summed ULD distance over spans: `|| sort(q_S) - sort(q_T) ||_1` of the merged span probabilities on the given
    columns (the unmatched ones in GOLD's hybrid, or all), the shorter padded with zeros.

    Args:
        student (`torch.Tensor` of shape `(G, V_S)`): The student's merged log-probabilities.
        teacher (`torch.Tensor` of shape `(G, V_T)`): The teacher's merged log-probabilities.
        student_columns (`torch.Tensor`): Student columns compared.
        teacher_columns (`torch.Tensor`): Teacher columns compared.

    Returns:
        `torch.Tensor`: scalar.
    """
    if not len(student_columns) and not len(teacher_columns):
        return student.sum() * 0.0
    p = student.index_select(1, student_columns).exp()
    q = teacher.detach().index_select(1, teacher_columns).exp()
    return sorted_probability_distance(p, q).sum()
