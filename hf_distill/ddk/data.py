"""Multi-domain datasets and the collator that carries domain ids through the Trainer."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from datasets import ClassLabel, Dataset, concatenate_datasets

DOMAIN_IDS = "domain_ids"


def domain_labels(dataset: Dataset, domain_column: str) -> list[str]:
    """The domain name of each example (`ClassLabel` ids are turned into their names, other values into `str`)."""
    feature = dataset.features[domain_column]
    values = dataset[domain_column]
    if isinstance(feature, ClassLabel):
        return [feature.int2str(int(v)) for v in values]
    return [str(v) for v in values]


def concatenate_domains(domains: Mapping[str, Dataset], domain_column: str = "domain") -> Dataset:
    """
    Concatenate a mapping `domain name -> Dataset` into one dataset with a `domain_column`.

    Args:
        domains (`Mapping[str, Dataset]`): The datasets of each domain (same columns).
        domain_column (`str`): Name of the added column.

    Returns:
        `Dataset`: All examples, domain by domain.
    """
    parts = []
    for name, dataset in domains.items():
        if not isinstance(dataset, Dataset):
            raise TypeError(f"Domain {name!r}: expected a datasets.Dataset, got {type(dataset).__name__}.")
        if len(dataset) == 0:
            raise ValueError(f"Domain {name!r} has no examples: add some or remove the domain.")
        if domain_column in dataset.column_names:
            dataset = dataset.remove_columns(domain_column)
        parts.append(dataset.add_column(domain_column, [str(name)] * len(dataset)))
    if not parts:
        raise ValueError("The mapping of domains is empty.")
    return concatenate_datasets(parts)


def split_by_domain(dataset: Dataset | Mapping[str, Dataset], domain_column: str = "domain") -> dict[str, Dataset]:
    """
    Split a dataset with a `domain_column` (or take a mapping as is) into `domain name -> Dataset`.

    Args:
        dataset (`Dataset` or `Mapping[str, Dataset]`): The examples of every domain.
        domain_column (`str`): The column holding each example's domain.

    Returns:
        `dict[str, Dataset]`: One dataset per domain, in sorted name order.
    """
    if isinstance(dataset, Mapping):
        return {str(name): dataset[name] for name in sorted(dataset, key=str)}
    if domain_column not in dataset.column_names:
        raise ValueError(
            f"The dataset has no {domain_column!r} column (columns: {dataset.column_names}): add one, set "
            "domain_column, or pass a dict of domain name -> dataset."
        )
    labels = domain_labels(dataset, domain_column)
    rows: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        rows.setdefault(label, []).append(i)
    return {name: dataset.select(rows[name]) for name in sorted(rows)}


class DomainCollator:
    """
    Wraps a data collator: removes the domain column from each example, collates the rest with `collator`, and adds
    the domain ids (index in `domain_names`, -1 for an unknown domain) as `batch["domain_ids"]`.

    Args:
        collator (`Callable`): The collator of the other columns.
        domain_column (`str`): The column holding each example's domain.
        domain_names (`Sequence[str]`): The domains, in id order.
        class_names (`Sequence[str]`, *optional*): Names of the column's `ClassLabel` ids, when it is one.
    """

    def __init__(
        self,
        collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
        domain_column: str,
        domain_names: Sequence[str],
        class_names: Sequence[str] | None = None,
    ):
        self.collator = collator
        self.domain_column = domain_column
        self.ids = {name: i for i, name in enumerate(domain_names)}
        self.class_names = list(class_names) if class_names is not None else None

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Dataset columns this collator reads (kept by the trainer through `remove_unused_columns`)."""
        return (self.domain_column, *getattr(self.collator, "required_columns", ()))

    def _id(self, value: Any) -> int:
        name = self.class_names[int(value)] if self.class_names is not None else str(value)
        return self.ids.get(name, -1)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features or self.domain_column not in features[0]:
            return self.collator(features)
        ids = [self._id(f[self.domain_column]) for f in features]
        batch = self.collator([{k: v for k, v in f.items() if k != self.domain_column} for f in features])
        batch[DOMAIN_IDS] = torch.tensor(ids, dtype=torch.long)
        return batch
