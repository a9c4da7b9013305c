"""Logit terms computed from final hidden states and output heads, chunk by chunk, never holding `[N, V]` logits.

The task cross-entropy and the logit divergence are computed from each model's last hidden states and its output
head `z = transform(h @ W^T + b)` for `chunk_size` tokens at a time; nothing of size tokens x vocabulary is kept.
Given the weights of the two terms in the loss, each chunk's closed-form gradient ([`logit_chunk`]) is chained
through the head in the forward pass, so the logits are computed once; otherwise the backward pass recomputes them.
Peak extra memory is a few float32 `chunk_size x V` buffers plus the gradients of the student's hidden states and
head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .chunk import ChunkSpec
from .logits import common_factor, loss_coefs


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

    def backward(self, logits: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The gradient with respect to `h @ W^T + b` from the one with respect to the returned `logits` (in place)."""
        if self.softcap:
            grad = grad.mul_(1.0 - (logits / self.softcap).square())
        if self.scale != 1.0 or self.divisor != 1.0:
            grad = grad.mul_(self.scale / self.divisor)
        return grad

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
    spec: ChunkSpec


def _fused_pass(st: _Settings, s_hidden, s_weight, s_bias, t_hidden, labels, coefs, want):
    """`[CE sum, KD sum]` over all chunks and, for the inputs `want` flags (hidden, weight, bias), the gradient of
    `coefs[0] * CE + coefs[1] * KD` chained through the head by hand (`dh = dz W`, `dW += dz^T h`, `db += sum dz`):
    no per-chunk `vocab x hidden` temporaries, no `[tokens, vocab]` buffer."""
    total = s_hidden.new_zeros(2, dtype=torch.float32)
    grad_hidden = torch.empty_like(s_hidden) if want[0] else None
    grad_weight = torch.zeros_like(s_weight, dtype=torch.float32) if want[1] else None
    grad_bias = torch.zeros_like(s_bias, dtype=torch.float32) if want[2] else None
    weight32 = s_weight.float() if want[0] else None  # one copy at most (none for float32 weights)
    for rows in st.spec.blocks(s_hidden.shape[0]):  # the head's matmuls on chunk_size tokens at a time
        hidden = s_hidden[rows]
        logits = st.student.transform(F.linear(hidden, s_weight, s_bias).float())
        teacher = None if t_hidden is None else st.teacher.logits(t_hidden[rows])
        targets = None if labels is None else labels[rows]
        grad = torch.empty_like(logits) if any(want) else None
        for span in st.spec.spans(logits.shape[0], logits.shape[1], logits.device):  # the kernel on cache-sized ones
            ce, kd, chunk_grad = st.spec(
                logits[span], None if teacher is None else teacher[span], None if targets is None else targets[span],
                coefs, grad is not None,
            )  # fmt: skip
            total += torch.stack([ce, kd])
            if grad is not None:
                grad[span] = chunk_grad
        if grad is None:
            continue
        grad = st.student.transform.backward(logits, grad)
        with torch.autocast(s_hidden.device.type, enabled=False):
            if want[0]:
                grad_hidden[rows] = (grad @ weight32).to(s_hidden.dtype)
            if want[1]:
                grad_weight.addmm_(grad.T, hidden.float())
            if want[2]:
                grad_bias += grad.sum(0)
    cast = lambda g, ref: None if g is None else g.to(ref.dtype)  # noqa: E731
    return total, (grad_hidden, cast(grad_weight, s_weight), cast(grad_bias, s_bias))


class _FusedLogitTerms(torch.autograd.Function):
    """With `coefs` the gradients are computed in forward, with the values (no recompute: backward only scales
    them); without, backward recomputes each chunk's logits for the gradient `grad_output` asks for."""

    @staticmethod
    def forward(ctx, st, s_hidden, s_weight, s_bias, t_hidden, labels, coefs):
        want = ctx.needs_input_grad[1:4] if coefs is not None else (False, False, False)
        pass_coefs = s_hidden.new_zeros(2, dtype=torch.float32) if coefs is None else coefs
        total, ctx.grads = _fused_pass(st, s_hidden, s_weight, s_bias, t_hidden, labels, pass_coefs, want)
        ctx.st, ctx.coefs = st, coefs
        if coefs is None:
            device = s_hidden.device.type
            ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
            ctx.save_for_backward(s_hidden, s_weight, s_bias, t_hidden, labels)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        if ctx.coefs is not None:
            factor = common_factor(grad_output, ctx.coefs)
            grads, ctx.grads = ctx.grads, None
            return None, *(None if g is None else g.mul_(factor.to(g.dtype)) for g in grads), None, None, None
        s_hidden, s_weight, s_bias, t_hidden, labels = ctx.saved_tensors
        device, autocast, dtype = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=autocast):  # recompute as the forward computed
            _, grads = _fused_pass(
                ctx.st, s_hidden, s_weight, s_bias, t_hidden, labels, grad_output.float(), ctx.needs_input_grad[1:4]
            )
        return None, *grads, None, None, None


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
    weights: tuple[float | torch.Tensor, float | torch.Tensor] | None = None,
    kernel: str = "eager",
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
        weights (`tuple`, *optional*): The weights of CE and KD in the loss, up to a common factor (floats or 0-dim
            tensors): the gradients are then computed in the forward pass, each chunk's logits once. Without, the
            backward pass recomputes them (any combination of the two sums).
        kernel (`str`): `"eager"` or `"compiled"` chunk kernel (see [`ChunkSpec`]).

    Returns:
        `(ce_sum, kd_sum)`: float32 scalars (0 for a term that is not requested).
    """
    kd = teacher_hidden is not None
    spec = ChunkSpec(divergence, temperature, jsd_beta, vocab, chunk_size, kernel)
    st = _Settings(student_head, teacher_head if kd else None, spec)
    coefs = None
    if weights is not None:
        coefs = loss_coefs(weights, labels is not None, kd, student_hidden.device)
    sums = _FusedLogitTerms.apply(
        st,
        student_hidden,
        student_head.weight,
        student_head.bias,
        teacher_hidden.detach() if kd else None,
        labels,
        coefs,
    )
    return sums[0], sums[1]
