"""Streaming multi-domain corpora for the recipes: one lazily read source per domain (a file, or a folder of shards),
and held-out texts taken from the head of each source and kept out of its training stream."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from datasets import Dataset, IterableDataset, load_dataset
from transformers.utils import logging

from ..files import check_text_file, one_line
from .corpus import FILE_BUILDERS, text_digest

logger = logging.get_logger(__name__)


# the attribute holding (builder, files) of a source made by `stream_domain_sources`, to name a bad row's shard
FILES_ATTRIBUTE = "_hf_distill_files"


def _shards(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if os.path.splitext(f)[1] in FILE_BUILDERS)


def _check_first_row(path: str, builder: str, text_column: str, where: str) -> None:
    """The first row of one shard holds a text (a shard of another layout would stop training when it is reached)."""
    try:
        first = next(iter(load_dataset(builder, data_files=[path], split="train", streaming=True).take(1)), None)
    except Exception as error:  # noqa: BLE001 - datasets / pyarrow raise many types: name the shard
        raise ValueError(f"{where} could not be read: {one_line(error)}") from None
    if first is None:
        raise ValueError(f"{where} has no rows.")
    if not isinstance(first.get(text_column), str):
        raise ValueError(
            f"{where}: its first row has no text (text_column={text_column!r} is {first.get(text_column)!r}; "
            f"columns: {', '.join(first)}): fill or remove it."
        )


def stream_domain_sources(source: str, text_column: str = "text") -> dict[str, IterableDataset]:
    """
    One streaming source per domain, read lazily (`load_dataset(..., streaming=True)`: nothing is materialised).

    Args:
        source (`str`): A directory with, per domain, a file `<domain>.jsonl|.json|.parquet|.csv` or a folder
            `<domain>/` of shards of one of those types (each shard is a unit that processes split among them).
        text_column (`str`): The column holding the text (checked on the first row of each shard).

    Returns:
        `dict[str, IterableDataset]`: the text column of each domain's examples, by domain name.
    """
    folder = os.path.expanduser(source)
    if not os.path.isdir(folder):
        raise ValueError(
            f"source={source!r}: streaming reads one source per domain: give a directory with one "
            f"{'/'.join(FILE_BUILDERS)} file, or one folder of such shards, per domain."
        )
    files: dict[str, list[str]] = {}
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if os.path.isdir(path) and _shards(path):
            files[entry] = _shards(path)
        elif os.path.splitext(entry)[1] in FILE_BUILDERS:
            files[os.path.splitext(entry)[0]] = [path]
    if not files:
        raise ValueError(
            f"source={source!r} holds no data files: put one {'/'.join(FILE_BUILDERS)} file, or one folder of "
            "such shards, per domain in it."
        )
    sources = {}
    for name, paths in files.items():
        builders = {FILE_BUILDERS[os.path.splitext(path)[1]] for path in paths}
        if len(builders) > 1:
            raise ValueError(f"Domain {name!r} of source={source!r} mixes file types {sorted(builders)}: use one.")
        builder = builders.pop()
        if builder != "parquet":  # one read at disk speed, so a bad byte is found now, not hours into training
            for path in paths:
                try:
                    check_text_file(path)
                except ValueError as error:
                    raise ValueError(f"Domain {name!r} of source={source!r}: {error}") from None
        for path in paths:  # each shard must be readable and start with a text (found now, not mid-training)
            _check_first_row(path, builder, text_column, f"Domain {name!r} of source={source!r}: shard {path!r}")
        stream = load_dataset(builder, data_files=paths, split="train", streaming=True)
        sources[name] = stream.select_columns([text_column])
        setattr(sources[name], FILES_ATTRIBUTE, (builder, paths))
    return sources


def hold_out_stream(
    sources: dict[str, IterableDataset], size: int, text_column: str = "text"
) -> tuple[dict[str, IterableDataset], dict[str, Dataset]]:
    """
    Hold out the first `size` distinct texts of each domain's stream, and filter every occurrence of them out of
    that domain's training stream (compared by SHA-1, as [`deduplicate`] does): no held-out text is trained on.

    Returns:
        `tuple[dict[str, IterableDataset], dict[str, Dataset]]`: the training streams and the held-out texts.
    """
    if size < 1:
        raise ValueError(f"size={size} must be at least 1 (texts held out per domain).")
    train, held_out = {}, {}
    for name, stream in sources.items():
        texts: list[str] = []
        digests: set[bytes] = set()
        for index, row in enumerate(_rows(stream, name)):
            if not isinstance(row[text_column], str):
                raise ValueError(
                    f"Domain {name!r}: {_where(stream, index)} has no text (text_column={text_column!r} is "
                    f"{row[text_column]!r}): fill or remove it."
                )
            digest = text_digest(row[text_column])
            if digest not in digests:
                digests.add(digest)
                texts.append(row[text_column])
                if len(texts) == size:
                    break
        if len(texts) < size:
            raise ValueError(
                f"Domain {name!r} has {len(texts)} distinct texts, fewer than the {size} to hold out per domain "
                "(validation_size, + ddk_validation_size with DDK): lower them or give the domain more texts."
            )
        held_out[name] = Dataset.from_dict({text_column: texts})
        train[name] = stream.filter(_not_in(frozenset(digests), name), input_columns=text_column)
        if next(iter(train[name].take(1)), None) is None:
            raise ValueError(
                f"Domain {name!r}: every one of its texts is held out ({len(texts)} distinct), so it has nothing to "
                "train on: lower validation_size (and ddk_validation_size) or give the domain more texts."
            )
    return train, held_out


def _rows(stream: IterableDataset, name: str) -> Iterator[dict[str, Any]]:
    """The rows of a domain's stream; a row the reader cannot read (another schema, broken JSON) is a `ValueError`
    naming the domain, the shard and the row."""
    index, rows = 0, iter(stream)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as error:  # noqa: BLE001 - datasets / pyarrow raise many types: name the row
            raise ValueError(
                f"Domain {name!r}: {_where(stream, index)} could not be read: {one_line(error)}"
            ) from None
        yield row
        index += 1


def _where(stream: IterableDataset, index: int) -> str:
    """Row `index` of a domain's stream, as the shard file and row in it when the stream's files are known."""
    builder, paths = getattr(stream, FILES_ATTRIBUTE, (None, []))
    row = index
    for path in paths:
        rows = sum(1 for _ in load_dataset(builder, data_files=[path], split="train", streaming=True))
        if row < rows:
            line = f", line {row + 1}" if path.endswith(".jsonl") else ""
            return f"row {row} of shard {path!r}{line}"
        row -= rows
    return f"row {index} of its stream"


def _not_in(digests: frozenset[bytes], domain: str) -> Any:
    """The training-stream filter of `domain`: drops the held-out texts, and rows without text (with one warning:
    found mid-training, they are skipped rather than stopping the run)."""
    warned = False

    def keep(text: Any) -> bool:
        nonlocal warned
        if not isinstance(text, str):
            if not warned:
                logger.warning(f"Domain {domain!r}: a training row has no text ({text!r}); such rows are skipped.")
                warned = True
            return False
        return text_digest(text) not in digests

    return keep
