"""`DomainEvaluator`: the mean token cross-entropy of a model on each domain's held-out data, over all processes, with
the per-block sums its standard error needs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import send_to_device
from datasets import Dataset

from ..batch_keys import ALIGNMENT_KEYS, MATCHED_VOCAB, TEACHER_PREFIX
from ..losses import cross_entropy_loss
from ..on_policy.collator import PROMPT_KEYS
from ..parallel import shards_parameters
from .data import DOMAIN_IDS
from .estimate import DomainEstimate

SELECTION_SEED = 0  # the order in which blocks are drawn for a token budget: the same in every run and for both models


@dataclass
class DomainBatches:
    """
    One domain's evaluation batches on this process.

    Args:
        batches (`list[dict]`): This process's collated batches (under sharded parameters, filler batches last).
        blocks (`list[list[int]]`): For each of this process's own batches, the positions of its rows among the
            domain's selected blocks (fillers have none).
        selected (`int`): Blocks selected for the domain, all processes together.
    """

    batches: list[dict[str, Any]] = field(default_factory=list)
    blocks: list[list[int]] = field(default_factory=list)
    selected: int = 0

    def __len__(self) -> int:
        return len(self.batches)


Batches = list[DomainBatches]


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

    def collate(
        self, datasets: Mapping[str, Dataset], max_batches: int | None = None, max_tokens: int | None = None
    ) -> Batches:
        """
        This process's batches of each domain.

        Without `max_tokens`, the domain's first rows (the first `max_batches` batches per process, or all). With
        `max_tokens`, rows drawn in a fixed random order (the same in every run, so student and teacher, and runs of
        other seeds, see the same blocks) until their label tokens reach `max_tokens` (all processes together), also
        stopping at `max_batches` batches per process: a random sample of the domain's blocks, so that neighbouring
        blocks of one text do not make up the sample and the standard error of [`DomainEstimate`] holds.
        """
        processes, rank = self.accelerator.num_processes, self.accelerator.process_index
        size, out = self.batch_size, []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for dataset in datasets.values():
                dataset = self.prepare_dataset(dataset)
                rows = self.select(dataset, max_batches, max_tokens)
                mine = [k for k in range(len(rows)) if (k // size) % processes == rank]
                blocks = [mine[k : k + size] for k in range(0, len(mine), size)]
                domain = DomainBatches(
                    [self.collator([dataset[rows[p]] for p in b]) for b in blocks], blocks, len(rows)
                )
                if shards_parameters(self.accelerator):  # every process must run as many forwards as the others
                    domain.batches += self._fillers(dataset, -(-len(rows) // (size * processes)) - len(blocks))
                out.append(domain)
        return out

    def select(self, dataset: Dataset, max_batches: int | None = None, max_tokens: int | None = None) -> list[int]:
        """The rows of `dataset` to evaluate, in order (see [`collate`])."""
        cap = (
            len(dataset)
            if max_batches is None
            else min(len(dataset), max_batches * self.batch_size * self.accelerator.num_processes)
        )
        if max_tokens is None:
            return list(range(cap))
        order = np.random.default_rng(SELECTION_SEED).permutation(len(dataset))[:cap].tolist()
        rows, tokens = [], 0
        for start in range(0, len(order), self.batch_size):  # label tokens counted a batch of candidates at a time
            group = order[start : start + self.batch_size]
            counts = self.label_counts(self.collator([dataset[r] for r in group])).tolist()
            for row, count in zip(group, counts, strict=True):
                if tokens >= max_tokens:
                    return rows
                rows.append(row)
                tokens += int(count)
        return rows

    def label_counts(self, batch: dict[str, Any]) -> torch.Tensor:
        """The label tokens of each row of a collated batch (after the causal shift)."""
        labels = batch.get("labels")
        if labels is None:
            raise ValueError(
                "The domain evaluation batches have no `labels`: use the training data collator's format."
            )
        return (labels[:, 1:] if self.task == "causal_lm" else labels).ne(-100).reshape(len(labels), -1).sum(1)

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
    def row_cross_entropy(
        self, model: torch.nn.Module, batch: dict[str, Any], teacher: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed token cross-entropy of `model` on each row of one batch (on this process's device), and each row's
        label tokens; on [`CrossTokenizerCollator`] batches, over the aligned spans, and each row's span bytes
        ([`span_cross_entropy`]; `teacher`: `model` reads the `teacher_` inputs)."""
        inputs = dict(batch)
        labels = inputs.pop("labels")
        for key in (DOMAIN_IDS, *PROMPT_KEYS):  # domain ids, prompts of prompt/completion data
            inputs.pop(key, None)
        if "span_rows" in inputs:
            return self.span_cross_entropy(model, inputs, labels, teacher)
        counts = self.label_counts(batch)
        with self.autocast():
            logits = model(**inputs).logits
        if self.task == "causal_lm":
            logits, labels = logits[:, :-1], labels[:, 1:]
        logits = logits[..., : self.vocab_size]
        sums = torch.stack([cross_entropy_loss(logits[i], labels[i], self.chunk_size) for i in range(len(labels))])
        return sums, counts

    def span_cross_entropy(
        self, model: torch.nn.Module, inputs: dict[str, Any], labels: torch.Tensor, teacher: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Across tokenizers, DDK compares bits per byte: the summed cross-entropy (nats) of one side's tokens inside the
        spans both tokenizations cover ([`align_row`]), and the UTF-8 bytes of those spans, per row: the same bytes for
        student and teacher, so `sum / bytes` of each is comparable (divided by `ln 2`: bits per byte). A BOS on one
        side or a different split does not change which characters count.
        """
        side = TEACHER_PREFIX if teacher else ""
        if teacher:
            labels = inputs["teacher_labels"]
            model_inputs = {
                k[len(side) :]: v for k, v in inputs.items() if k.startswith(side) and k != "teacher_labels"
            }
        else:
            model_inputs = {k: v for k, v in inputs.items() if not k.startswith(TEACHER_PREFIX)
                            and k not in (*ALIGNMENT_KEYS, MATCHED_VOCAB)}  # fmt: skip
        with self.autocast():
            logits = model(**model_inputs).logits[:, :-1]
        spans, rows = inputs[f"span_{'teacher' if teacher else 'student'}"], inputs["span_rows"]
        keep = spans >= 0
        nll = F.cross_entropy(logits[keep].float(), labels[:, 1:][keep], reduction="none").double()
        row_of = keep.nonzero(as_tuple=True)[0]
        sums = torch.zeros(len(labels), dtype=torch.float64, device=logits.device).index_add(0, row_of, nll)
        counts = torch.zeros(len(labels), dtype=torch.long, device=logits.device)
        return sums, counts.index_add(0, rows.to(counts.device), inputs["span_bytes"].to(counts.device))

    def token_cross_entropy(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed token cross-entropy of `model` on one batch (on this process's device), and its label tokens."""
        sums, counts = self.row_cross_entropy(model, batch)
        return sums.sum(), counts.sum()

    @torch.inference_mode()
    def block_losses(
        self, model: torch.nn.Module, batches: Batches, names: list[str], teacher: bool = False
    ) -> list[DomainEstimate]:
        """
        The token cross-entropy of `model` on each selected block of each domain ([`collate`]), gathered from all
        processes in the blocks' order (blocks without a label token left out); per byte on cross-tokenizer batches
        (`teacher`: `model` is the teacher, which reads its own `teacher_` inputs there).
        """
        device, width = self.accelerator.device, max((domain.selected for domain in batches), default=0)
        sums = torch.zeros(len(batches), width, 2, dtype=torch.float64, device=device)
        was_training = model.training
        model.eval()
        for i, domain in enumerate(batches):
            for k, batch in enumerate(domain.batches):
                loss, count = self.row_cross_entropy(model, send_to_device(batch, device), teacher)
                if k < len(domain.blocks):  # fillers count nothing
                    positions = torch.tensor(domain.blocks[k], device=device)
                    sums[i, positions, 0] = loss.double()
                    sums[i, positions, 1] = count.double()
        model.train(was_training)
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
        unit = "bytes" if any("span_rows" in b for domain in batches for b in domain.batches) else "tokens"
        estimates = []
        for i, (name, domain) in enumerate(zip(names, batches, strict=True)):
            values = sums[i, : domain.selected].cpu()
            kept = values[:, 1] > 0
            if not kept.any():
                raise ValueError(f"The evaluation data of domain {name!r} has no label tokens: fix its labels.")
            estimates.append(
                DomainEstimate(tuple(values[kept, 0].tolist()), tuple(int(c) for c in values[kept, 1].tolist()), unit)
            )
        return estimates

    def batch_losses(
        self, model: torch.nn.Module, batches: Batches, names: list[str], teacher: bool = False
    ) -> list[float]:
        """Mean token cross-entropy of `model` on each domain's batches ([`collate`]), over all processes."""
        return [estimate.mean for estimate in self.block_losses(model, batches, names, teacher)]

    def evaluate(
        self,
        model: torch.nn.Module,
        datasets: Mapping[str, Dataset] | None = None,
        max_batches: int | None = None,
        teacher: bool = False,
    ) -> dict[str, float]:
        """Mean token cross-entropy of `model` on each domain (`datasets`, or the validation sets); `teacher`: `model`
        reads the `teacher_` inputs of cross-tokenizer batches."""
        if datasets is None:
            if self.validation is None:
                raise ValueError("evaluate_domains needs `datasets` (no DDK validation sets to default to).")
            datasets = self.validation
        names = list(datasets)
        losses = self.batch_losses(model, self.collate(datasets, max_batches), names, teacher)
        return dict(zip(names, losses, strict=True))
