"""Logit terms computed from final hidden states and output heads, chunk by chunk, never holding `[N, V]` logits.

The task cross-entropy and the logit divergence are computed from each model's last hidden states and its output
head `z = transform(h @ W^T + b)` for `chunk_size` tokens at a time; nothing of size tokens x vocabulary is kept:
the backward pass recomputes each chunk's logits (custom autograd). Peak extra memory is a few float32
`chunk_size x V` buffers plus the gradients of the student's hidden states and head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .logits import token_divergence


@dataclass(frozen=True)
class LogitTransform:
    """What a model does to `h @ W^T + b` before returning logits: `z * scale / divisor`, then
    `cap * tanh(z / cap)` when `softcap` is set (Cohere's `logit_scale`, Granite's `logits_scaling`, Gemma's
    `final_logit_softcapping`)."""

    scale: float = 1.0
    divisor: float = 1.0
    softcap: float | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0 or self.divisor != 1.0:
            logits = logits * (self.scale / self.divisor)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    @classmethod
    def from_config(cls, config) -> LogitTransform:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        return cls(
            scale=float(getattr(text, "logit_scale", None) or 1.0),
            divisor=float(getattr(text, "logits_scaling", None) or 1.0),
            softcap=getattr(text, "final_logit_softcapping", None) or None,
        )


@dataclass(frozen=True)
class OutputHead:
    """An output head as the fused loss needs it: the weight, the bias and the logit transform."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    transform: LogitTransform

    @classmethod
    def of(cls, model: nn.Module) -> OutputHead:
        head = model.get_output_embeddings()
        if not isinstance(head, nn.Linear):
            raise ValueError(
                f"{type(model).__name__}'s output head is {type(head).__name__}, not nn.Linear: set "
                "DistillationConfig.logit_loss='logits'."
            )
        return cls(head.weight, head.bias, LogitTransform.from_config(model.config))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's float32 logits for `hidden`."""
        return self.transform(F.linear(hidden, self.weight, self.bias).float())


@dataclass(frozen=True)
class _Settings:
    student: OutputHead
    teacher: OutputHead | None
    divergence: str
    temperature: float
    jsd_beta: float
    vocab: int | None
    chunk_size: int


def _chunk_sums(st: _Settings, s_raw: torch.Tensor, t_hidden, labels) -> torch.Tensor:
    """`[CE sum, KD sum]` of one chunk of tokens, from the student's raw head output `h @ W^T + b`."""
    s_logits = st.student.transform(s_raw.float())
    zero = s_logits.new_zeros(())
    ce = F.cross_entropy(s_logits, labels, reduction="sum", ignore_index=-100) if labels is not None else zero
    kd = zero
    if st.teacher is not None:
        t_logits = st.teacher.logits(t_hidden)
        kd = token_divergence(
            s_logits[:, : st.vocab], t_logits[:, : st.vocab], st.divergence, st.temperature, st.jsd_beta
        ).sum() * (st.temperature**2)
    return torch.stack([ce, kd])


def _chunks(st: _Settings, s_hidden, t_hidden, labels):
    for start in range(0, s_hidden.shape[0], st.chunk_size):
        rows = slice(start, start + st.chunk_size)
        teacher = None if t_hidden is None else t_hidden[rows]
        yield rows, s_hidden[rows], teacher, None if labels is None else labels[rows]


class _FusedLogitTerms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, st, s_hidden, s_weight, s_bias, t_hidden, labels):
        total = s_hidden.new_zeros(2, dtype=torch.float32)
        for _, hidden, teacher, targets in _chunks(st, s_hidden, t_hidden, labels):
            total += _chunk_sums(st, F.linear(hidden, s_weight, s_bias), teacher, targets)
        ctx.st = st
        device = s_hidden.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.save_for_backward(s_hidden, s_weight, s_bias, t_hidden, labels)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        """Recompute each chunk's logits, differentiate the loss w.r.t. them, and chain through the head by hand
        (`dh = dz W`, `dW += dz^T h`, `db += sum dz`): no per-chunk `vocab x hidden` temporaries."""
        st = ctx.st
        s_hidden, s_weight, s_bias, t_hidden, labels = ctx.saved_tensors
        want = ctx.needs_input_grad
        grad_hidden = torch.empty_like(s_hidden) if want[1] else None
        grad_weight = torch.zeros_like(s_weight, dtype=torch.float32) if want[2] else None
        grad_bias = torch.zeros_like(s_bias, dtype=torch.float32) if want[3] else None
        weight32 = s_weight.float() if want[1] else None  # one copy at most (none for float32 weights)
        device, autocast, dtype = ctx.autocast
        for rows, hidden, teacher, targets in _chunks(st, s_hidden, t_hidden, labels):
            with torch.autocast(device, dtype=dtype, enabled=autocast):  # recompute as the forward computed
                raw = F.linear(hidden, s_weight, s_bias).detach().requires_grad_()
            with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=autocast):
                (grad_raw,) = torch.autograd.grad((_chunk_sums(st, raw, teacher, targets) * grad_output).sum(), raw)
            grad_raw = grad_raw.float()
            if want[1]:
                grad_hidden[rows] = (grad_raw @ weight32).to(s_hidden.dtype)
            if want[2]:
                grad_weight.addmm_(grad_raw.T, hidden.float())
            if want[3]:
                grad_bias += grad_raw.sum(0)
            del grad_raw
        cast = lambda g, ref: None if g is None else g.to(ref.dtype)  # noqa: E731
        return None, grad_hidden, cast(grad_weight, s_weight), cast(grad_bias, s_bias), None, None


def fused_logit_terms(
    student_hidden: torch.Tensor,
    student_head: OutputHead,
    teacher_hidden: torch.Tensor | None = None,
    teacher_head: OutputHead | None = None,
    labels: torch.Tensor | None = None,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    jsd_beta: float = 0.5,
    vocab: int | None = None,
    chunk_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Summed task cross-entropy and summed `T^2 * D(p_T^T, p_S^T)` over the given tokens, from hidden states and heads.

    Equal (to float rounding) to [`cross_entropy_loss`] and [`logit_distillation_loss`] on the materialised logits,
    in value and gradients (for the student's hidden states, head weight and bias); the teacher gets no gradient.

    Args:
        student_hidden (`torch.Tensor` of shape `(N, H_S)`): Student last hidden states of the selected tokens.
        student_head (`OutputHead`): The student's head ([`OutputHead.of`]).
        teacher_hidden (`torch.Tensor` of shape `(N, H_T)`, *optional*): Teacher last hidden states (KD term).
        teacher_head (`OutputHead`, *optional*): The teacher's head.
        labels (`torch.Tensor` of shape `(N,)`, *optional*): Targets (CE term); -100 is ignored.
        divergence, temperature, jsd_beta: See [`token_divergence`].
        vocab (`int`, *optional*): Compare the first `vocab` logits only (vocabularies padded differently).
        chunk_size (`int`): Tokens per chunk.

    Returns:
        `(ce_sum, kd_sum)`: float32 scalars (0 for a term that is not requested).
    """
    kd = teacher_hidden is not None
    st = _Settings(student_head, teacher_head if kd else None, divergence, temperature, jsd_beta, vocab, chunk_size)
    bias = student_head.bias
    sums = _FusedLogitTerms.apply(
        st, student_hidden, student_head.weight, bias, teacher_hidden.detach() if kd else None, labels
    )
    return sums[0], sums[1]
