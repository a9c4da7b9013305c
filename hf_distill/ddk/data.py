"""Multi-domain datasets and the collator that carries domain ids through the Trainer."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import ClassLabel, Dataset, concatenate_datasets

DOMAIN_IDS = "domain_ids"
_ARROW_LABELS = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer)


def domain_labels(dataset: Dataset, domain_column: str) -> list[str]:
    """The domain name of each example (`ClassLabel` ids are turned into their names, other values into `str`)."""
    feature = dataset.features[domain_column]
    values = dataset[domain_column]
    if isinstance(feature, ClassLabel):
        return [feature.int2str(int(v)) for v in values]
    return [str(v) for v in values]


def _arrow_batches(dataset: Dataset, column: str, batch_size: int = 8192) -> Iterator[Any]:
    """The values of one column, a batch at a time, as Arrow arrays (through any indices mapping, without the
    Python list of all row numbers that reading the whole column of an indexed dataset builds)."""
    for batch in dataset.select_columns([column]).with_format("arrow").iter(batch_size=batch_size):
        yield batch[column]


def domain_ids(dataset: Dataset, domain_column: str) -> tuple[list[str], np.ndarray]:
    """
    The domains of a dataset, read from its Arrow column a batch at a time (no Python list of the labels).

    Returns:
        `tuple[list[str], np.ndarray]`: the sorted distinct domain names (`ClassLabel` ids as their names, other
        values as `str`), and each example's index into them.
    """
    feature = dataset.features[domain_column]
    if isinstance(feature, ClassLabel):
        batches = (b.to_numpy().astype(np.int64) for b in _arrow_batches(dataset, domain_column))
        values = np.concatenate([np.empty(0, dtype=np.int64), *batches])
        present = np.unique(values)
        names = sorted(feature.int2str(int(v)) for v in present)
        lookup = np.full(feature.num_classes, -1, dtype=np.int64)
        for value in present:
            lookup[value] = names.index(feature.int2str(int(value)))
        return names, lookup[values]
    if not any(is_type(dataset.data.schema.field(domain_column).type) for is_type in _ARROW_LABELS):
        labels = domain_labels(dataset, domain_column)  # rare label types: str() of each value, as before
        names = sorted(set(labels))
        index = {name: i for i, name in enumerate(names)}
        return names, np.fromiter((index[label] for label in labels), dtype=np.int64, count=len(labels))
    found: set[str] = set()
    for batch in _arrow_batches(dataset, domain_column):
        found.update(pc.unique(pc.cast(batch, pa.string())).to_pylist())
    names = sorted(found)
    value_set = pa.array(names, pa.string())
    ids = [
        pc.index_in(pc.cast(batch, pa.string()), value_set=value_set).to_numpy()
        for batch in _arrow_batches(dataset, domain_column)
    ]
    return names, np.concatenate([np.empty(0, dtype=np.int32), *ids])


def with_domain(dataset: Dataset, domain_column: str, name: str) -> Dataset:
    """`dataset` with a `domain_column` holding `name` in every row (an Arrow array: no Python list of rows)."""
    if domain_column in dataset.column_names:
        dataset = dataset.remove_columns(domain_column)
    column = pa.repeat(pa.scalar(str(name), pa.string()), len(dataset))
    fingerprint = hashlib.sha256(f"{dataset._fingerprint}|{domain_column}|{name}".encode()).hexdigest()[:32]
    return dataset.add_column(domain_column, column, new_fingerprint=fingerprint)


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
        parts.append(with_domain(dataset, domain_column, name))
    if not parts:
        raise ValueError("The mapping of domains is empty.")
    return concatenate_datasets(parts)


def filter_rows(
    dataset: Dataset, rows: np.ndarray, exclude: bool = False, num_proc: int | None = None, desc: str | None = None
) -> Dataset:
    """
    The rows of `dataset` whose numbers are in `rows` (or, with `exclude`, all the others), in dataset order, by
    `Dataset.filter` (in `num_proc` processes): unlike `Dataset.select`, which turns its indices into a Python list,
    nothing of the size of the dataset is built in Python.
    """
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    digest = hashlib.sha256(f"{dataset._fingerprint}|{exclude}".encode())
    digest.update(memoryview(rows))  # the new fingerprint, without pickling `rows` as `datasets` would

    def kept(batch_rows: list[int]) -> np.ndarray:
        batch_rows = np.asarray(batch_rows, dtype=np.int64)
        found = np.zeros(len(batch_rows), dtype=bool)
        if len(rows):
            found = rows[np.minimum(np.searchsorted(rows, batch_rows), len(rows) - 1)] == batch_rows
        return ~found if exclude else found

    return dataset.filter(
        kept, with_indices=True, batched=True, input_columns=[], num_proc=num_proc, desc=desc,
        new_fingerprint=digest.hexdigest()[:32],
    )  # fmt: skip


def split_by_domain(
    dataset: Dataset | Mapping[str, Dataset], domain_column: str = "domain", num_proc: int | None = None
) -> dict[str, Dataset]:
    """
    Split a dataset with a `domain_column` (or take a mapping as is) into `domain name -> Dataset`.

    Args:
        dataset (`Dataset` or `Mapping[str, Dataset]`): The examples of every domain.
        domain_column (`str`): The column holding each example's domain.
        num_proc (`int`, *optional*): Processes for the split (`Dataset.filter`, one pass per domain).

    Returns:
        `dict[str, Dataset]`: One dataset per domain (its rows in dataset order), in sorted name order.
    """
    if isinstance(dataset, Mapping):
        return {str(name): dataset[name] for name in sorted(dataset, key=str)}
    if domain_column not in dataset.column_names:
        raise ValueError(
            f"The dataset has no {domain_column!r} column (columns: {dataset.column_names}): add one, set "
            "domain_column, or pass a dict of domain name -> dataset."
        )
    names, ids = domain_ids(dataset, domain_column)
    if len(names) == 1:
        return {names[0]: dataset}
    return {
        name: filter_rows(dataset, np.flatnonzero(ids == i), num_proc=num_proc, desc=f"domain {name}")
        for i, name in enumerate(names)
    }


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
