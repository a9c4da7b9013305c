"""DDK (arXiv 2407.16154): the domain discrepancy factor and the smooth mixture update, as pure functions.

The paper measures "the perplexity of the student and the teacher" on each domain's validation set and takes the
ratio `l_S / l_T` of those perplexities (`ddk_gap="perplexity"`, the default). The functions receive the mean token
cross-entropies `ce` (what a model's loss returns; `exp(ce)` is the perplexity) and work in log space: the perplexity
ratio is `exp(ce_S - ce_T)`, and `g = exp(ratio)` is only ever used through a softmax of `log r + ratio`.
`ddk_gap="cross_entropy"` uses `ce_S / ce_T` instead (a much flatter signal; hf_distill <= 0.2 used it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

GAPS = ("perplexity", "cross_entropy")


def _check_losses(student_losses: Sequence[float], teacher_losses: Sequence[float]) -> None:
    if len(student_losses) != len(teacher_losses) or not student_losses:
        raise ValueError(f"Need one student and one teacher loss per domain, got {student_losses}, {teacher_losses}.")
    if any(not t > 0 for t in teacher_losses) or any(not math.isfinite(s) for s in student_losses):
        raise ValueError(f"Losses must be finite and teacher losses > 0, got {student_losses}, {teacher_losses}.")


def domain_gap(
    student_losses: Sequence[float], teacher_losses: Sequence[float], gap: str = "perplexity"
) -> list[float]:
    r"""
    The ratio `l_S[i] / l_T[i]` DDK compares across domains: of the perplexities, `exp(ce_S - ce_T)` (the paper's
    quantity), or of the cross-entropies, `ce_S / ce_T`.

    Args:
        student_losses (`Sequence[float]`): Mean token cross-entropy of the student on each domain.
        teacher_losses (`Sequence[float]`): The same for the teacher (> 0).
        gap (`str`): `"perplexity"` (default) or `"cross_entropy"`.

    Returns:
        `list[float]`: One ratio per domain.
    """
    _check_losses(student_losses, teacher_losses)
    if gap not in GAPS:
        raise ValueError(f"gap={gap!r} is not supported; choose one of {list(GAPS)}.")
    pairs = zip(student_losses, teacher_losses, strict=True)
    if gap == "cross_entropy":
        return [s / t for s, t in pairs]
    return [math.exp(min(s - t, 700.0)) for s, t in pairs]  # a perplexity ratio beyond e^700 is capped


def discrepancy_factor(
    student_losses: Sequence[float], teacher_losses: Sequence[float], gap: str = "perplexity"
) -> list[float]:
    r"""
    DDK's domain discrepancy factor `g[i] = exp(l_S[i] / l_T[i])`, with `l` the perplexities (default) or the
    cross-entropies ([`domain_gap`]); `math.inf` where it overflows (the update never forms it).

    Args:
        student_losses (`Sequence[float]`): Mean token cross-entropy of the student on each domain.
        teacher_losses (`Sequence[float]`): The same for the teacher (> 0).
        gap (`str`): `"perplexity"` (default) or `"cross_entropy"`.

    Returns:
        `list[float]`: One factor per domain.
    """
    return [math.exp(r) if r < 709.0 else math.inf for r in domain_gap(student_losses, teacher_losses, gap)]


def _softmax(logits: Sequence[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(x - top) if x != -math.inf else 0.0 for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def ddk_update(
    weights: Sequence[float],
    student_losses: Sequence[float],
    teacher_losses: Sequence[float],
    alpha: float = 0.5,
    smoothing: bool = True,
    gap: str = "perplexity",
) -> list[float]:
    r"""
    One DDK update of the domain mixture.

    With smoothing (DDK eq. 4-5): `psi[i] = r[i] g[i] / sum_j r[j] g[j]` and `r'[i] = alpha psi[i] + (1 - alpha) / N`,
    with `g` the [`discrepancy_factor`] of the perplexity ratio (or, with `gap="cross_entropy"`, of the
    cross-entropy ratio); `alpha = 0` keeps the mixture uniform. Without smoothing: `r' = softmax(l_S / l_T)` (the
    previous weights and `alpha` play no part). Computed in log space, so ratios in the thousands do not overflow.

    Args:
        weights (`Sequence[float]`): The current mixture `r` (sums to 1).
        student_losses (`Sequence[float]`): Mean token cross-entropy of the student per domain.
        teacher_losses (`Sequence[float]`): Mean token cross-entropy of the teacher per domain.
        alpha (`float`): Smoothing coefficient in [0, 1].
        smoothing (`bool`): Use the smoothed update (default) or the plain softmax of the ratios.
        gap (`str`): `"perplexity"` (default, the paper's) or `"cross_entropy"` (see [`domain_gap`]).

    Returns:
        `list[float]`: The new mixture, summing to 1.
    """
    ratios = domain_gap(student_losses, teacher_losses, gap)
    if len(weights) != len(student_losses):
        raise ValueError(f"Got {len(weights)} weights for {len(student_losses)} domains.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1].")
    if not smoothing:
        return _softmax(ratios)
    psi = _softmax([math.log(r) + q if r > 0 else -math.inf for r, q in zip(weights, ratios, strict=True)])
    return [alpha * p + (1.0 - alpha) / len(psi) for p in psi]


def parse_domain_weights(spec: str | Mapping[str, float] | None) -> dict[str, float] | None:
    """
    Parse an initial mixture: `None`, `""` or `"uniform"` (uniform), a mapping, a JSON object or `"name=w,..."`.

    Returns:
        `dict[str, float]` or `None` for uniform.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "uniform")):
        return None
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("{"):
            spec = json.loads(text)
        else:
            pairs = [item.replace(":", "=").split("=") for item in text.split(",") if item.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError(f"cannot parse {text!r}: write 'name=weight,name=weight' or a JSON object.")
            spec = {name.strip(): float(value) for name, value in pairs}
    return {str(name): float(value) for name, value in dict(spec).items()}
