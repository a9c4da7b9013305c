"""Integrity of a teacher-output cache, checked before training: the manifest's fields, each shard's path (inside the
cache folder), size and SHA-256, its tensors' names, dtypes and shapes, and its values (finite log-probabilities
<= 0, token ids inside the vocabulary, consistent offsets). Every problem is one `ValueError` naming the file."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
from safetensors import safe_open

__all__ = ["file_sha256", "verify_cache"]

_FIELDS = {
    "k": int,
    "vocab_size": int,
    "num_examples": int,
    "num_tokens": int,
    "temperature": (int, float),
    "tokenizer_hash": str,
    "dataset_fingerprint": str,
}
_SHARD_FIELDS = {"file": str, "first_example": int, "last_example": int, "size": int, "sha256": str}
_ROWS_PER_CHECK = 1 << 16  # rows of a shard read at once for the value checks


def file_sha256(path: str, chunk_size: int = 1 << 23) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


class _Refusal:
    def __init__(self, path: str):
        self.path = path

    def __call__(self, what: str) -> ValueError:
        return ValueError(f"teacher_cache={self.path!r}: {what}; rebuild the cache (build_teacher_cache).")


def _check_fields(record: Any, fields: dict[str, Any], where: str, refuse: _Refusal) -> None:
    if not isinstance(record, dict):
        raise refuse(f"{where} is not a JSON object")
    for name, kind in fields.items():
        value = record.get(name)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise refuse(f"{where} has no valid {name!r} (got {value!r})")


def _shard_path(root: str, name: str, refuse: _Refusal) -> str:
    """The shard's path, which must be a file directly inside the cache folder (no `..`, no absolute path, no link
    leading out)."""
    if os.path.isabs(name) or os.path.basename(name) != name or name in ("", ".", ".."):
        raise refuse(f"shard file {name!r} is not a file name inside the cache folder")
    path = os.path.join(root, name)
    if os.path.dirname(os.path.realpath(path)) != os.path.realpath(root):
        raise refuse(f"shard file {name!r} leads outside the cache folder")
    if not os.path.isfile(path):
        raise refuse(f"shard file {name!r} is missing")
    return path


def _check_values(f: Any, name: str, rows: int, vocab: int, refuse: _Refusal) -> None:
    """Log-probabilities finite and <= 0, token ids in `[0, vocab)`, read `_ROWS_PER_CHECK` rows at a time."""
    for start in range(0, rows, _ROWS_PER_CHECK):
        values = f.get_slice("logprobs")[start : start + _ROWS_PER_CHECK].float()
        if not bool(torch.isfinite(values).all()):
            raise refuse(f"shard {name!r} holds non-finite log-probabilities")
        if bool((values > 0).any()):
            raise refuse(f"shard {name!r} holds positive log-probabilities (max {values.max().item():.4g})")
        ids = f.get_slice("indices")[start : start + _ROWS_PER_CHECK]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise refuse(f"shard {name!r} holds token ids outside [0, {vocab})")


def _check_shard(path: str, shard: dict[str, Any], manifest: dict[str, Any], refuse: _Refusal) -> list[int]:
    """The tensors of one shard; returns its offsets."""
    name, k = shard["file"], manifest["k"]
    examples = shard["last_example"] - shard["first_example"] + 1
    try:
        with safe_open(path, framework="pt") as f:
            if set(f.keys()) != {"logprobs", "indices", "offsets"}:
                raise refuse(f"shard {name!r} holds {sorted(f.keys())}, not logprobs, indices and offsets")
            shapes = {key: f.get_slice(key).get_shape() for key in ("logprobs", "indices", "offsets")}
            dtypes = {key: f.get_slice(key).get_dtype() for key in ("logprobs", "indices", "offsets")}
            rows = shapes["logprobs"][0] if len(shapes["logprobs"]) == 2 else -1
            if (
                shapes["logprobs"] != [rows, k]
                or shapes["indices"] != [rows, k]
                or shapes["offsets"] != [examples + 1]
                or dtypes["logprobs"] not in ("F32", "BF16")
                or dtypes["indices"] != "I32"
                or dtypes["offsets"] != "I64"
            ):
                raise refuse(f"shard {name!r} has tensors of the wrong shape or dtype ({shapes}, {dtypes})")
            offsets = f.get_tensor("offsets")
            if int(offsets[0]) != 0 or int(offsets[-1]) != rows or bool((offsets[1:] < offsets[:-1]).any()):
                raise refuse(f"shard {name!r} has offsets that do not cover its {rows} rows in order")
            _check_values(f, name, rows, manifest["vocab_size"], refuse)
    except ValueError:
        raise
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error type for a malformed file
        raise refuse(f"shard {name!r} is not a readable safetensors file ({error})") from None
    return offsets.tolist()


def verify_cache(path: str, manifest: dict[str, Any], check_hashes: bool = True) -> dict[int, list[int]]:
    """
    Check a teacher cache against its manifest, before any training step.

    Args:
        path (`str`): The cache folder.
        manifest (`dict`): Its parsed `manifest.json`.
        check_hashes (`bool`): Also compare each shard's SHA-256 (reads every byte); sizes, paths and values are
            always checked.

    Returns:
        `dict[int, list[int]]`: the offsets of each shard (shard number -> example offsets).

    Raises:
        `ValueError`: one line naming the cache, the shard file and what is wrong.
    """
    refuse = _Refusal(path)
    _check_fields(manifest, _FIELDS, "manifest.json", refuse)
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not shards:
        raise refuse("manifest.json lists no shards")
    offsets, expected_first, tokens = {}, 0, 0
    for number, shard in enumerate(shards):
        _check_fields(shard, _SHARD_FIELDS, f"manifest.json shard {number}", refuse)
        if shard["first_example"] != expected_first or shard["last_example"] < shard["first_example"]:
            raise refuse(f"manifest.json shard {number} does not start at example {expected_first}")
        file = _shard_path(path, shard["file"], refuse)
        size = os.path.getsize(file)
        if size != shard["size"]:
            raise refuse(f"shard {shard['file']!r} has {size} bytes, the manifest records {shard['size']}")
        if check_hashes and file_sha256(file) != shard["sha256"]:
            raise refuse(f"shard {shard['file']!r} does not have the SHA-256 the manifest records (it was changed)")
        offsets[number] = _check_shard(file, shard, manifest, refuse)
        expected_first, tokens = shard["last_example"] + 1, tokens + offsets[number][-1]
    if expected_first != manifest["num_examples"] or tokens != manifest["num_tokens"]:
        raise refuse(
            f"the shards hold {expected_first} examples and {tokens} tokens, the manifest records "
            f"{manifest['num_examples']} and {manifest['num_tokens']}"
        )
    return offsets
