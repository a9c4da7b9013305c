"""`TrainingDomains`: a training set's domains, checked against the settings, and the sampler (map-style data) or
stream (streaming sources) that mixes them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from datasets import ClassLabel, Dataset

from .data import DomainCollator, concatenate_domains, domain_ids, split_by_domain
from .mixture import DomainMixture
from .sampler import DomainWeightedSampler
from .stream import DomainStream
from .update import check_weight_bounds


class TrainingDomains:
    """
    The domains of a multi-domain training set: their names, each example's domain, the held-out validation sets
    DDK measures on, and what draws the training examples: the [`DomainWeightedSampler`] of a map-style set, or the
    [`DomainStream`]'s own mixture.

    Build it with [`TrainingDomains.from_data`], which checks the data against the settings before anything is
    trained (and returns `None` for a training set without domains).

    Args:
        train_dataset (`Dataset` or [`DomainStream`]): The training set, with `column` when map-style.
        column (`str`): The column naming each example's domain.
        initial_weights (`dict[str, float]`, *optional*): The initial mixture `r_0` (uniform when `None`).
        validation (`dict[str, Dataset]`, *optional*): Held-out data per domain (DDK).
    """

    def __init__(
        self,
        train_dataset: Dataset | DomainStream,
        column: str,
        initial_weights: Mapping[str, float] | None = None,
        validation: Mapping[str, Dataset] | None = None,
    ):
        self.train_dataset, self.column = train_dataset, column
        self.stream = train_dataset if isinstance(train_dataset, DomainStream) else None
        if self.stream is not None:
            self.names, self.label_ids, self.class_names = list(self.stream.domain_names), None, None
        else:
            self.names, self.label_ids = domain_ids(train_dataset, column)  # read from Arrow, no list of labels
            feature = train_dataset.features[column]
            self.class_names = feature.names if isinstance(feature, ClassLabel) else None
        self.initial_weights = dict(initial_weights) if initial_weights is not None else None
        self.validation = dict(validation) if validation is not None else None
        self.sampler: DomainMixture | None = None

    @classmethod
    def from_data(
        cls,
        args: Any,
        train_dataset: Any,
        ddk_eval_dataset: Dataset | Mapping[str, Dataset] | None,
        eval_dataset: Any,
    ) -> tuple[Any, TrainingDomains | None]:
        """
        Check the domain settings of `args` (a [`DistillationConfig`]) against the data.

        Returns:
            `(train_dataset, domains)`: the training set (a mapping of domain -> dataset is concatenated with a
            `column`), and its domains, or `None` when it has none.
        """
        column, initial_weights = args.domain_column, args.initial_domain_weights
        if isinstance(train_dataset, Mapping):
            train_dataset = concatenate_domains(train_dataset, column)
        if isinstance(train_dataset, DomainStream):
            cls._check_stream(args)
        elif not (isinstance(train_dataset, Dataset) and column in train_dataset.column_names):
            if args.ddk_update_steps is not None or initial_weights is not None:
                raise ValueError(
                    f"DistillationConfig.ddk_update_steps={args.ddk_update_steps} / ddk_initial_weights="
                    f"{args.ddk_initial_weights!r} need a training set with domains, but train_dataset has no "
                    f"{column!r} column: add one, set domain_column, or pass a dict of domain name -> dataset."
                )
            return train_dataset, None
        domains = cls(train_dataset, column, initial_weights)
        domains._check_initial_weights()
        if args.ddk_update_steps is not None:
            if not args.uses_teacher:
                raise ValueError(
                    f"DistillationConfig.ddk_update_steps={args.ddk_update_steps}: DDK compares the student with the "
                    "teacher, but no term uses the teacher (gamma, hidden_weight and attention_weight are 0)."
                )
            domains.validation = domains._validation_sets(ddk_eval_dataset, eval_dataset)
            domains._check_bounds(args.ddk_min_weight, args.ddk_max_weight)
        return train_dataset, domains

    @staticmethod
    def _check_stream(args: Any) -> None:
        """A [`DomainStream`] has no length and is drawn in the training process."""
        if args.max_steps is None or args.max_steps <= 0:
            raise ValueError(
                f"DistillationConfig.max_steps={args.max_steps}: a DomainStream training set has no length, so "
                "training needs a number of optimizer steps: set max_steps (e.g. max_steps=1000)."
            )
        if args.dataloader_num_workers:
            raise ValueError(
                f"DistillationConfig.dataloader_num_workers={args.dataloader_num_workers}: a DomainStream is read in "
                "the training process (so that DDK's new weights apply to the next draw): set "
                "dataloader_num_workers=0."
            )
        if getattr(args, "teacher_cache", None) is not None:
            raise ValueError(
                f"DistillationConfig.teacher_cache={args.teacher_cache!r} holds the teacher's outputs for the rows of "
                "a map-style dataset; a DomainStream has no rows: run the live teacher (unset teacher_cache) or "
                "train on the cached dataset."
            )

    def _check_initial_weights(self) -> None:
        initial, names = self.initial_weights, self.names
        if initial is None:
            return
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

    def _check_bounds(self, low: float, high: float) -> None:
        """DDK's weight bounds must admit a mixture of these domains, the initial one included."""
        try:
            check_weight_bounds(low, high, len(self.names))
        except ValueError as error:
            raise ValueError(f"DistillationConfig.ddk_min_weight={low} / ddk_max_weight={high}: {error}") from None
        outside = {n: w for n, w in (self.initial_weights or {}).items() if not low <= w <= high}
        if outside:
            raise ValueError(
                f"DistillationConfig.ddk_initial_weights gives {outside}, outside ddk_min_weight={low} / "
                f"ddk_max_weight={high}: start from weights within the bounds (or widen them)."
            )

    def _validation_sets(self, ddk_eval_dataset: Any, eval_dataset: Any) -> dict[str, Dataset]:
        names, column, source = self.names, self.column, ddk_eval_dataset
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

    def collator(self, collator: Any) -> DomainCollator:
        """`collator` wrapped so that batches carry the domain ids (`domain_ids`)."""
        return DomainCollator(collator, self.column, self.names, self.class_names)

    def _initial(self) -> list[float] | None:
        initial = self.initial_weights
        return None if initial is None else [initial[name] for name in self.names]

    def new_sampler(self, seed: int) -> DomainWeightedSampler:
        """A fresh sampler at the initial mixture (one per training run); it becomes `self.sampler`."""
        self.sampler = DomainWeightedSampler.from_ids(self.label_ids, self.names, self._initial(), seed=seed)
        return self.sampler

    def start_stream(self, seed: int, rank: int, processes: int, batch_size: int) -> DomainMixture:
        """Start the [`DomainStream`] for a training run at the initial mixture; its mixture becomes `self.sampler`."""
        self.sampler = self.stream.start(seed, self._initial(), rank, processes, batch_size, self.column)
        return self.sampler

    def shares(self, domain_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """The share of each domain in a batch, keyed `domain_share/<domain>`."""
        share = torch.bincount(domain_ids.clamp_min(0), minlength=len(self.names)) / domain_ids.numel()
        return {f"domain_share/{name}": value for name, value in zip(self.names, share, strict=True)}
