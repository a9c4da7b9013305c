"""Streaming multi-domain corpora for the recipes: one lazily read source per domain (a file, or a folder of shards),
and held-out texts taken from the head of each source and kept out of its training stream."""

from __future__ import annotations

import os
from typing import Any

from datasets import Dataset, IterableDataset, load_dataset

from .corpus import FILE_BUILDERS, text_digest


def _shards(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if os.path.splitext(f)[1] in FILE_BUILDERS)


def stream_domain_sources(source: str, text_column: str = "text") -> dict[str, IterableDataset]:
    """
    One streaming source per domain, read lazily (`load_dataset(..., streaming=True)`: nothing is materialised).

    Args:
        source (`str`): A directory with, per domain, a file `<domain>.jsonl|.json|.parquet|.csv` or a folder
            `<domain>/` of shards of one of those types (each shard is a unit that processes split among them).
        text_column (`str`): The column holding the text (checked on each source's first example).

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
        stream = load_dataset(builders.pop(), data_files=paths, split="train", streaming=True)
        first = next(iter(stream.take(1)), None)
        if first is None:
            raise ValueError(f"Domain {name!r} of source={source!r} has no rows ({', '.join(paths)}).")
        if text_column not in first:
            raise ValueError(
                f"text_column={text_column!r} is not a column of domain {name!r} of source={source!r} (columns: "
                f"{', '.join(first)}): set text_column to one of them."
            )
        sources[name] = stream.select_columns([text_column])
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
        for row in stream:
            digest = text_digest(row[text_column])
            if digest not in digests:
                digests.add(digest)
                texts.append(row[text_column])
                if len(texts) == size:
                    break
        if len(texts) < size:
            raise ValueError(f"Domain {name!r} has {len(texts)} distinct texts, fewer than size={size}: lower it.")
        held_out[name] = Dataset.from_dict({text_column: texts})
        train[name] = stream.filter(_not_in(frozenset(digests)), input_columns=text_column)
    return train, held_out


def _not_in(digests: frozenset[bytes]) -> Any:
    def keep(text: str) -> bool:
        return text_digest(text) not in digests

    return keep
