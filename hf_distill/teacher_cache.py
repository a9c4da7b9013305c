"""Teacher-output cache (offline distillation): run the teacher once over a tokenized dataset, store its top-k
log-probabilities per token in safetensors shards with a JSON manifest, and train from them with no teacher loaded.

Layout of a cache directory:

- `manifest.json`: format, version, teacher name, tokenizer hash, `k`, temperature, vocabulary size, number of
  examples and tokens, a fingerprint of the dataset's `input_ids`, and the shards (file, first and last example,
  size in bytes, SHA-256);
- `shard-XXXXX.safetensors`: `logprobs` `(tokens, k)` (float32 or bfloat16, sorted descending), `indices`
  `(tokens, k)` int32, `offsets` `(examples + 1,)` int64: example `i` of the shard owns rows
  `offsets[i]:offsets[i+1]`, one row per attended position (`attention_mask == 1`) in order.

Everything is read with `json` and `safetensors`: no pickle. The manifest is written last, so an interrupted build
leaves no usable cache. Under `torch.distributed` (e.g. `accelerate launch` with an initialised `PartialState`) each
process runs the teacher on its contiguous share of the examples and writes its own shards
(`shard-r<rank>-XXXXX.safetensors`) and a record of them; process 0 writes the one manifest after every process has
written its record. Opening a cache checks it whole before training ([`verify_cache`]): shard paths stay inside
the folder, sizes and hashes match the manifest, log-probabilities are finite and <= 0.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from .files import read_text_file, write_json_atomic
from .teacher_cache_check import file_sha256, verify_cache

CACHE_FORMAT = "hf_distill.teacher_cache"
CACHE_VERSION = 2  # 2: each shard's size and SHA-256 (a version-1 cache is upgraded by seal_teacher_cache)
MANIFEST = "manifest.json"
INDEX_COLUMN = "teacher_cache_index"
CACHE_KEYS = ("teacher_topk_logprobs", "teacher_topk_indices")


def tokenizer_hash(tokenizer: Any) -> str:
    """SHA-256 of the tokenizer's vocabulary (token -> id, added tokens included) and special tokens."""
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": sorted((str(k), str(v)) for k, v in getattr(tokenizer, "special_tokens_map", {}).items()),
    }
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()


def dataset_fingerprint(rows: Iterable[Sequence[int]]) -> str:
    """SHA-256 over the `input_ids` of every example, in order."""
    digest = hashlib.sha256()
    for ids in rows:
        digest.update(torch.as_tensor(list(ids), dtype=torch.int64).numpy().tobytes())
        digest.update(b"|")
    return digest.hexdigest()


def _attended_rows(example: dict[str, Any]) -> list[int]:
    ids = list(example["input_ids"])
    mask = example.get("attention_mask")
    return [i for i, m in enumerate(mask if mask is not None else [1] * len(ids)) if m]


@torch.no_grad()
def build_teacher_cache(
    teacher: torch.nn.Module,
    dataset: Any,
    output_dir: str,
    tokenizer: Any,
    k: int = 64,
    temperature: float = 1.0,
    batch_size: int = 8,
    examples_per_shard: int = 4096,
    dtype: torch.dtype = torch.float32,
    teacher_name: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """
    Run `teacher` once over a tokenized dataset and write its top-k log-probabilities per attended token.

    Args:
        teacher (`torch.nn.Module`): The teacher (a causal LM or masked LM returning `logits`), in evaluation mode.
        dataset: Rows with `input_ids` (and `attention_mask`); the training set the cache will be used with, in the
            same order.
        output_dir (`str`): A new (or empty) directory.
        tokenizer: The tokenizer of teacher and student; its hash is recorded and checked when training.
        k (`int`): Log-probabilities kept per token (the vocabulary size keeps the whole distribution).
        temperature (`float`): Softmax temperature of the stored log-probabilities (training must use the same).
        batch_size (`int`): Examples per teacher forward pass.
        examples_per_shard (`int`): Examples per safetensors shard.
        dtype (`torch.dtype`): Storage dtype of the log-probabilities (`torch.float32` or `torch.bfloat16`).
        teacher_name (`str`, *optional*): Recorded in the manifest; defaults to the teacher's `name_or_path`.
        overwrite (`bool`): Allow writing into a non-empty `output_dir` (its old shards and manifest are replaced).

    Returns:
        `dict`: the manifest.
    """
    vocab = len(tokenizer)
    if not 1 <= k <= vocab:
        raise ValueError(f"k={k} must be between 1 and the vocabulary size {vocab}.")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0.")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise FileExistsError(
            f"output_dir={output_dir!r} is not empty: choose a new directory or pass overwrite=True."
        )
    rank, processes = _process()
    _barrier(processes)  # every process has checked the directory before process 0 changes it
    if rank == 0:
        os.makedirs(output_dir, exist_ok=True)
        if os.path.exists(os.path.join(output_dir, MANIFEST)):
            os.remove(os.path.join(output_dir, MANIFEST))  # the old cache is unusable from here on
    _barrier(processes)
    device = next(teacher.parameters()).device
    teacher.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n = len(dataset)
    start, stop = rank * n // processes, (rank + 1) * n // processes  # this process's contiguous share
    prefix = "shard-" if processes == 1 else f"shard-r{rank:03d}-"
    writer = _ShardWriter(output_dir, dtype, examples_per_shard, prefix, start)
    for first in range(start, stop, batch_size):
        rows = [dataset[i] for i in range(first, min(first + batch_size, stop))]
        ids, mask = _padded(rows, pad)
        logits = teacher(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for b, row in enumerate(rows):
            positions = torch.tensor(_attended_rows(row), dtype=torch.long, device=logits.device)
            logprobs = F.log_softmax(logits[b, positions, :vocab].float() / temperature, dim=-1)
            writer.add(first + b, *logprobs.topk(k, dim=-1), last=first + b == stop - 1)
    shards, tokens = _gather_shards(output_dir, rank, processes, writer)
    if rank == 0:  # the one manifest, written last; the other processes read it once it exists
        _write_manifest(output_dir, {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "teacher": teacher_name or getattr(teacher, "name_or_path", None) or type(teacher).__name__,
            "tokenizer_hash": tokenizer_hash(tokenizer),
            "k": k,
            "temperature": float(temperature),
            "vocab_size": vocab,
            "dtype": str(dtype).removeprefix("torch."),
            "num_examples": n,
            "num_tokens": tokens,
            "dataset_fingerprint": dataset_fingerprint(row["input_ids"] for row in dataset),
            "shards": shards,
        })  # fmt: skip
    _barrier(processes)  # no process returns before the cache is usable
    return json.loads(read_text_file(os.path.join(output_dir, MANIFEST)))


def _process() -> tuple[int, int]:
    """This process's rank and the number of processes (`torch.distributed` when initialised, else 0 and 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier(processes: int) -> None:
    if processes > 1:
        torch.distributed.barrier()


def _gather_shards(output_dir: str, rank: int, processes: int, writer: _ShardWriter) -> tuple[list[dict], int]:
    """On process 0, every process's shard records in example order and the total token count (elsewhere, this
    process's own): each process writes `part-<rank>.json` once its shards are written; after a barrier process 0
    reads and removes every record. A process that fails before its record leaves the others at the barrier: no
    manifest is written."""
    if processes == 1:
        return writer.shards, writer.total_tokens
    write_json_atomic(
        os.path.join(output_dir, f"part-{rank:03d}.json"), {"shards": writer.shards, "num_tokens": writer.total_tokens}
    )
    _barrier(processes)
    if rank != 0:
        return writer.shards, writer.total_tokens
    shards, tokens = [], 0
    for other in range(processes):
        part = os.path.join(output_dir, f"part-{other:03d}.json")
        record = json.loads(read_text_file(part))
        shards += record["shards"]
        tokens += record["num_tokens"]
        os.remove(part)
    return shards, tokens


def _write_manifest(output_dir: str, manifest: dict[str, Any]) -> None:
    write_json_atomic(os.path.join(output_dir, MANIFEST), manifest)


def _shard_record(output_dir: str, name: str) -> dict[str, Any]:
    path = os.path.join(output_dir, name)
    return {"size": os.path.getsize(path), "sha256": file_sha256(path)}


def seal_teacher_cache(path: str) -> dict[str, Any]:
    """
    Record the size and SHA-256 of each shard of a version-1 cache (hf_distill 0.2 and earlier wrote none) in its
    manifest, making it a version-2 cache that [`TeacherCache`] opens. It trusts the shards as they are now: seal
    only a cache you built and kept yourself.

    Returns:
        `dict`: the new manifest.
    """
    manifest = json.loads(read_text_file(os.path.join(path, MANIFEST)))
    if manifest.get("format") != CACHE_FORMAT or manifest.get("version") != 1:
        raise ValueError(f"teacher_cache={path!r} is not a version-1 hf_distill teacher cache: nothing to seal.")
    for shard in manifest["shards"]:
        shard.update(_shard_record(path, os.path.basename(shard["file"])))
    manifest["version"] = CACHE_VERSION
    _write_manifest(path, manifest)
    return manifest


def _padded(rows: list[dict[str, Any]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded `input_ids` and the attention mask of the attended positions of `rows`."""
    length = max(len(row["input_ids"]) for row in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, : len(row["input_ids"])] = torch.as_tensor(list(row["input_ids"]))
        mask[b, _attended_rows(row)] = 1
    return ids, mask


class _ShardWriter:
    """Collects each example's top-k rows and writes them `examples_per_shard` examples to a safetensors shard."""

    def __init__(self, output_dir: str, dtype: torch.dtype, examples_per_shard: int, prefix: str, first: int):
        self.output_dir, self.dtype, self.examples_per_shard = output_dir, dtype, examples_per_shard
        self.prefix = prefix
        self.shards: list[dict[str, Any]] = []
        self.buffer: dict[str, list] = {"logprobs": [], "indices": [], "lengths": []}
        self.first, self.total_tokens = first, 0

    def add(self, index: int, values: torch.Tensor, indices: torch.Tensor, last: bool) -> None:
        self.buffer["logprobs"].append(values.cpu())
        self.buffer["indices"].append(indices.cpu())
        self.buffer["lengths"].append(len(values))
        self.total_tokens += len(values)
        if index + 1 - self.first == self.examples_per_shard or last:
            self._flush(index)

    def _flush(self, last: int) -> None:
        name = f"{self.prefix}{len(self.shards):05d}.safetensors"
        lengths = torch.tensor([0] + self.buffer["lengths"], dtype=torch.int64)
        tensors = {
            "logprobs": torch.cat(self.buffer["logprobs"]).to(self.dtype).contiguous(),
            "indices": torch.cat(self.buffer["indices"]).to(torch.int32).contiguous(),
            "offsets": lengths.cumsum(0),
        }
        save_file(tensors, os.path.join(self.output_dir, name), metadata={"format": "pt"})
        record = {"file": name, "first_example": self.first, "last_example": last}
        self.shards.append({**record, **_shard_record(self.output_dir, name)})
        self.first = last + 1
        for values in self.buffer.values():
            values.clear()


class TeacherCache:
    """
    Read access to a cache written by [`build_teacher_cache`], checked whole when opened (see [`verify_cache`]).

    Args:
        path (`str`): The cache directory.
        check_hashes (`bool`): Compare each shard's SHA-256 with the manifest (reads every byte once); `False` is
            faster on a large cache and still checks the paths, sizes, shapes and values.

    Raises:
        `ValueError`: one line naming the cache, the file and what is wrong (a missing or malformed manifest, a shard
            path outside the folder, a changed, truncated or missing shard, NaN or positive log-probabilities).
    """

    def __init__(self, path: str, check_hashes: bool = True):
        manifest_path = os.path.join(path, MANIFEST)
        if not os.path.isfile(manifest_path):
            raise ValueError(
                f"teacher_cache={path!r} has no {MANIFEST}: build it with build_teacher_cache (an interrupted build "
                "leaves none)."
            )
        try:
            self.manifest: dict[str, Any] = json.loads(read_text_file(manifest_path))
        except ValueError as error:
            raise ValueError(f"teacher_cache={path!r}: {MANIFEST} is not valid JSON ({error}); rebuild it.") from None
        found = (self.manifest.get("format"), self.manifest.get("version")) if isinstance(self.manifest, dict) else ()
        if found == (CACHE_FORMAT, 1):
            raise ValueError(
                f"teacher_cache={path!r} was written by hf_distill 0.2 or earlier, without shard hashes: rebuild it, "
                "or record the hashes of the shards as they are with hf_distill.teacher_cache.seal_teacher_cache."
            )
        if found != (CACHE_FORMAT, CACHE_VERSION):
            raise ValueError(
                f"teacher_cache={path!r} is not an hf_distill teacher cache of version {CACHE_VERSION} (format, "
                f"version: {found}): rebuild it."
            )
        self.path = path
        self._offsets: dict[int, list[int]] = verify_cache(path, self.manifest, check_hashes)
        self._firsts = [shard["first_example"] for shard in self.manifest["shards"]]

    @property
    def k(self) -> int:
        return self.manifest["k"]

    def __len__(self) -> int:
        return self.manifest["num_examples"]

    def check(self, tokenizer: Any, temperature: float, vocab_size: int | None = None) -> None:
        """Refuse a cache made with another tokenizer, temperature or vocabulary than the training run's."""
        where = f"teacher_cache={self.path!r}"
        if tokenizer is None:
            raise ValueError(
                f"{where}: pass the tokenizer as processing_class so the cache's tokenizer can be checked."
            )
        if tokenizer_hash(tokenizer) != self.manifest["tokenizer_hash"]:
            raise ValueError(
                f"{where} was built with another tokenizer than processing_class (hash "
                f"{self.manifest['tokenizer_hash'][:12]}... vs {tokenizer_hash(tokenizer)[:12]}...): rebuild the "
                "cache with the student's tokenizer."
            )
        if abs(self.manifest["temperature"] - temperature) > 1e-9:
            raise ValueError(
                f"{where} holds log-probabilities at temperature {self.manifest['temperature']}, but "
                f"DistillationConfig.temperature={temperature}: use the cache's temperature or rebuild it."
            )
        if vocab_size is not None and vocab_size < self.manifest["vocab_size"]:
            raise ValueError(
                f"{where} covers {self.manifest['vocab_size']} tokens but the student's output has {vocab_size}."
            )

    def attach(self, dataset: Any) -> Any:
        """Check that `dataset` is the one the cache was built from; add its row numbers (`teacher_cache_index`)."""
        if (
            len(dataset) != len(self)
            or dataset_fingerprint(dataset["input_ids"]) != self.manifest["dataset_fingerprint"]
        ):
            raise ValueError(
                f"train_dataset ({len(dataset)} examples) is not the dataset teacher_cache={self.path!r} was built "
                f"from ({len(self)} examples, other input_ids): build the cache from this very dataset, in this order."
            )
        if INDEX_COLUMN in dataset.column_names:
            dataset = dataset.remove_columns(INDEX_COLUMN)
        return dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))

    def lookup(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The `(logprobs, indices)` rows `(tokens, k)` of example `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"example {index} is not in the teacher cache ({len(self)} examples).")
        shard_number = bisect.bisect_right(self._firsts, index) - 1
        shard = self.manifest["shards"][shard_number]
        with safe_open(os.path.join(self.path, shard["file"]), framework="pt") as f:
            offsets = self._offsets[shard_number]
            local = index - shard["first_example"]
            start, stop = offsets[local], offsets[local + 1]
            return f.get_slice("logprobs")[start:stop], f.get_slice("indices")[start:stop]


class TeacherCacheCollator:
    """
    Wraps a data collator: removes `teacher_cache_index` from each example, collates the rest, and adds the cached
    teacher top-k as `teacher_topk_logprobs` / `teacher_topk_indices` `(batch, length, k)`, placed on the attended
    positions of each row (any padding side). Examples without the index (evaluation sets) pass through unchanged.
    """

    def __init__(self, collator: Any, cache: TeacherCache):
        self.collator = collator
        self.cache = cache

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Dataset columns this collator reads (kept by the trainer through `remove_unused_columns`)."""
        return (INDEX_COLUMN, *getattr(self.collator, "required_columns", ()))

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features or INDEX_COLUMN not in features[0]:
            return self.collator(features)
        indices = [int(f[INDEX_COLUMN]) for f in features]
        batch = self.collator([{k: v for k, v in f.items() if k != INDEX_COLUMN} for f in features])
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        k = self.cache.k
        logprobs = torch.zeros((*ids.shape, k), dtype=torch.float32)
        token_ids = torch.zeros((*ids.shape, k), dtype=torch.long)
        for b, index in enumerate(indices):
            values, top = self.cache.lookup(index)
            positions = mask[b].nonzero(as_tuple=True)[0]
            if len(positions) != len(values):
                raise ValueError(
                    f"Example {index} has {len(positions)} attended tokens in the batch but {len(values)} in the "
                    "teacher cache: the collator truncates or changes the examples; build the cache from the "
                    "examples as the collator returns them."
                )
            logprobs[b, positions] = values.float()
            token_ids[b, positions] = top.long()
        batch[CACHE_KEYS[0]], batch[CACHE_KEYS[1]] = logprobs, token_ids
        return batch
