"""`DomainStream`: a training mixture over per-domain streaming sources, drawn identically on every process."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from datasets.distributed import split_dataset_by_node

from ..long_texts import encode_texts
from .mixture import DomainMixture
from .packing import DomainReader, Encode


class StreamMixture(DomainMixture):
    r"""
    The draws of one training run of a [`DomainStream`] on one process: the shared [`DomainMixture`] of domains, and
    this process's [`DomainReader`] of each domain.

    Process `rank` of `processes` takes the global micro-batches `rank, rank + processes, ...` of `batch_size`
    positions each (the layout of accelerate's batch sharding): its `i`-th example is global position
    `((i // batch_size) * processes + rank) * batch_size + i % batch_size`. The domain at each position is the same
    on every process; the example is the next block of that domain from this process's own part of the source.

    `state_dict()` is the shared part (seed, domains, weights history: what DDK saves); `process_state()` adds this
    process's readers and the number of examples it has produced, for an exact resume.
    """

    def __init__(
        self,
        readers: Mapping[str, DomainReader],
        weights: Sequence[float] | None,
        seed: int,
        rank: int,
        processes: int,
        batch_size: int,
    ):
        super().__init__(list(readers), weights, seed)
        self.readers = dict(readers)
        self.rank, self.processes, self.batch_size = rank, processes, batch_size
        self.produced = 0

    def global_position(self, index: int) -> int:
        """The global position of this process's `index`-th example."""
        batch, offset = divmod(index, self.batch_size)
        return (batch * self.processes + self.rank) * self.batch_size + offset

    def examples(self, domain_column: str) -> Iterator[dict[str, Any]]:
        """This process's examples, from the one it has not produced yet on: packed blocks with their domain."""
        while True:
            position = self.global_position(self.produced)
            name = self.domain_names[int(self._domains(position, position + 1)[0])]
            block = self.readers[name].next_block()
            self.produced += 1
            self._position = max(self._position, position + 1)
            yield {"input_ids": block, "attention_mask": [1] * len(block), "labels": list(block), domain_column: name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the weights history (the draws already made stay made)."""
        position = self._position
        super().load_state_dict(state)
        self._position = position

    def process_state(self) -> dict[str, Any]:
        """JSON-serialisable state of this process: the mixture, the examples produced and each domain's reader."""
        return {
            "mixture": self.state_dict(),
            "rank": self.rank,
            "processes": self.processes,
            "batch_size": self.batch_size,
            "produced": self.produced,
            "position": self._position,
            "readers": {name: reader.state_dict() for name, reader in self.readers.items()},
        }

    def load_process_state(self, state: dict[str, Any]) -> None:
        """Resume this process's stream where [`process_state`] was taken (same processes and batch size)."""
        mismatch = stream_state_mismatch(state, self.rank, self.processes, self.batch_size)
        if mismatch:
            raise ValueError(mismatch)
        super().load_state_dict(state["mixture"])
        self.produced, self._position = int(state["produced"]), int(state["position"])
        for name, reader in self.readers.items():
            reader.load_state_dict(state["readers"][name])


def stream_state_mismatch(state: dict[str, Any], rank: int, processes: int, batch_size: int) -> str | None:
    """Why a stream position saved as [`StreamMixture.process_state`] cannot be resumed by process `rank` of
    `processes` reading `batch_size` examples per micro-batch (`None` when it can): the draws are laid out by those."""
    saved = (state.get("rank"), state.get("processes"), state.get("batch_size"))
    if saved == (rank, processes, batch_size):
        return None
    return (
        f"the checkpoint's training stream was read as process {saved[0]} of {saved[1]} with "
        f"per_device_train_batch_size={saved[2]}; this run is process {rank} of {processes} with {batch_size}: resume "
        "with the same number of processes and batch size."
    )


class DomainStream(torch.utils.data.IterableDataset):
    r"""
    A multi-domain training set read lazily from one streaming source per domain, for corpora too large to hold:
    nothing is materialised, and no Python list of the rows is built.

    Each domain's source is a `datasets.IterableDataset` (e.g. `load_dataset("json", data_files=..., split="train",
    streaming=True)` over local shards, or a hub dataset with `streaming=True`; a map-style `Dataset` is read through
    `to_iterable_dataset`). [`DistillationTrainer`] reads it like a map-style set with domains: position `p` of the
    training stream draws domain `i` with probability `r[i]` ([`DomainMixture`]: the same draw on every process, the
    weights changed by DDK), and each process reads only its own part of every source
    (`datasets.distributed.split_dataset_by_node`: whole shards when their number divides the processes, else every
    `processes`-th example), tokenizing and packing it on the fly into `block_size` blocks that never mix domains
    ([`DomainReader`]). A checkpoint records each process's position in each source, so a resumed run continues
    exactly where it stopped without reading the data again (sources shuffled with a buffer lose the buffer's content
    on resume, as `datasets` documents). Training needs `max_steps` (the stream has no length), and the stream is read
    in the training process (`dataloader_num_workers=0`) so that a change of weights applies to the next draw.

    Args:
        sources (`Mapping[str, datasets.IterableDataset | datasets.Dataset]`): The examples of each domain.
        block_size (`int`): Tokens per training block.
        tokenizer (*optional*): Tokenizes each example's `text_column`; without it, each example's `input_ids` are
            packed as they are.
        text_column (`str`): The text column (with a tokenizer).
        eos_token_id (`int`, *optional*): Appended after each example; defaults to the tokenizer's.
        group_size (`int`): Examples tokenized together.
    """

    def __init__(
        self,
        sources: Mapping[str, IterableDataset | Dataset],
        block_size: int,
        tokenizer: Any | None = None,
        text_column: str = "text",
        eos_token_id: int | None = None,
        group_size: int = 64,
    ):
        if not isinstance(sources, Mapping) or not sources:
            raise ValueError("DomainStream needs a non-empty mapping of domain name -> dataset (`sources`).")
        for name, source in sources.items():
            if not isinstance(source, (IterableDataset, Dataset)):
                raise TypeError(
                    f"DomainStream source of domain {name!r} is a {type(source).__name__}: give a datasets."
                    "IterableDataset (e.g. load_dataset(..., streaming=True)) or a datasets.Dataset."
                )
        if block_size < 2:
            raise ValueError(f"DomainStream block_size={block_size} must be at least 2.")
        if group_size < 1:
            raise ValueError(f"DomainStream group_size={group_size} must be at least 1.")
        self.sources = {str(name): sources[name] for name in sorted(sources, key=str)}
        self.domain_names = list(self.sources)
        self.block_size, self.tokenizer, self.text_column = block_size, tokenizer, text_column
        self.group_size = group_size
        self.eos_token_id = eos_token_id if eos_token_id is not None else getattr(tokenizer, "eos_token_id", None)
        self.domain_column = "domain"
        self.mixture: StreamMixture | None = None

    def _encode(self, rows: list[dict[str, Any]]) -> list[list[int]]:
        if self.tokenizer is None:
            return [list(row["input_ids"]) for row in rows]
        return encode_texts(self.tokenizer, [row[self.text_column] for row in rows])

    def _part(self, source: IterableDataset | Dataset, rank: int, processes: int) -> IterableDataset:
        if isinstance(source, Dataset):
            source = source.to_iterable_dataset(num_shards=processes)
        return split_dataset_by_node(source, rank, processes)

    def start(
        self,
        seed: int = 0,
        weights: Sequence[float] | None = None,
        rank: int = 0,
        processes: int = 1,
        batch_size: int = 1,
        domain_column: str = "domain",
    ) -> StreamMixture:
        """
        Begin a training run: a fresh [`StreamMixture`] at the initial `weights` (uniform when `None`), reading this
        process's part of every source from its start. [`DistillationTrainer`] calls it with the run's seed, process
        and micro-batch size; iterating a stream that was never started starts it with the defaults.
        """
        encode: Encode = self._encode
        readers = {
            name: DomainReader(
                name, self._part(source, rank, processes), encode, self.block_size, self.eos_token_id, self.group_size
            )
            for name, source in self.sources.items()
        }
        self.domain_column = domain_column
        self.mixture = StreamMixture(readers, weights, seed, rank, processes, batch_size)
        return self.mixture

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.mixture is None:
            self.start()
        return self.mixture.examples(self.domain_column)
