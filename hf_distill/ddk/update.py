"""DDK (arXiv 2407.16154): the domain discrepancy factor and the smooth mixture update, as pure functions."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence


def _check_losses(student_losses: Sequence[float], teacher_losses: Sequence[float]) -> None:
    if len(student_losses) != len(teacher_losses) or not student_losses:
        raise ValueError(f"Need one student and one teacher loss per domain, got {student_losses}, {teacher_losses}.")
    if any(not t > 0 for t in teacher_losses) or any(not math.isfinite(s) for s in student_losses):
        raise ValueError(f"Losses must be finite and teacher losses > 0, got {student_losses}, {teacher_losses}.")


def discrepancy_factor(student_losses: Sequence[float], teacher_losses: Sequence[float]) -> list[float]:
    r"""
    DDK's domain discrepancy factor `g[i] = exp(l_S[i] / l_T[i])`.

    Args:
        student_losses (`Sequence[float]`): Mean token cross-entropy of the student on each domain.
        teacher_losses (`Sequence[float]`): The same for the teacher (> 0).

    Returns:
        `list[float]`: One factor per domain.
    """
    _check_losses(student_losses, teacher_losses)
    return [math.exp(s / t) for s, t in zip(student_losses, teacher_losses, strict=True)]


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
) -> list[float]:
    r"""
    One DDK update of the domain mixture.

    With smoothing (DDK eq. 4-5): `psi[i] = r[i] g[i] / sum_j r[j] g[j]` and `r'[i] = alpha psi[i] + (1 - alpha) / N`,
    with `g` the [`discrepancy_factor`]; `alpha = 0` keeps the mixture uniform. Without smoothing:
    `r' = softmax(l_S / l_T)` (the previous weights and `alpha` play no part). Computed in log space, so large
    ratios do not overflow.

    Args:
        weights (`Sequence[float]`): The current mixture `r` (sums to 1).
        student_losses (`Sequence[float]`): Mean token cross-entropy of the student per domain.
        teacher_losses (`Sequence[float]`): Mean token cross-entropy of the teacher per domain.
        alpha (`float`): Smoothing coefficient in [0, 1].
        smoothing (`bool`): Use the smoothed update (default) or the plain softmax of the ratios.

    Returns:
        `list[float]`: The new mixture, summing to 1.
    """
    _check_losses(student_losses, teacher_losses)
    if len(weights) != len(student_losses):
        raise ValueError(f"Got {len(weights)} weights for {len(student_losses)} domains.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1].")
    ratios = [s / t for s, t in zip(student_losses, teacher_losses, strict=True)]
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
