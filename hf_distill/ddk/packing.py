"""`DomainReader`: one domain's training blocks on one process, tokenized and packed on the fly from its source."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

Encode = Callable[[list[dict[str, Any]]], list[list[int]]]


class DomainReader:
    """
    Reads one domain's source (a `datasets.IterableDataset`, this process's part of it) a few examples at a time,
    encodes them (token ids, plus the end-of-sequence token after each), and cuts the domain's own token stream into
    blocks of `block_size`: blocks never mix domains, and nothing but the current examples is held. When the source
    ends it starts over with `set_epoch(cycle)` (datasets then reorders a multi-shard source's shards and reshuffles
    a shuffled one, deterministically), the unfinished block carried over.

    Its state is the source's `state_dict()` before the current group of examples, the carried-over tokens (fewer
    than `block_size`) and the number of blocks already handed out from that group: [`load_state_dict`] resumes
    exactly at the next block, re-reading only the current group.

    Args:
        name (`str`): The domain (for error messages).
        source (`datasets.IterableDataset`): This process's part of the domain's examples.
        encode (`Callable`): Token ids of a list of examples.
        block_size (`int`): Tokens per block.
        eos_token_id (`int`, *optional*): Appended after each example's tokens.
        group_size (`int`): Examples encoded together.
    """

    def __init__(
        self,
        name: str,
        source: Any,
        encode: Encode,
        block_size: int,
        eos_token_id: int | None,
        group_size: int = 64,
    ):
        self.name, self.source, self.encode = name, source, encode
        self.block_size, self.group_size = block_size, group_size
        self.eos = [] if eos_token_id is None else [int(eos_token_id)]
        self.cycle, self.cycle_examples = 0, 0
        self.carry: list[int] = []
        self._iterator: Iterator[dict[str, Any]] | None = None
        self._group: dict[str, Any] | None = None  # where the current group of examples starts
        self._blocks: deque[list[int]] = deque()
        self._handed_out = 0

    def next_block(self) -> list[int]:
        """The next `block_size` tokens of the domain."""
        while not self._blocks:
            self._read_group()
        self._handed_out += 1
        return self._blocks.popleft()

    def _read_group(self) -> None:
        if self._iterator is None:
            self.source.set_epoch(self.cycle)
            self._iterator = iter(self.source)
        self._group = {
            "cycle": self.cycle,
            "cycle_examples": self.cycle_examples,
            "source": self.source.state_dict() if self.cycle_examples else None,
            "carry": list(self.carry),
        }
        self._handed_out = 0
        rows = list(islice(self._iterator, self.group_size))
        if not rows:
            if self.cycle_examples == 0:
                raise ValueError(
                    f"Domain {self.name!r} has no examples in this process's part of its source: give the domain "
                    "data, or more examples (or shards) than processes."
                )
            self.cycle, self.cycle_examples, self._iterator = self.cycle + 1, 0, None
            return
        self.cycle_examples += len(rows)
        tokens = self.carry + [token for ids in self.encode(rows) for token in (*ids, *self.eos)]
        size = self.block_size
        full = len(tokens) // size
        self._blocks = deque(tokens[i * size : (i + 1) * size] for i in range(full))
        self.carry = tokens[full * size :]

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position: where the current group starts and how many of its blocks were handed out."""
        if self._group is None:
            return {"group": None, "handed_out": 0}
        return {"group": self._group, "handed_out": self._handed_out}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the block after the last one handed out when `state` was taken (re-reads that group only)."""
        group = state["group"]
        self._blocks, self._iterator, self._group, self._handed_out = deque(), None, None, 0
        if group is None:
            self.cycle, self.cycle_examples, self.carry = 0, 0, []
            return
        self.cycle, self.cycle_examples, self.carry = group["cycle"], group["cycle_examples"], list(group["carry"])
        self.source.set_epoch(self.cycle)
        if group["source"] is not None:
            self.source.load_state_dict(group["source"])
        self._iterator = iter(self.source)
        self._read_group()
        for _ in range(state["handed_out"]):
            self.next_block()
