"""`DomainWeightedSampler`: draws a domain with probability `r[i]`, then that domain's next example."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from .mixture import DomainMixture


class DomainWeightedSampler(DomainMixture, Sampler[int]):
    r"""
    Samples dataset indices from a mixture of domains whose weights may change during training.

    Draw number `p` (its *position* in the stream, counted across epochs) picks domain `i` with probability `r[i]`,
    the weights in force at position `p` (see [`DomainMixture`]), and returns the next example of that domain in the
    domain's own shuffled order; a domain that runs out is reshuffled. The stream is a pure function of the seed, the
    weights history and the position: every process holds the same stream, so accelerate's batch sharding gives each
    process its own share of it, and replaying the stream from position 0 with the same history (as the Trainer does
    when it resumes and skips the batches already seen) lands on the same examples. Indices are drawn in the main
    process, so `dataloader_num_workers > 0` works.

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
        names = sorted(set(labels)) if domain_names is None else [str(n) for n in domain_names]
        ids = {name: i for i, name in enumerate(names)}
        unknown = sorted(set(labels) - set(ids))
        if unknown:
            raise ValueError(f"Domains {unknown} of the dataset are not in domain_names={names}.")
        label_ids = np.fromiter((ids[label] for label in labels), dtype=np.int64, count=len(labels))
        self._init(label_ids, names, weights, seed, num_samples)

    @classmethod
    def from_ids(
        cls,
        label_ids: np.ndarray,
        domain_names: Sequence[str],
        weights: Sequence[float] | None = None,
        seed: int = 0,
        num_samples: int | None = None,
    ) -> DomainWeightedSampler:
        """
        The sampler of a dataset whose examples' domains are given as ids (`label_ids[k]` indexes `domain_names`),
        e.g. read from an Arrow column without building a Python list of the labels.
        """
        sampler = cls.__new__(cls)
        sampler._init(np.asarray(label_ids), [str(n) for n in domain_names], weights, seed, num_samples)
        return sampler

    def _init(
        self,
        label_ids: np.ndarray,
        domain_names: list[str],
        weights: Sequence[float] | None,
        seed: int,
        num_samples: int | None,
    ) -> None:
        DomainMixture.__init__(self, domain_names, weights, seed)
        self.domain_indices = [np.flatnonzero(label_ids == i) for i in range(len(self.domain_names))]
        for name, indices in zip(self.domain_names, self.domain_indices, strict=True):
            if len(indices) == 0:
                raise ValueError(f"Domain {name!r} has no training examples: add some or remove the domain.")
        self.num_samples = len(label_ids) if num_samples is None else num_samples
        if self.num_samples < 1:
            raise ValueError(f"num_samples={self.num_samples} must be >= 1.")
        self.epoch = 0

    def _permutation(self, domain: int, cycle: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 1, domain, cycle]).permutation(len(self.domain_indices[domain]))

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

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: seed, domains, draws per epoch and the weights history."""
        return {**super().state_dict(), "num_samples": self.num_samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the seed, draws per epoch and weights history saved by [`state_dict`]."""
        super().load_state_dict(state)
        self.num_samples = int(state["num_samples"])
