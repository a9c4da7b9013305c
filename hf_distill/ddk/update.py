"""DDK (arXiv 2407.16154): the domain discrepancy factor and the smooth mixture update, as pure functions.

The paper measures "the perplexity of the student and the teacher" on each domain's validation set and takes the
ratio `l_S / l_T` of those perplexities (`gap="perplexity"`, these functions' default: the paper's update, the
documented reference; `DistillationConfig.ddk_gap` defaults to `"log_perplexity"`, see its help). The functions
receive the mean token cross-entropies `ce` (what a model's loss returns; `exp(ce)` is the perplexity) and work in log
space: the perplexity ratio is `exp(ce_S - ce_T)`, and `g = exp(ratio)` is only ever used through a softmax of
`log r + ratio`. `gap="cross_entropy"` uses `ce_S / ce_T` instead (a much flatter signal; hf_distill <= 0.2 used it),
and `gap="log_perplexity"` the log of the perplexity ratio, `ce_S - ce_T` (so `g` is the perplexity ratio itself).

Beyond the paper (each off by default, where it reproduces the paper's update bit for bit): a temperature on the ratio
inside the softmax (`g = exp(ratio / temperature)`) and per-domain bounds on the new weights ([`bound_weights`]).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

GAPS = ("perplexity", "cross_entropy", "log_perplexity")


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
    quantity), of the cross-entropies, `ce_S / ce_T`, or the log of the perplexity ratio, `ce_S - ce_T`.

    Args:
        student_losses (`Sequence[float]`): Mean token cross-entropy of the student on each domain.
        teacher_losses (`Sequence[float]`): The same for the teacher (> 0).
        gap (`str`): `"perplexity"` (default), `"cross_entropy"` or `"log_perplexity"`.

    Returns:
        `list[float]`: One ratio per domain.
    """
    _check_losses(student_losses, teacher_losses)
    if gap not in GAPS:
        raise ValueError(f"gap={gap!r} is not supported; choose one of {list(GAPS)}.")
    pairs = zip(student_losses, teacher_losses, strict=True)
    if gap == "cross_entropy":
        return [s / t for s, t in pairs]
    if gap == "log_perplexity":
        return [s - t for s, t in pairs]
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
        gap (`str`): `"perplexity"` (default), `"cross_entropy"` or `"log_perplexity"`.

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
    temperature: float = 1.0,
    min_weight: float = 0.0,
    max_weight: float = 1.0,
) -> list[float]:
    r"""
    One DDK update of the domain mixture.

    With smoothing (DDK eq. 4-5): `psi[i] = r[i] g[i] / sum_j r[j] g[j]` and `r'[i] = alpha psi[i] + (1 - alpha) / N`,
    with `g` the [`discrepancy_factor`] of the perplexity ratio (or of the `gap` chosen); `alpha = 0` keeps the mixture
    uniform. Without smoothing: `r' = softmax(l_S / l_T)` (the previous weights and `alpha` play no part). Computed in
    log space, so ratios in the thousands do not overflow. Beyond the paper: `g = exp(ratio / temperature)`, and the
    new weights are kept within `[min_weight, max_weight]` ([`bound_weights`]). With `temperature=1`, `min_weight=0`
    and `max_weight=1` (the defaults) the result is the paper's update, bit for bit the same as without them.

    Args:
        weights (`Sequence[float]`): The current mixture `r` (sums to 1).
        student_losses (`Sequence[float]`): Mean token cross-entropy of the student per domain.
        teacher_losses (`Sequence[float]`): Mean token cross-entropy of the teacher per domain.
        alpha (`float`): Smoothing coefficient in [0, 1].
        smoothing (`bool`): Use the smoothed update (default) or the plain softmax of the ratios.
        gap (`str`): `"perplexity"` (default, the paper's), `"cross_entropy"` or `"log_perplexity"` (see
            [`domain_gap`]).
        temperature (`float`): The ratios are divided by it inside the softmax (> 0; 1 is the paper's).
        min_weight (`float`): Lower bound of every new weight (`N * min_weight <= 1`).
        max_weight (`float`): Upper bound of every new weight (`N * max_weight >= 1`).

    Returns:
        `list[float]`: The new mixture, summing to 1.
    """
    ratios = domain_gap(student_losses, teacher_losses, gap)
    if len(weights) != len(student_losses):
        raise ValueError(f"Got {len(weights)} weights for {len(student_losses)} domains.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1].")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature={temperature} must be a finite number > 0 (1 is the paper's update).")
    scaled = [q / temperature for q in ratios]  # exact for temperature 1
    if not smoothing:
        return bound_weights(_softmax(scaled), min_weight, max_weight)
    psi = _softmax([math.log(r) + q if r > 0 else -math.inf for r, q in zip(weights, scaled, strict=True)])
    return bound_weights([alpha * p + (1.0 - alpha) / len(psi) for p in psi], min_weight, max_weight)


def check_weight_bounds(min_weight: float, max_weight: float, domains: int) -> None:
    """
    Raise a `ValueError` unless a mixture of `domains` weights can lie within `[min_weight, max_weight]`.
    """
    if not 0.0 <= min_weight <= max_weight <= 1.0:
        raise ValueError(
            f"need 0 <= min_weight <= max_weight <= 1, got min_weight={min_weight}, max_weight={max_weight}."
        )
    if min_weight * domains > 1.0 + 1e-12 or max_weight * domains < 1.0 - 1e-12:
        raise ValueError(
            f"{domains} domain weights summing to 1 cannot all lie within [{min_weight}, {max_weight}]: "
            f"need min_weight <= 1/{domains} = {1 / domains:.4g} <= max_weight."
        )


def bound_weights(weights: Sequence[float], min_weight: float = 0.0, max_weight: float = 1.0) -> list[float]:
    r"""
    Keep a mixture within per-domain bounds (as ModelOpt's DoGE `apply_source_min/max_blend_weights`): weights already
    within `[min_weight, max_weight]` are returned unchanged; otherwise `w'[i] = clip(c * w[i], min_weight,
    max_weight)` with the one scale `c` for which they sum to 1, so the weights that are not clipped keep their
    proportions. A bound holds exactly (a clipped weight *is* the bound). Should the positive weights all reach
    `max_weight` with mass left over, the zero weights share it equally.

    Args:
        weights (`Sequence[float]`): A mixture (>= 0, sums to 1).
        min_weight (`float`): Lower bound of every weight.
        max_weight (`float`): Upper bound of every weight.

    Returns:
        `list[float]`: The bounded mixture.
    """
    check_weight_bounds(min_weight, max_weight, len(weights))
    if all(min_weight <= w <= max_weight for w in weights):
        return list(weights)
    # weights so small that no float scale lifts them to a bound count as zeros
    usable = [w > 0 and math.isfinite(max_weight / w) for w in weights]
    positive = [w for w, use in zip(weights, usable, strict=True) if use]
    if max_weight * len(positive) + min_weight * (len(weights) - len(positive)) < 1.0:
        share = (1.0 - max_weight * len(positive)) / (len(weights) - len(positive))
        return [max_weight if use else share for use in usable]

    def clipped(scale: float, w: float) -> float:
        return min(max(scale * w, min_weight), max_weight)

    # the sum of clipped(scale, w) is piecewise linear and non-decreasing in the scale, with a break wherever a
    # weight meets a bound: find the piece where it crosses 1, then solve on it (clipped weights are constant there)
    breaks = sorted({bound / w for w in positive for bound in (min_weight, max_weight) if bound > 0})
    start = 0.0
    for end in breaks:
        if sum(clipped(end, w) for w in weights) >= 1.0:
            break
        start = end
    middle = (start + end) / 2
    free = [w for w in weights if min_weight < middle * w < max_weight]
    fixed = sum(clipped(middle, w) for w in weights if not min_weight < middle * w < max_weight)
    scale = (1.0 - fixed) / sum(free) if free else end
    return [clipped(scale, w) for w in weights]


def parse_domain_weights(spec: str | Mapping[str, float] | None) -> dict[str, float] | None:
    """
    Parse an initial mixture: `None` or `"uniform"` (uniform), a mapping, a JSON object or `"name=w,..."`. An empty
    string is refused: it is what a forgotten value looks like.

    Returns:
        `dict[str, float]` or `None` for uniform.
    """
    if isinstance(spec, str) and not spec.strip():
        raise ValueError("it is empty: use 'uniform' (or leave it unset) for equal weights, or 'name=weight,...'")
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "uniform"):
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
