"""`DomainWeightedSampler`: draws a domain with probability `r[i]`, then that domain's next example."""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

_BLOCK = 4096  # draws per block of uniform numbers


class DomainWeightedSampler(Sampler[int]):
    r"""
    Samples dataset indices from a mixture of domains whose weights may change during training.

    Draw number `p` (its *position* in the stream, counted across epochs) picks domain `i` with probability `r[i]`,
    the weights in force at position `p`, and returns the next example of that domain in the domain's own shuffled
    order; a domain that runs out is reshuffled. The stream is a pure function of the seed, the weights history
    (a list of `(position, weights)` changes) and the position: every process holds the same stream, so
    accelerate's batch sharding gives each process its own share of it, and replaying the stream from position 0
    with the same history (as the Trainer does when it resumes and skips the batches already seen) lands on the
    same examples. Indices are drawn in the main process, so `dataloader_num_workers > 0` works.

    Args:
        domain_labels (`Sequence[str]`): The domain of each example of the dataset, in dataset order.
        weights (`Sequence[float]`, *optional*): Initial mixture `r_0`, one weight per domain in `domain_names`
            order; uniform when omitted.
        seed (`int`): Seed of the stream (domain draws and per-domain shuffles).
        num_samples (`int`, *optional*): Draws per epoch; defaults to the dataset size.
        domain_names (`Sequence[str]`, *optional*): Domain order; defaults to the sorted distinct labels.
    """

    def __init__(
        self,
        domain_labels: Sequence[str],
        weights: Sequence[float] | None = None,
        seed: int = 0,
        num_samples: int | None = None,
        domain_names: Sequence[str] | None = None,
    ):
        labels = [str(label) for label in domain_labels]
        self.domain_names: list[str] = sorted(set(labels)) if domain_names is None else [str(n) for n in domain_names]
        ids = {name: i for i, name in enumerate(self.domain_names)}
        unknown = sorted(set(labels) - set(ids))
        if unknown:
            raise ValueError(f"Domains {unknown} of the dataset are not in domain_names={self.domain_names}.")
        label_ids = np.fromiter((ids[label] for label in labels), dtype=np.int64, count=len(labels))
        self.domain_indices = [np.flatnonzero(label_ids == i) for i in range(len(self.domain_names))]
        for name, indices in zip(self.domain_names, self.domain_indices, strict=True):
            if len(indices) == 0:
                raise ValueError(f"Domain {name!r} has no training examples: add some or remove the domain.")
        if seed < 0:
            raise ValueError(f"seed={seed} must be >= 0.")
        self.seed = seed
        self.num_samples = len(labels) if num_samples is None else num_samples
        if self.num_samples < 1:
            raise ValueError(f"num_samples={self.num_samples} must be >= 1.")
        self.epoch = 0
        self._position = 0
        self._history: list[tuple[int, list[float]]] = []
        self._cdfs: list[np.ndarray] = []
        self._block: tuple[Any, np.ndarray | None] = (None, None)
        self.set_weights(weights if weights is not None else [1.0 / len(self.domain_names)] * len(self.domain_names))

    # ---- weights ---------------------------------------------------------------------------------------------

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

    # ---- the stream ------------------------------------------------------------------------------------------

    def _uniforms(self, block: int) -> np.ndarray:
        if self._block[0] != (self.seed, block):
            self._block = ((self.seed, block), np.random.default_rng([self.seed, 0, block]).random(_BLOCK))
        return self._block[1]

    def _permutation(self, domain: int, cycle: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 1, domain, cycle]).permutation(len(self.domain_indices[domain]))

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
        """The domain ids the stream draws at positions `start` to `stop - 1` under the current history."""
        return self._domains(start, stop).tolist()

    def set_epoch(self, epoch: int) -> None:
        """Epoch `e` yields positions `e * num_samples` to `(e + 1) * num_samples - 1`."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        start = self.epoch * self.num_samples
        drawn = np.bincount(self._domains(0, start), minlength=len(self.domain_names))  # replay
        perms: dict[int, tuple[int, np.ndarray]] = {}
        for position in range(start, start + self.num_samples):
            domain = int(self._domains(position, position + 1)[0])
            size = len(self.domain_indices[domain])
            cycle, offset = divmod(int(drawn[domain]), size)
            drawn[domain] += 1
            if perms.get(domain, (-1,))[0] != cycle:
                perms[domain] = (cycle, self._permutation(domain, cycle))
            self._position = max(self._position, position + 1)
            yield int(self.domain_indices[domain][perms[domain][1][offset]])

    # ---- checkpointing ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: seed, domains and the weights history (the stream follows from them)."""
        return {
            "seed": self.seed,
            "num_samples": self.num_samples,
            "domain_names": list(self.domain_names),
            "history": [[p, list(w)] for p, w in self._history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the seed and weights history saved by [`state_dict`]."""
        if list(state["domain_names"]) != self.domain_names:
            raise ValueError(
                f"The saved sampler has domains {state['domain_names']} but this dataset has {self.domain_names}: "
                "resume with the same training data."
            )
        self.seed = int(state["seed"])
        self.num_samples = int(state["num_samples"])
        self._history, self._cdfs = [], []
        self._position = 0
        for position, weights in state["history"]:
            self.set_weights(weights, position)
