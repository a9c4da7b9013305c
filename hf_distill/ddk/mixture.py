"""`DomainMixture`: the weighted draw of domains over stream positions that every process computes identically."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import numpy as np

_BLOCK = 4096  # draws per block of uniform numbers


class DomainMixture:
    r"""
    The domain drawn at each position of a training stream, under weights that may change during training.

    Draw number `p` (its *position*, counted from the start of training) picks domain `i` with probability `r[i]`,
    the weights in force at position `p`. The draw is a pure function of the seed, the weights history (a list of
    `(position, weights)` changes) and the position, so every process computes the same domains, and replaying the
    positions from 0 with the same history lands on the same draws. [`DomainWeightedSampler`] (map-style data) and
    [`DomainStream`] (streaming sources) turn the draws into examples.

    Args:
        domain_names (`Sequence[str]`): The domains, in id order.
        weights (`Sequence[float]`, *optional*): Initial mixture `r_0`, one weight per domain; uniform when omitted.
        seed (`int`): Seed of the draws.
    """

    def __init__(self, domain_names: Sequence[str], weights: Sequence[float] | None = None, seed: int = 0):
        self.domain_names: list[str] = [str(name) for name in domain_names]
        if not self.domain_names:
            raise ValueError("A domain mixture needs at least one domain.")
        if seed < 0:
            raise ValueError(f"seed={seed} must be >= 0.")
        self.seed = seed
        self._position = 0
        self._history: list[tuple[int, list[float]]] = []
        self._cdfs: list[np.ndarray] = []
        self._block: tuple[Any, np.ndarray | None] = (None, None)
        count = len(self.domain_names)
        self.set_weights(weights if weights is not None else [1.0 / count] * count)

    @property
    def weights(self) -> list[float]:
        """The latest weights (in force from the last change on)."""
        return list(self._history[-1][1])

    @property
    def history(self) -> list[tuple[int, list[float]]]:
        """Every weights change as `(first position it applies to, weights)`, oldest first."""
        return [(p, list(w)) for p, w in self._history]

    @property
    def position(self) -> int:
        """The number of draws made so far (the position of the next draw)."""
        return self._position

    def set_weights(self, weights: Sequence[float], position: int | None = None) -> None:
        """
        Change the mixture from `position` on (by default the next draw).

        Args:
            weights (`Sequence[float]`): One non-negative weight per domain, summing to 1.
            position (`int`, *optional*): First draw the weights apply to; it cannot be a draw already made.
        """
        weights = [float(w) for w in weights]
        if len(weights) != len(self.domain_names):
            raise ValueError(f"Expected {len(self.domain_names)} weights ({self.domain_names}), got {len(weights)}.")
        if any(not w >= 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
            raise ValueError(f"Domain weights {weights} must be >= 0 and sum to 1 (they sum to {sum(weights)}).")
        position = self._position if position is None else int(position)
        if position < self._position:
            raise ValueError(f"Cannot change the weights from position {position}: {self._position} draws were made.")
        if self._history and position < self._history[-1][0]:
            raise ValueError(f"position {position} is before the last change at {self._history[-1][0]}.")
        if self._history and position == self._history[-1][0]:
            self._history.pop()
            self._cdfs.pop()
        self._history.append((position, weights))
        cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
        cdf /= cdf[-1]
        cdf[-1] = 1.0
        self._cdfs.append(cdf)

    def _change_positions(self) -> list[int]:
        return [p for p, _ in self._history]

    def _cdf_at(self, position: int) -> np.ndarray:
        return self._cdfs[bisect.bisect_right(self._change_positions(), position) - 1]

    def _uniforms(self, block: int) -> np.ndarray:
        if self._block[0] != (self.seed, block):
            self._block = ((self.seed, block), np.random.default_rng([self.seed, 0, block]).random(_BLOCK))
        return self._block[1]

    def _domains(self, start: int, stop: int) -> np.ndarray:
        """Domain ids of the draws at positions `start, ..., stop - 1` (vectorised)."""
        out = np.empty(stop - start, dtype=np.int64)
        changes = self._change_positions()
        position = start
        while position < stop:
            block, offset = divmod(position, _BLOCK)
            end = min(stop, (block + 1) * _BLOCK)
            nxt = bisect.bisect_right(changes, position)
            if nxt < len(changes):
                end = min(end, changes[nxt])
            u = self._uniforms(block)[offset : offset + end - position]
            out[position - start : end - start] = np.searchsorted(self._cdf_at(position), u, side="right")
            position = end
        return out

    def draw_domains(self, start: int, stop: int) -> list[int]:
        """The domain ids drawn at positions `start` to `stop - 1` under the current history."""
        return self._domains(start, stop).tolist()

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: seed, domains and the weights history (the draws follow from them)."""
        return {
            "seed": self.seed,
            "domain_names": list(self.domain_names),
            "history": [[p, list(w)] for p, w in self._history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the seed and weights history saved by [`state_dict`]."""
        if list(state["domain_names"]) != self.domain_names:
            raise ValueError(
                f"The saved mixture has domains {state['domain_names']} but this training set has "
                f"{self.domain_names}: resume with the same training data."
            )
        self.seed = int(state["seed"])
        self._history, self._cdfs = [], []
        self._position = 0
        for position, weights in state["history"]:
            self.set_weights(weights, position)
