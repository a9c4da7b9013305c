"""`hf-distill cache-build`: run the teacher once over the training blocks of a `ddk` run and write its top-k
log-probabilities ([`build_teacher_cache`]), so that runs on the same data train without loading the teacher again.

    hf-distill cache-build --cache_dir cache/demo-k64                     # the embedded demo's training blocks
    hf-distill cache-build --config my.yaml --cache_dir cache/mine --k 64
    hf-distill ddk --config my.yaml --teacher_cache cache/mine --ddk_update_steps none   # then train from it

It reads the same flags and `--config` as `hf-distill ddk` (data, tokenizer, `block_size`, `split_seed`,
`temperature`, ...) and prepares the training blocks exactly as `ddk` does, so a `ddk` run with the same settings
reads the rows the cache holds, in the same order (the cache checks the tokenizer and the row count when training).
DDK needs a live teacher (it measures the teacher on held-out data), so training from a cache keeps the mixture fixed;
the blocks are those of such a run (DDK's own held-out texts stay in the training set), whatever `--ddk_update_steps`
says.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

from hf_distill import DistillationConfig, build_teacher_cache
from hf_distill.recipe_tools.cli import RecipeError, parse_recipe_args, with_cpu_processes
from hf_distill.recipe_tools.publish import fail
from hf_distill.validation import NumberRule, check_numbers

from . import ddk

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class CacheArguments:
    """Where and how the teacher's outputs are written."""

    cache_dir: str | None = field(default=None, metadata={"help": "A new (or empty) folder for the cache."})
    k: int = field(default=64, metadata={"help": "Log-probabilities kept per token (the vocabulary size: all)."})
    cache_batch_size: int = field(default=8, metadata={"help": "Training blocks per teacher forward pass."})
    cache_dtype: str = field(default="float32", metadata={"help": "Storage dtype: float32 or bfloat16."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Replace the cache in a non-empty cache_dir."})

    def __post_init__(self):
        check_numbers(self, {"k": NumberRule(low=1), "cache_batch_size": NumberRule(low=1)})
        if self.cache_dtype not in DTYPES:
            raise ValueError(f"cache_dtype={self.cache_dtype!r} is not supported; choose one of {list(DTYPES)}.")


def main(argv: list[str] | None = None) -> dict:
    """Build the cache; returns its manifest. Bad input exits with code 2 and one `error:` line."""
    argv = with_cpu_processes(sys.argv[1:] if argv is None else argv)
    try:
        script, args, cache = parse_recipe_args(
            (ddk.ScriptArguments, DistillationConfig, CacheArguments), argv, ddk.DEFAULT_CONFIG
        )
        if cache.cache_dir is None:
            raise RecipeError("cache_dir is not set: pass --cache_dir, a new folder for the teacher's outputs.")
        if script.streaming:
            raise RecipeError("--streaming true: the cache indexes the rows of a map-style training set; drop it.")
        ddk.resolve_paths(script)
        args.ddk_update_steps = None  # training from a cache keeps the mixture fixed: hold out as such a run does
        tokenizer = ddk.load_tokenizer(script)
        data = ddk.load_data(script, args, tokenizer)
        teacher = ddk._load_causal_lm(script.teacher_model, "teacher", script, torch.float32).eval()
        manifest = build_teacher_cache(
            teacher, data["train"], cache.cache_dir, tokenizer, k=cache.k, temperature=args.temperature,
            batch_size=cache.cache_batch_size, dtype=DTYPES[cache.cache_dtype], teacher_name=script.teacher_model,
            overwrite=cache.overwrite_cache,
        )  # fmt: skip
    except (RecipeError, ValueError, FileExistsError) as error:
        fail(" ".join(str(error).split()), 2)
    state = getattr(args, "distributed_state", None)
    if state is not None and state.use_distributed:  # a clean teardown of the processes' group (see `release`)
        state.wait_for_everyone()
        state.destroy_process_group()
    if args.process_index == 0:
        print(
            f"Teacher cache of {len(data['train'])} training blocks (k={cache.k}, temperature={args.temperature}) "
            f"written to {cache.cache_dir}. Train from it with the same settings plus --teacher_cache "
            f"{cache.cache_dir} --ddk_update_steps none."
        )
    return manifest


if __name__ == "__main__":
    main()
