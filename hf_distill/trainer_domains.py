"""Multi-domain training glue for `DistillationTrainer`: domain columns, the weighted sampler and DDK."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from datasets import ClassLabel, Dataset
from transformers.utils import logging

from .config import DistillationConfig
from .data import DOMAIN_IDS, DomainCollator, concatenate_domains, domain_labels, split_by_domain
from .domains import DDKCallback, DomainWeightedSampler
from .losses import cross_entropy_loss

logger = logging.get_logger(__name__)


class DomainTrainingMixin:
    """
    Adds multi-domain training to a `transformers.Trainer`: a training set with a domain column (or a dict of
    domain name -> dataset) is sampled by a [`DomainWeightedSampler`], the domain column survives
    `remove_unused_columns` and reaches `compute_loss` as `domain_ids`, and with `ddk_update_steps` a [`DDKCallback`]
    re-weights the mixture, its state saved in checkpoints and restored on resume.
    """

    domain_names: list[str] | None = None
    domain_sampler: DomainWeightedSampler | None = None
    ddk_callback: DDKCallback | None = None

    def _prepare_domains(
        self,
        args: DistillationConfig,
        train_dataset: Any,
        ddk_eval_dataset: Dataset | Mapping[str, Dataset] | None,
        eval_dataset: Any,
    ) -> Any:
        """Check the domain settings against the data before anything is built; returns the training set."""
        column = args.domain_column
        if ddk_eval_dataset is not None and args.ddk_update_steps is None:
            logger.warning("ddk_eval_dataset is ignored: DDK is off (set ddk_update_steps to turn it on).")
        if isinstance(train_dataset, Mapping):
            train_dataset = concatenate_domains(train_dataset, column)
        has_domains = isinstance(train_dataset, Dataset) and column in train_dataset.column_names
        initial = args.initial_domain_weights
        if not has_domains:
            if args.ddk_update_steps is not None or initial is not None:
                raise ValueError(
                    f"DistillationConfig.ddk_update_steps={args.ddk_update_steps} / ddk_initial_weights="
                    f"{args.ddk_initial_weights!r} need a training set with domains, but train_dataset has no "
                    f"{column!r} column: add one, set domain_column, or pass a dict of domain name -> dataset."
                )
            return train_dataset
        self._domain_labels = domain_labels(train_dataset, column)
        feature = train_dataset.features[column]
        self._domain_class_names = feature.names if isinstance(feature, ClassLabel) else None
        names = sorted(set(self._domain_labels))
        self.domain_names = names
        if initial is not None:
            unknown, missing = sorted(set(initial) - set(names)), sorted(set(names) - set(initial))
            if unknown:
                raise ValueError(
                    f"DistillationConfig.ddk_initial_weights names domains {unknown} that have no training data; "
                    f"the training set has {names}: fix the names or add those domains' data."
                )
            if missing:
                raise ValueError(
                    f"DistillationConfig.ddk_initial_weights gives no weight to domains {missing}: give one weight "
                    f"per domain of {names}."
                )
        if args.ddk_update_steps is not None:
            if not args.uses_teacher:
                raise ValueError(
                    f"DistillationConfig.ddk_update_steps={args.ddk_update_steps}: DDK compares the student with the "
                    "teacher, but no term uses the teacher (gamma, hidden_weight and attention_weight are 0)."
                )
            self._ddk_eval_sets = self._domain_validation_sets(names, column, ddk_eval_dataset, eval_dataset)
        return train_dataset

    @staticmethod
    def _domain_validation_sets(
        names: list[str], column: str, ddk_eval_dataset: Any, eval_dataset: Any
    ) -> dict[str, Dataset]:
        source = ddk_eval_dataset
        if source is None and isinstance(eval_dataset, Mapping) and set(eval_dataset) == set(names):
            source = eval_dataset
        if source is None and isinstance(eval_dataset, Dataset) and column in eval_dataset.column_names:
            source = eval_dataset
        if source is None:
            raise ValueError(
                "DDK needs held-out data of every domain: pass ddk_eval_dataset= (a Dataset with a "
                f"{column!r} column or a dict of domain name -> Dataset) to DistillationTrainer."
            )
        sets = split_by_domain(source, column)
        unknown = sorted(set(sets) - set(names))
        if unknown:
            raise ValueError(
                f"ddk_eval_dataset has domains {unknown} with no training data (training domains: {names}): "
                "remove them or add their training data."
            )
        missing = [name for name in names if name not in sets or len(sets[name]) == 0]
        if missing:
            raise ValueError(
                f"Domains {missing} have no validation data in ddk_eval_dataset: DDK needs held-out examples of "
                "every training domain."
            )
        return sets

    def _attach_domains(self) -> None:
        """After `Trainer.__init__`: carry domain ids through the collator and register the DDK callback."""
        if self.domain_names is None:
            return
        self.data_collator = DomainCollator(
            self.data_collator, self.args.domain_column, self.domain_names, self._domain_class_names
        )
        if self.args.ddk_update_steps is not None:
            self.ddk_callback = DDKCallback(self, self._ddk_eval_sets)
            self.add_callback(self.ddk_callback)

    # ---- used by compute_loss and DDKCallback ----------------------------------------------------------------

    def _record_domain_share(self, domain_ids: torch.Tensor) -> None:
        """Log the share of each domain in a training batch (`domain_share/<domain>`)."""
        share = torch.bincount(domain_ids.clamp_min(0), minlength=len(self.domain_names)) / domain_ids.numel()
        for name, value in zip(self.domain_names, share, strict=True):
            self._metrics["train"][f"domain_share/{name}"].append(value)

    @torch.no_grad()
    def token_cross_entropy(self, model: torch.nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Summed token cross-entropy of `model` (student or teacher) on a batch, and the number of label tokens.

        Used by [`DDKCallback`] for the per-domain losses `l_S` and `l_T`; logits are compared on the shared
        vocabulary when the models' vocabularies differ by padding rows.

        Returns:
            `tuple[torch.Tensor, torch.Tensor]`: the float32 sum and the count.
        """
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        if labels is None:
            raise ValueError("The DDK validation batches have no `labels`: use the training data collator's format.")
        inputs.pop(DOMAIN_IDS, None)
        with self.compute_loss_context_manager():
            logits = model(**inputs).logits
        if self.task == "causal_lm":
            logits, labels = logits[:, :-1], labels[:, 1:]
        logits = logits[..., : self.vocab_size]
        return cross_entropy_loss(logits, labels, self.args.logit_chunk_size), labels.ne(-100).sum()

    def collate_domain_batches(
        self, datasets: Mapping[str, Dataset], max_batches: int | None = None
    ) -> list[list[dict[str, Any]]]:
        """
        Collate this process's share of each domain's evaluation examples (the first `max_batches` batches of
        `per_device_eval_batch_size` per process, or all), domain by domain, with a fixed seed that leaves the
        training RNG untouched (random collators such as MLM masking).
        """
        size, processes = self.args.per_device_eval_batch_size, self.accelerator.num_processes
        rank = self.accelerator.process_index
        batches = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.args.seed)
            for dataset in datasets.values():
                dataset = self._remove_unused_columns(dataset, description="domain evaluation")
                take = len(dataset) if max_batches is None else min(len(dataset), max_batches * size * processes)
                rows = [i for i in range(take) if (i // size) % processes == rank]
                batches.append(
                    [self.data_collator([dataset[i] for i in rows[k : k + size]]) for k in range(0, len(rows), size)]
                )
        return batches

    @torch.no_grad()
    def domain_token_losses(
        self, model: torch.nn.Module, batches: list[list[dict[str, Any]]], names: list[str]
    ) -> list[float]:
        """Mean token cross-entropy of `model` on each domain's batches ([`collate_domain_batches`]), summed over
        all processes in float64."""
        sums = torch.zeros(len(batches), 2, dtype=torch.float64, device=self.args.device)
        was_training = model.training
        model.eval()
        for i, domain_batches in enumerate(batches):
            for batch in domain_batches:
                loss, count = self.token_cross_entropy(model, self._prepare_inputs(batch))
                sums[i, 0] += loss.double()
                sums[i, 1] += count
        model.train(was_training)
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
        for name, count in zip(names, sums[:, 1].tolist(), strict=True):
            if count == 0:
                raise ValueError(f"The evaluation data of domain {name!r} has no label tokens: fix its labels.")
        return (sums[:, 0] / sums[:, 1]).tolist()

    def evaluate_domains(
        self,
        model: torch.nn.Module | None = None,
        datasets: Mapping[str, Dataset] | None = None,
        max_batches: int | None = None,
    ) -> dict[str, float]:
        """
        Mean token cross-entropy of a model on each domain's held-out data (`exp` of it is the perplexity).

        Args:
            model (`torch.nn.Module`, *optional*): The student (default), the teacher or any model with the same
                inputs.
            datasets (`Mapping[str, Dataset]`, *optional*): Data per domain (tokenized, with labels); defaults to the
                DDK validation sets.
            max_batches (`int`, *optional*): Batches of `per_device_eval_batch_size` per process and domain; all by
                default.

        Returns:
            `dict[str, float]`: domain name -> mean token cross-entropy over all processes.
        """
        if datasets is None:
            datasets = getattr(self, "_ddk_eval_sets", None)
            if datasets is None:
                raise ValueError("evaluate_domains needs `datasets` (no DDK validation sets to default to).")
        names = list(datasets)
        losses = self.domain_token_losses(
            self.model if model is None else model, self.collate_domain_batches(datasets, max_batches), names
        )
        return dict(zip(names, losses, strict=True))

    # ---- Trainer hooks ---------------------------------------------------------------------------------------

    def _set_signature_columns_if_needed(self) -> None:
        """Also keep the columns the collator reads (`required_columns`: the domain, DSG-KD's raw text)."""
        super()._set_signature_columns_if_needed()
        for column in getattr(self.data_collator, "required_columns", ()):
            if column not in self._signature_columns:
                self._signature_columns.append(column)

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        if self.domain_names is None:
            return super()._get_train_sampler(train_dataset)
        if self.args.train_sampling_strategy != "random":
            logger.warning(
                f"train_sampling_strategy={self.args.train_sampling_strategy!r} is ignored: the training set has "
                "domains, so examples are drawn by the DomainWeightedSampler."
            )
        initial = self.args.initial_domain_weights
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        self.domain_sampler = DomainWeightedSampler(
            self._domain_labels,
            None if initial is None else [initial[name] for name in self.domain_names],
            seed=seed,
            domain_names=self.domain_names,
        )
        return self.domain_sampler

    def _load_callback_state(self) -> None:
        """Restore the DDK state (always: the data stream depends on it), then the Trainer's callback states."""
        saved = self.state.stateful_callbacks
        ddk_state = saved.pop(DDKCallback.__name__, None)
        try:
            super()._load_callback_state()
        finally:
            if ddk_state is not None:
                saved[DDKCallback.__name__] = ddk_state
        if self.ddk_callback is not None:
            if ddk_state is None:
                raise ValueError(
                    "The checkpoint has no DDK state (DDKCallback in trainer_state.json), but this run uses DDK: "
                    "resume from a checkpoint written with the same ddk_update_steps setting."
                )
            self.ddk_callback.load_state(ddk_state)
