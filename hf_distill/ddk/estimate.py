"""How well DDK's per-domain gap is measured: each domain's mean token cross-entropy with its standard error, from the
summed cross-entropy of every held-out block (example), and the standard error of the ratio the update compares.

The blocks are a random sample of the domain's held-out data ([`DomainEvaluator`]), so the mean over blocks is a ratio
estimator `sum_b L_b / sum_b n_b` (token losses `L_b` and label tokens `n_b` of block `b`), whose standard error is

    se = sqrt(B / (B - 1) * sum_b (L_b - mean * n_b)^2) / sum_b n_b

(for blocks of equal size: the standard deviation of the block means over `sqrt(B)`). Student and teacher are measured
on the very same blocks, so the gap's error is that of the per-block paired difference, not the two errors added.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def mean_standard_error(sums: Sequence[float], counts: Sequence[float]) -> float:
    """
    Standard error of the ratio estimator `sum(sums) / sum(counts)` over blocks sampled at random (see the module's
    docstring); `nan` with fewer than two blocks.

    Args:
        sums (`Sequence[float]`): Per block, the summed value (e.g. the token cross-entropies of the block).
        counts (`Sequence[float]`): Per block, the number of items summed (e.g. its label tokens, > 0 in all).

    Returns:
        `float`: The standard error of the mean per item.
    """
    sums, counts = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    if len(sums) < 2:
        return math.nan
    total = counts.sum()
    residuals = sums - sums.sum() / total * counts
    return float(math.sqrt(len(sums) / (len(sums) - 1) * float(np.sum(residuals**2))) / total)


@dataclass(frozen=True)
class DomainEstimate:
    """
    A model's token cross-entropy on one domain's evaluation blocks.

    Args:
        sums (`tuple[float, ...]`): Summed token cross-entropy of each block, in the evaluation's block order.
        counts (`tuple[int, ...]`): Label tokens of each block (`unit="bytes"`: the UTF-8 bytes of its aligned spans,
            when the teacher reads another tokenization: the mean is then in nats per byte).
        unit (`str`): What `counts` count: `"tokens"` or `"bytes"`.
    """

    sums: tuple[float, ...]
    counts: tuple[int, ...]
    unit: str = "tokens"

    @property
    def tokens(self) -> int:
        return int(sum(self.counts))

    @property
    def mean(self) -> float:
        """The mean token cross-entropy (`log` of the perplexity; per byte with `unit="bytes"`)."""
        return float(np.sum(np.asarray(self.sums, dtype=np.float64)) / self.tokens)

    @property
    def standard_error(self) -> float:
        """The standard error of [`mean`] ([`mean_standard_error`])."""
        return mean_standard_error(self.sums, self.counts)


def gap_standard_error(student: DomainEstimate, teacher: DomainEstimate, gap: str = "perplexity") -> float:
    r"""
    Standard error of the ratio [`domain_gap`] computes from these two estimates, to first order (delta method), with
    student and teacher paired block by block:

    - `"perplexity"`, `exp(ce_S - ce_T)`: the ratio times the error of the paired difference `ce_S - ce_T`;
    - `"log_perplexity"`, `ce_S - ce_T`: the error of the paired difference;
    - `"cross_entropy"`, `ce_S / ce_T`: the ratio times the error of `ce_S' / ce_S - ce_T' / ce_T`.

    Args:
        student ([`DomainEstimate`]): The student's blocks.
        teacher ([`DomainEstimate`]): The teacher's, on the same blocks.
        gap (`str`): `"perplexity"`, `"log_perplexity"` or `"cross_entropy"`.

    Returns:
        `float`: The standard error of the gap (`nan` with fewer than two blocks).

    Raises:
        `ValueError`: if the two estimates are not on the same blocks (their label tokens differ).
    """
    if student.counts != teacher.counts:
        raise ValueError(
            f"The student's and the teacher's gap estimates are on different blocks ({len(student.counts)} blocks / "
            f"{student.tokens} tokens vs {len(teacher.counts)} / {teacher.tokens}): both must be measured on the "
            "same held-out blocks."
        )
    s, t = np.asarray(student.sums, dtype=np.float64), np.asarray(teacher.sums, dtype=np.float64)
    if gap == "cross_entropy":
        ce_s, ce_t = student.mean, teacher.mean
        return ce_s / ce_t * mean_standard_error(s / ce_s - t / ce_t, student.counts)
    difference = mean_standard_error(s - t, student.counts)
    if gap == "log_perplexity":
        return difference
    return math.exp(min(student.mean - teacher.mean, 700.0)) * difference


def overlapping(ratios: Sequence[float], errors: Sequence[float]) -> list[tuple[int, int]]:
    """
    The pairs of domains `(i, j)`, `i < j`, whose ratios are not separated at their standard errors: `|ratio_i -
    ratio_j| <= se_i + se_j` (the intervals `ratio ± se` overlap). Domains whose error is not finite are left out.

    Args:
        ratios (`Sequence[float]`): The gap of each domain.
        errors (`Sequence[float]`): Its standard error.

    Returns:
        `list[tuple[int, int]]`: The overlapping pairs.
    """
    known = [i for i, e in enumerate(errors) if math.isfinite(e)]
    return [
        (i, j)
        for a, i in enumerate(known)
        for j in known[a + 1 :]
        if abs(ratios[i] - ratios[j]) <= errors[i] + errors[j]
    ]
