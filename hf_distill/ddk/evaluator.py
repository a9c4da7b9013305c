"""`DomainEvaluator`: the mean token cross-entropy of a model on each domain's held-out data, over all processes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch
from accelerate.utils import send_to_device
from datasets import Dataset

from ..losses import cross_entropy_loss
from ..on_policy.collator import PROMPT_KEYS
from ..parallel import shards_parameters
from .data import DOMAIN_IDS

Batches = list[list[dict[str, Any]]]


class DomainEvaluator:
    """
    Measures `l[i]`, the mean token cross-entropy of a model (student or teacher) on the held-out data of domain `i`:
    the quantity DDK compares and the recipe's per-domain table shows (`exp` of it is the perplexity).

    Each process collates its share of every domain's examples (rows `i` with `(i // batch_size) % processes ==
    rank`), runs the model without gradients, and the sums are added over processes in float64. When the backend
    shards parameters (ZeRO-3, FSDP) every process runs the same number of batches (the short ones add batches whose
    labels are all ignored).

    Args:
        collator (`Callable`): The training data collator (domain ids are dropped from its batches).
        prepare_dataset (`Callable[[Dataset], Dataset]`): Drops the columns the model and collator do not read.
        accelerator (`accelerate.Accelerator`): Device, process rank and count, cross-process sums.
        batch_size (`int`): Examples per batch and process.
        seed (`int`): Seed of random collators (e.g. MLM masking), in a forked RNG: training's RNG is untouched.
        task (`str`): `"causal_lm"` shifts labels by one.
        vocab_size (`int`, *optional*): Logits are compared on their first `vocab_size` entries.
        chunk_size (`int`): Tokens per chunk of the cross-entropy.
        autocast (`Callable[[], AbstractContextManager]`): The training's mixed-precision context.
        validation (`Mapping[str, Dataset]`, *optional*): The default data of each domain (DDK's validation sets).
    """

    def __init__(
        self,
        collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
        prepare_dataset: Callable[[Dataset], Dataset],
        accelerator: Any,
        batch_size: int,
        seed: int,
        task: str,
        vocab_size: int | None,
        chunk_size: int,
        autocast: Callable[[], AbstractContextManager],
        validation: Mapping[str, Dataset] | None = None,
    ):
        self.collator, self.prepare_dataset, self.accelerator = collator, prepare_dataset, accelerator
        self.batch_size, self.seed, self.task = batch_size, seed, task
        self.vocab_size, self.chunk_size, self.autocast = vocab_size, chunk_size, autocast
        self.validation = dict(validation) if validation is not None else None

    def collate(self, datasets: Mapping[str, Dataset], max_batches: int | None = None) -> Batches:
        """This process's batches of each domain: the first `max_batches` batches per process (or all)."""
        processes, rank = self.accelerator.num_processes, self.accelerator.process_index
        size, batches = self.batch_size, []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for dataset in datasets.values():
                dataset = self.prepare_dataset(dataset)
                take = len(dataset) if max_batches is None else min(len(dataset), max_batches * size * processes)
                rows = [i for i in range(take) if (i // size) % processes == rank]
                own = [self.collator([dataset[i] for i in rows[k : k + size]]) for k in range(0, len(rows), size)]
                if shards_parameters(self.accelerator):  # every process must run as many forwards as the others
                    own += self._fillers(dataset, -(-take // (size * processes)) - len(own))
                batches.append(own)
        return batches

    def _fillers(self, dataset: Dataset, count: int) -> list[dict[str, Any]]:
        """`count` batches that count nothing (the domain's first rows, every label ignored): under ZeRO-3 / FSDP
        each forward gathers parameters from all processes, so a process with fewer batches runs these instead."""
        if count <= 0:
            return []
        batch = self.collator([dataset[i] for i in range(min(len(dataset), self.batch_size))])
        if "labels" in batch:
            batch["labels"] = torch.full_like(batch["labels"], -100)
        return [batch] * count

    @torch.inference_mode()
    def token_cross_entropy(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed token cross-entropy of `model` on one batch (on this process's device), and its label tokens."""
        inputs = dict(batch)
        labels = inputs.pop("labels", None)
        if labels is None:
            raise ValueError(
                "The domain evaluation batches have no `labels`: use the training data collator's format."
            )
        for key in (DOMAIN_IDS, *PROMPT_KEYS):  # domain ids, prompts of prompt/completion data
            inputs.pop(key, None)
        with self.autocast():
            logits = model(**inputs).logits
        if self.task == "causal_lm":
            logits, labels = logits[:, :-1], labels[:, 1:]
        logits = logits[..., : self.vocab_size]
        return cross_entropy_loss(logits, labels, self.chunk_size), labels.ne(-100).sum()

    @torch.inference_mode()
    def batch_losses(self, model: torch.nn.Module, batches: Batches, names: list[str]) -> list[float]:
        """Mean token cross-entropy of `model` on each domain's batches ([`collate`]), over all processes."""
        device = self.accelerator.device
        sums = torch.zeros(len(batches), 2, dtype=torch.float64, device=device)
        was_training = model.training
        model.eval()
        for i, domain_batches in enumerate(batches):
            for batch in domain_batches:
                loss, count = self.token_cross_entropy(model, send_to_device(batch, device))
                sums[i, 0] += loss.double()
                sums[i, 1] += count
        model.train(was_training)
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
        for name, count in zip(names, sums[:, 1].tolist(), strict=True):
            if count == 0:
                raise ValueError(f"The evaluation data of domain {name!r} has no label tokens: fix its labels.")
        return (sums[:, 0] / sums[:, 1]).tolist()

    def evaluate(
        self, model: torch.nn.Module, datasets: Mapping[str, Dataset] | None = None, max_batches: int | None = None
    ) -> dict[str, float]:
        """Mean token cross-entropy of `model` on each domain (`datasets`, or the validation sets)."""
        if datasets is None:
            if self.validation is None:
                raise ValueError("evaluate_domains needs `datasets` (no DDK validation sets to default to).")
            datasets = self.validation
        names = list(datasets)
        return dict(zip(names, self.batch_losses(model, self.collate(datasets, max_batches), names), strict=True))
