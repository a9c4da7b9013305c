"""Multi-domain text corpora for the recipes: loading (hub, files, a directory of per-domain files), duplicate
removal, held-out slices and tokenize-and-pack into fixed-length causal LM blocks, all with `datasets` / Arrow
operations (no Python list of the rows). The streaming side is in `recipe_tools.streaming`."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Value, concatenate_datasets, load_dataset

from ..ddk.data import domain_ids, filter_rows, split_by_domain, with_domain
from ..files import check_text_file, one_line
from ..long_texts import encode_texts

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _not_found(source: str, error: Exception) -> str:
    """Why `source`, neither a local path nor a loadable Hub dataset, could not be read: both are said, since
    `org/name` may be either (a folder of that first name here suggests a mistyped local path)."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    local = f"{os.path.abspath(source)!r} does not exist"
    head = source.split("/")[0]
    if "/" in source and os.path.isdir(head):
        local += f"; the folder {head!r} does: a mistyped path?"
    return f"source={source!r} is not a local file or folder ({local}) nor a loadable Hub dataset: {first_line}"


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or os.path.splitext(source)[1] in FILE_BUILDERS or source.count("/") > 1


def load_data_files(data_files: Mapping[str, str]) -> DatasetDict:
    """
    Local data files, one per split (`{"train": path, ...}`), read with the builder of the first file's type.

    Raises:
        `ValueError`: naming the file(s), for an unreadable, empty, non-UTF-8 or malformed file.
    """
    builder = FILE_BUILDERS[os.path.splitext(next(iter(data_files.values())))[1]]
    if builder != "parquet":
        for path in data_files.values():
            check_text_file(path)
    try:
        return load_dataset(builder, data_files=dict(data_files))
    except Exception as error:  # noqa: BLE001 - datasets raises many types (and StopIteration); name the file
        names = ", ".join(repr(path) for path in data_files.values())
        raise ValueError(f"{names} could not be read as {builder}: {one_line(error)}") from error


def _load_file(path: str) -> Dataset:
    """One local data file, which must hold rows (see [`load_data_files`])."""
    dataset = load_data_files({"train": path})["train"]
    if len(dataset) == 0:
        raise ValueError(f"{path!r} holds no rows.")
    return dataset


def load_domain_corpus(
    source: str,
    domain_column: str = "domain",
    text_column: str = "text",
    config_name: str | None = None,
    split: str = "train",
    data_files: str | list[str] | None = None,
) -> Dataset:
    """
    Load a multi-domain text corpus as one `Dataset` with a text column and a domain column.

    Args:
        source (`str`):
            A directory with one file per domain (`<domain>.jsonl|.json|.parquet|.csv`; the domain is the file name),
            a local file with a `domain_column`, or a hub dataset name with a `domain_column` (a nested field such as
            `meta.pile_set_name` is flattened).
        domain_column (`str`): The column holding each example's domain.
        text_column (`str`): The column holding the text.
        config_name (`str`, *optional*): Hub dataset configuration.
        split (`str`): Hub dataset split (slicing such as `train[:10%]` works).
        data_files (`str` or `list[str]`, *optional*): Restrict a hub dataset to these files (e.g. one shard).

    Returns:
        `Dataset`: with columns `text_column` and `domain_column` (domain names as strings) only.
    """
    expanded = os.path.expanduser(source)
    if os.path.isdir(expanded):
        files = sorted(f for f in os.listdir(expanded) if os.path.splitext(f)[1] in FILE_BUILDERS)
        if not files:
            raise ValueError(
                f"source={source!r} is a directory without data files: put one "
                f"{'/'.join(FILE_BUILDERS)} file per domain in it."
            )
        parts = []
        for name in files:
            part = _load_file(os.path.join(expanded, name))
            _check_column(part, text_column, "text_column", f"{source}/{name}")
            parts.append(with_domain(part.select_columns([text_column]), domain_column, os.path.splitext(name)[0]))
        return concatenate_datasets(parts)
    if os.path.isfile(expanded):
        if os.path.splitext(expanded)[1] not in FILE_BUILDERS:
            raise ValueError(f"source={source!r}: unknown file type; use one of {', '.join(FILE_BUILDERS)}.")
        dataset = _load_file(expanded)
    elif _looks_like_path(source):
        raise FileNotFoundError(
            f"source={source!r} does not exist: give an existing directory (one file per domain), a "
            ".jsonl/.json/.parquet/.csv file, or a hub dataset name."
        )
    elif not source.strip():
        raise ValueError(f"source={source!r} is empty: give a Hub dataset id, a data file or a directory.")
    else:
        try:
            dataset = load_dataset(source, config_name, split=split, data_files=data_files)
        except Exception as error:  # noqa: BLE001 - datasets raises many types; the user needs one line
            raise ValueError(_not_found(source, error)) from error
    if domain_column not in dataset.column_names and "." in domain_column:
        dataset = dataset.flatten()
    _check_column(dataset, domain_column, "domain_column", source)
    _check_column(dataset, text_column, "text_column", source)
    dataset = dataset.select_columns([text_column, domain_column])
    if dataset.features[domain_column].dtype != "string":
        dataset = dataset.cast_column(domain_column, Value("string"))
    return dataset


def _check_column(dataset: Dataset, column: str, field_name: str, source: str) -> None:
    """`column` is a column of `dataset` (read from `source`) with a value in every row; a text column holds text.

    Raises:
        `ValueError`: naming the field, the source and (for missing values) how many rows and the first one.
    """
    if column not in dataset.column_names:
        raise ValueError(
            f"{field_name}={column!r} is not a column of {source!r} (columns: {', '.join(dataset.column_names)}): "
            f"set {field_name} to one of them."
        )
    values = dataset.data.column(column)
    if values.null_count:
        first = pc.index(pc.is_null(values), True).as_py()
        line = {".jsonl": f" (line {first + 1})", ".csv": f" (line {first + 2}, after the header)"}
        where = line.get(os.path.splitext(source)[1], "")
        raise ValueError(
            f"{field_name}={column!r}: {values.null_count} of the {len(dataset)} rows of {source!r} have no value "
            f"(null or missing), the first is row {first}{where}: fill or remove them."
        )
    if field_name == "text_column" and dataset.features[column].dtype not in ("string", "large_string"):
        raise ValueError(
            f"{field_name}={column!r} of {source!r} holds {dataset.features[column].dtype} values, not text: set "
            f"{field_name} to the column with the texts."
        )


def text_digest(text: str) -> bytes:
    """The SHA-1 digest of a text (UTF-8): what duplicate removal compares."""
    return hashlib.sha1(text.encode("utf-8")).digest()


def deduplicate(dataset: Dataset, text_column: str = "text", num_proc: int | None = None) -> tuple[Dataset, int]:
    """
    Keep the first occurrence of each text (exact match, compared by SHA-1), so a held-out text cannot also be a
    training text. The digests are computed by `Dataset.map` (in `num_proc` processes) and the first row of each is
    found by an Arrow group-by: no Python list or set of the rows is built.

    Args:
        dataset (`Dataset`): The corpus.
        text_column (`str`): The text column.
        num_proc (`int`, *optional*): Processes for hashing (`Dataset.map`).

    Returns:
        `tuple[Dataset, int]`: the corpus without duplicates, and how many texts were removed.
    """

    def digests(batch: dict[str, list[Any]], rows: list[int]) -> dict[str, list[Any]]:
        return {"digest": [text_digest(text) for text in batch[text_column]], "row": rows}

    keys = dataset.map(
        digests, batched=True, with_indices=True, num_proc=num_proc, remove_columns=dataset.column_names,
        desc="hash texts",
    ).with_format("arrow")[:]  # fmt: skip
    first = keys.group_by("digest", use_threads=False).aggregate([("row", "min")])["row_min"]
    if len(first) == len(dataset):
        return dataset, 0
    repeats = pc.indices_nonzero(pc.invert(pc.is_in(keys["row"], value_set=first))).to_numpy()
    return filter_rows(dataset, repeats, exclude=True, num_proc=num_proc, desc="remove duplicates"), len(repeats)


def first_per_domain(dataset: Dataset, count: int, domain_column: str = "domain") -> Dataset:
    """The first `count` examples of each domain, in dataset order."""
    names, ids = domain_ids(dataset, domain_column)
    return filter_rows(dataset, np.concatenate([np.flatnonzero(ids == i)[:count] for i in range(len(names))]))


def hold_out(
    dataset: Dataset, size: int, domain_column: str = "domain", seed: int = 0, num_proc: int | None = None
) -> tuple[Dataset, dict[str, Dataset]]:
    """
    Hold out `size` random examples of every domain.

    The held-out examples of a domain are the first `size` of its examples shuffled by `seed` (the permutation
    `Dataset.shuffle(seed=seed)` uses); the training examples are all the others, in dataset order (a
    `Dataset.filter`, so no Python list of the rows is built).

    Args:
        dataset (`Dataset`): Examples with a `domain_column`.
        size (`int`): Examples held out per domain; each domain must keep at least one for training.
        domain_column (`str`): The domain column.
        seed (`int`): Seed of the per-domain shuffle.
        num_proc (`int`, *optional*): Processes for the training rows' filter.

    Returns:
        `tuple[Dataset, dict[str, Dataset]]`: the training examples (all domains) and the held-out ones per domain.
    """
    if size < 1:
        raise ValueError(f"size={size} must be at least 1 (examples held out per domain).")
    names, ids = domain_ids(dataset, domain_column)
    held_out, held_rows = {}, []
    for i, name in enumerate(names):
        rows = np.flatnonzero(ids == i)
        if len(rows) <= size:
            raise ValueError(
                f"Domain {name!r} has {len(rows)} examples, not more than size={size}: lower size or add data."
            )
        picked = rows[np.random.default_rng(seed).permutation(len(rows))[:size]]
        held_out[name] = dataset.select(picked)
        held_rows.append(picked)
    train = filter_rows(dataset, np.concatenate(held_rows), exclude=True, num_proc=num_proc, desc="training rows")
    return train, held_out


def pack_texts(
    dataset: Dataset,
    tokenizer: Any,
    block_size: int,
    text_column: str = "text",
    domain_column: str | None = "domain",
    num_proc: int | None = None,
) -> Dataset:
    """
    Tokenize texts (an end-of-sequence token after each) and cut the stream of each domain into `block_size` blocks.

    Blocks never mix domains; texts are read 1,000 at a time and the remainder of each such stream is dropped.
    Labels are the input ids (the model shifts them).

    Args:
        dataset (`Dataset`): Texts, with a `domain_column` unless it is `None`.
        tokenizer: A tokenizer; its `eos_token_id` separates texts when it has one.
        block_size (`int`): Tokens per block.
        text_column (`str`): The text column.
        domain_column (`str`, *optional*): The domain column, kept on the blocks.
        num_proc (`int`, *optional*): Processes for tokenization (`Dataset.map`).

    Returns:
        `Dataset`: columns `input_ids`, `attention_mask`, `labels` (and `domain_column`).
    """
    if block_size < 2:
        raise ValueError(f"block_size={block_size} must be at least 2.")
    eos = np.array([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [], dtype=np.int64)

    def blocks(batch: dict[str, list[Any]]) -> dict[str, Any]:
        ids = encode_texts(tokenizer, batch[text_column])
        stream = np.concatenate([np.empty(0, np.int64)] + [a for text in ids for a in (np.array(text, np.int64), eos)])
        cut = stream[: len(stream) // block_size * block_size].reshape(-1, block_size)  # the tail is dropped
        return {"input_ids": cut, "attention_mask": np.ones_like(cut), "labels": cut.copy()}

    parts = split_by_domain(dataset, domain_column, num_proc) if domain_column is not None else {None: dataset}
    packed = []
    for name, part in parts.items():
        part = part.map(
            blocks, batched=True, batch_size=1000, remove_columns=part.column_names, num_proc=num_proc,
            desc="tokenize and pack",
        )  # fmt: skip
        if len(part) == 0:
            where = f"domain {name!r}" if name is not None else "the dataset"
            raise ValueError(f"{where} has fewer than block_size={block_size} tokens: lower block_size or add data.")
        packed.append(with_domain(part, domain_column, name) if domain_column is not None else part)
    return concatenate_datasets(packed)
