"""One chunk of tokens of the logit terms: task cross-entropy, logit divergence and their closed-form gradient.

[`logit_chunk`] reads a chunk of student logits (and of teacher logits and labels) once and returns the summed
cross-entropy, the summed `T^2 * D(p_T^T, p_S^T)` and, when asked, the gradient of `ce_coef * CE + kd_coef * KD`
with respect to the student logits, all in float32 and in closed form (no autograd graph). The student's
log-softmax is shared between CE and KD when the temperature is 1 and both cover the same vocabulary.

Closed forms, with `z = x / T`, `s = log_softmax(z)`, `t = log_softmax(y / T)`, `p = exp`:

- forward KL `sum p_t (t - s)`: `d/dz = p_s - p_t`;
- reverse KL `r = sum p_s (s - t)`: `d/dz = p_s * ((s - t) - r)`;
- generalized JSD with `m = log(beta p_t + (1 - beta) p_s)`, `k_s = sum p_s (s - m)`:
  `beta * sum p_t (t - m) + (1 - beta) * k_s`, `d/dz = (1 - beta) * p_s * ((s - m) - k_s)`;
- cross-entropy `-log_softmax(x)[label]`: `d/dx = softmax(x) - onehot(label)` (rows labelled -100 count 0).

[`ChunkSpec`] runs this function or its `torch.compile`d version (inductor: C++ on CPU, Triton on GPU), which fuses
the passes over `chunk x vocab` into a few loops per row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from types import FunctionType

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

CHUNK_KERNELS = ("eager", "compiled")
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def logit_chunk(
    x: torch.Tensor,
    y: torch.Tensor | None,
    labels: torch.Tensor | None,
    ce_coef: torch.Tensor,
    kd_coef: torch.Tensor,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    jsd_beta: float = 0.5,
    vocab: int | None = None,
    with_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """
    Summed CE and summed `T^2 * D(p_T^T, p_S^T)` of a chunk of tokens, and the gradient of their weighted sum.

    Args:
        x (`torch.Tensor` of shape `(n, V_S)`): Student logits (any float dtype; computed in float32).
        y (`torch.Tensor` of shape `(n, V_T)`, *optional*): Teacher logits (KD term).
        labels (`torch.Tensor` of shape `(n,)`, *optional*): Targets (CE term); -100 is ignored.
        ce_coef (`torch.Tensor`): 0-dim float32, the weight of CE in the gradient.
        kd_coef (`torch.Tensor`): 0-dim float32, the weight of KD in the gradient.
        divergence (`str`): `"forward_kl"`, `"reverse_kl"` or `"jsd"` (see [`token_divergence`]).
        temperature (`float`): Softmax temperature of the KD term (CE is at temperature 1).
        jsd_beta (`float`): Mixture coefficient of the generalized JSD.
        vocab (`int`, *optional*): KD compares the first `vocab` logits only (CE uses all of the student's).
        with_grad (`bool`): Whether to compute the gradient.

    Returns:
        `(ce_sum, kd_sum, grad)`: float32 scalars (0 for a term not requested) and the float32 gradient of
        `ce_coef * ce_sum + kd_coef * kd_sum` with respect to `x` (`None` without `with_grad`).
    """
    x = x.float()
    width = x.shape[-1]
    vocab = min(vocab or width, width)
    zero = x.new_zeros(())
    ce, kd, grad = zero, zero, None
    log_p = None
    if labels is not None:
        log_p = torch.log_softmax(x, dim=-1)
        valid = labels.ne(-100)
        targets = torch.where(valid, labels, 0)[:, None]
        ce = -torch.where(valid, log_p.gather(1, targets).squeeze(1), 0.0).sum()
        if with_grad:
            weight = ce_coef * valid[:, None]
            if torch.compiler.is_compiling():  # elementwise: fuses into one loop (and avoids scatter in inductor)
                hit = torch.arange(width, device=x.device)[None, :] == targets
                grad = (log_p.exp() - hit.to(log_p.dtype)) * weight
            else:
                grad = log_p.exp().mul_(weight).scatter_add_(1, targets, -weight)
    if y is None:
        return ce, kd, grad
    x = x[:, :vocab]
    shared = log_p is not None and temperature == 1.0 and vocab == width
    s = log_p if shared else torch.log_softmax(x if temperature == 1.0 else x / temperature, dim=-1)
    y = y[:, :vocab].float()
    t = torch.log_softmax(y if temperature == 1.0 else y / temperature, dim=-1)
    scale = kd_coef * temperature  # d(T^2 D)/dx = T * dD/dz
    if divergence == "forward_kl":
        p_t = t.exp()
        kd = (p_t * (t - s)).sum()
        kd_grad = (s.exp() - p_t).mul_(scale) if with_grad else None
    elif divergence == "reverse_kl":
        p_s = s.exp()
        rows = (p_s * (s - t)).sum(-1, keepdim=True)
        kd = rows.sum()
        kd_grad = p_s.mul_((s - t).sub_(rows)).mul_(scale) if with_grad else None
    elif divergence == "jsd":
        p_s = s.exp()
        m = torch.logaddexp(t + math.log(jsd_beta), s + math.log(1.0 - jsd_beta))
        k_s = (p_s * (s - m)).sum(-1, keepdim=True)
        kd = jsd_beta * (t.exp() * (t - m)).sum() + (1.0 - jsd_beta) * k_s.sum()
        kd_grad = p_s.mul_((s - m).sub_(k_s)).mul_(scale * (1.0 - jsd_beta)) if with_grad else None
    else:
        raise ValueError(f"Unknown divergence {divergence!r}; choose one of {DIVERGENCES}.")
    kd = kd * temperature**2
    if with_grad:
        if grad is None:
            grad = kd_grad if vocab == width else torch.nn.functional.pad(kd_grad, (0, width - vocab))
        else:
            grad[:, :vocab] += kd_grad
    return ce, kd, grad


# on CPU a chunk is also capped at this many bytes of float32 logits per model: it then stays in the cache and its
# buffers are reused by the allocator (larger ones are fresh pages each time): 1.2-2x faster at vocabulary 32k here
CPU_CHUNK_BYTES = 2**21


@dataclass(frozen=True)
class ChunkSpec:
    """
    How the logit terms of one batch are computed: the KD settings, the chunk size and the chunk kernel.

    Args:
        divergence, temperature, jsd_beta, vocab: See [`logit_chunk`].
        chunk_size (`int`): Tokens per chunk (on CPU also at most [`CPU_CHUNK_BYTES`] of float32 logits).
        kernel (`str`): `"eager"` ([`logit_chunk`]) or `"compiled"` (its `torch.compile`d version; falls back to
            eager, with a warning, where compiling fails).
    """

    divergence: str = "forward_kl"
    temperature: float = 1.0
    jsd_beta: float = 0.5
    vocab: int | None = None
    chunk_size: int = 256
    kernel: str = "eager"

    def __post_init__(self):
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"Unknown divergence {self.divergence!r}; choose one of {DIVERGENCES}.")
        if self.kernel not in CHUNK_KERNELS:
            raise ValueError(f"Unknown chunk kernel {self.kernel!r}; choose one of {CHUNK_KERNELS}.")

    def blocks(self, rows: int) -> Iterator[slice]:
        """The row slices of `chunk_size` rows (the fused loss computes the heads' logits block by block)."""
        return (slice(start, start + self.chunk_size) for start in range(0, rows, self.chunk_size))

    def spans(self, rows: int, width: int, device: torch.device) -> Iterator[slice]:
        """The row slices the kernel runs on: `chunk_size` rows of `width` logits, on CPU also cache-sized."""
        size = self.chunk_size
        if device.type == "cpu":
            size = max(1, min(size, CPU_CHUNK_BYTES // (4 * width)))
        return (slice(start, start + size) for start in range(0, rows, size))

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor | None, labels: torch.Tensor | None, coefs: torch.Tensor, grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """[`logit_chunk`] of one chunk with this spec's settings; `coefs` is `[ce_coef, kd_coef]`."""
        args = (x, y, labels, coefs[0], coefs[1], self.divergence, self.temperature, self.jsd_beta, self.vocab, grad)
        if self.kernel == "compiled":
            return _compiled_or_eager((self.divergence, self.temperature, self.jsd_beta, self.vocab), args)
        return logit_chunk(*args)


@cache
def _compiled(setting: tuple) -> Callable:
    """`torch.compile` of [`logit_chunk`] for one setting (divergence, temperature, ...): each setting compiles its
    own copy of the function, so that its few variants (with or without labels, gradient, dtype) never reach
    dynamo's recompile limit, however many settings one process uses (a test suite)."""
    code = logit_chunk.__code__.replace()  # a new code object: dynamo keeps its compiled variants per code object
    fresh = FunctionType(code, logit_chunk.__globals__, logit_chunk.__name__, logit_chunk.__defaults__)
    return torch.compile(fresh, dynamic=True, fullgraph=True)


_COMPILE_FAILED: dict[tuple, str] = {}  # setting -> why it could not be compiled


def _compiled_or_eager(setting: tuple, args: tuple):
    """The compiled kernel of `setting`, or [`logit_chunk`] from the first time compiling it fails in this process
    (a missing C++ compiler or Triton, an unsupported backend, dynamo's recompile limit): the values are the same,
    only slower."""
    if setting not in _COMPILE_FAILED:
        try:
            return _compiled(setting)(*args)
        except Exception as error:  # noqa: BLE001 - any compile failure falls back; eager re-raises real errors
            _COMPILE_FAILED[setting] = f"{type(error).__name__}: {error}".splitlines()[0]
            logger.warning(
                "DistillationConfig.logit_kernel='compiled' could not compile the logit chunk kernel (%s); using "
                "the eager kernel instead (same values, slower). Set logit_kernel='eager' to skip compiling.",
                _COMPILE_FAILED[setting],
            )
    return logit_chunk(*args)
