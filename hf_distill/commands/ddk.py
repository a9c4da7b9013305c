"""DDK distillation of a causal LM on a multi-domain corpus: the main job of hf_distill.

    accelerate launch recipes/ddk.py                                             # embedded demo, CPU, offline
    accelerate launch recipes/ddk.py --max_steps 100 --ddk_update_steps 20       # command line overrides
    accelerate launch recipes/ddk.py --ddk_update_steps none                     # control: static (uniform) mixture
    accelerate launch recipes/ddk.py --streaming true                            # read each domain lazily
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/ddk.py \\
        --config recipes/configs/qwen2.5-1.5b-to-0.5b-ddk.yaml

Arguments are the fields of `ScriptArguments` below and of `hf_distill.DistillationConfig` (every `TrainingArguments`
field included), read from a YAML file (`--config`, default `hf_distill/demo/demo.yaml`) and overridden on the command
line. The recipe loads teacher and student, loads the corpus (hub name with a domain column, a local JSON/Parquet/CSV
file, or a directory with one file per domain), removes duplicate texts, holds out (by `split_seed`) `validation_size`
texts per domain for the table and `ddk_validation_size` others for DDK, tokenizes and packs (with `--streaming true`:
reads each domain's file or folder of shards lazily, holds out the first distinct texts of each and packs the rest on
the fly, see `DomainStream`), trains with DDK (or, with `--ddk_update_steps none`, on the static `ddk_initial_weights`
mixture, with no DDK evaluation), prints the per-domain perplexity of the teacher, the student before and the student
after, plots the domain weights over the steps, saves the student (safetensors and tokenizer), `results.json` and its
model card (`README.md`) and, with `--push_to_hub`, then pushes it. Each phase ends with a `[phase] ...: T s` line and
each DDK update logs one line with its duration.

Reliability: every value is checked before a model is loaded (one-line `error: ...`, exit code 2). With checkpoints
(`--save_strategy steps --save_steps N`), a run re-started with the same `--output_dir` resumes from the newest
complete checkpoint (`--resume_from_checkpoint true|PATH` says so explicitly; `--overwrite_output_dir true` starts
over); a checkpoint killed while being written is skipped. A NaN or infinite loss term stops training with exit
code 1 and saves nothing. On several processes, `--ddp_timeout SECONDS` bounds how long the others wait for a hung
or dead process before the job fails (also on CPU). The Hub token comes from `HF_TOKEN` or `hf auth login`; a
`--hub_token` on the command line is visible to other users and echoed by the launcher when a run fails.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, default_data_collator
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.utils import logging

from hf_distill import DistillationConfig, DistillationTrainer, DomainStream, EmptyLabelsError, NonFiniteError
from hf_distill.recipe_tools.cli import (
    RecipeError,
    load_or_refuse,
    parse_recipe_args,
    refuse_evaluation_during_training,
    show_progress,
    warn_command_line_token,
    with_cpu_processes,
)
from hf_distill.recipe_tools.corpus import deduplicate, hold_out, load_domain_corpus, pack_texts
from hf_distill.recipe_tools.publish import fail, save_then_push
from hf_distill.recipe_tools.resume import resume_point
from hf_distill.recipe_tools.streaming import hold_out_stream, stream_domain_sources
from hf_distill.validation import SEED, NumberRule, check_numbers

from . import DEMO_CONFIG, packaged

logger = logging.get_logger("recipes.ddk")
DEFAULT_CONFIG = DEMO_CONFIG


@dataclass
class ScriptArguments:
    """Models and data of the DDK recipe (training and distillation settings are `DistillationConfig` fields)."""

    teacher_model: str | None = field(default=None, metadata={"help": "Teacher: hub name or local path."})
    student_model: str | None = field(default=None, metadata={"help": "Student: hub name or local path."})
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Corpus: a directory with one file per domain, a local .jsonl/.json/.parquet/.csv file with the "
            "domain column, or a hub dataset name with the domain column."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    dataset_split: str = field(default="train", metadata={"help": "Hub dataset split (e.g. 'train[:5%]')."})
    data_files: str | None = field(default=None, metadata={"help": "Only these files of a hub dataset."})
    text_column: str = field(default="text", metadata={"help": "The column holding the text."})
    block_size: int = field(default=512, metadata={"help": "Tokens per packed training block."})
    validation_size: int = field(default=64, metadata={"help": "Texts held out per domain for the perplexity table."})
    ddk_validation_size: int | None = field(
        default=None,
        metadata={
            "help": "Texts held out per domain for DDK's validation, disjoint from the table's (default: "
            "validation_size; unused without DDK). They should hold at least ddk_eval_tokens tokens per domain."
        },
    )
    split_seed: int = field(
        default=0,
        metadata={"help": "Seed of the held-out split (independent of --seed, so runs of other seeds compare)."},
    )
    max_eval_batches: int | None = field(
        default=None, metadata={"help": "Batches per domain for the perplexity table (all held-out blocks if unset)."}
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "e.g. 'sdpa', 'eager'."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the hub."})
    plot: bool = field(default=True, metadata={"help": "Save ddk_weights.png (needs matplotlib)."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Remove the checkpoints of --output_dir and start over (otherwise the run resumes)."},
    )
    preprocessing_num_workers: int | None = field(
        default=None,
        metadata={"help": "Processes for hashing, splitting and tokenizing the corpus (datasets' num_proc)."},
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read each domain's file or folder of shards lazily and pack it on the fly (for corpora too "
            "large to load): held out are the first distinct texts of each domain (split_seed does not apply)."
        },
    )

    def __post_init__(self):
        check_numbers(self, SCRIPT_NUMBER_RULES)


SCRIPT_NUMBER_RULES = {
    "block_size": NumberRule(low=2, hint="tokens per training block"),
    "validation_size": NumberRule(low=1, hint="held-out texts per domain"),
    "ddk_validation_size": NumberRule(low=1, hint="DDK's held-out texts per domain"),
    "split_seed": SEED,
    "max_eval_batches": NumberRule(low=1, hint="unset evaluates every held-out block"),
    "preprocessing_num_workers": NumberRule(low=1, hint="unset uses the main process"),
}


def resolve_paths(script: ScriptArguments) -> None:
    """The models and the corpus must be set; relative paths missing here are taken from the installed package's
    (the embedded demo's), see [`packaged`].

    Raises:
        [`RecipeError`]: naming the unset field.
    """
    for name in ("teacher_model", "student_model", "dataset_name"):
        if getattr(script, name) is None:
            raise RecipeError(f"{name} is not set: pass --{name} or set it in the --config YAML.")
        setattr(script, name, packaged(getattr(script, name)))


def load_tokenizer(script: ScriptArguments) -> Any:
    """The student's tokenizer, which must also be the teacher's (one tokenization: logit KD and DDK need it)."""
    tokenizer = load_or_refuse(
        AutoTokenizer.from_pretrained,
        script.student_model,
        "student_model",
        trust_remote_code=script.trust_remote_code,
    )
    _check_tokenizers(script, tokenizer)
    return tokenizer


def _load_causal_lm(name: str, role: str, script: ScriptArguments, dtype: torch.dtype) -> torch.nn.Module:
    return load_or_refuse(
        AutoModelForCausalLM.from_pretrained,
        name,
        f"{role}_model",
        dtype=dtype,
        attn_implementation=script.attn_implementation,
        trust_remote_code=script.trust_remote_code,
        use_safetensors=True,
    )


def _check_block_size(script: ScriptArguments) -> None:
    """`block_size` must fit both models' position range (read from their configs, before any weight is loaded)."""
    for role in ("teacher", "student"):
        name = getattr(script, f"{role}_model")
        config = load_or_refuse(
            AutoConfig.from_pretrained, name, f"{role}_model", trust_remote_code=script.trust_remote_code
        )
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if limit is not None and script.block_size > limit:
            raise RecipeError(
                f"--block_size {script.block_size} is beyond the {role}'s {limit} positions "
                f"({role}_model={name!r}): use --block_size {limit} or less."
            )


def _check_tokenizers(script: ScriptArguments, student_tokenizer: Any) -> None:
    """Logit KD and DDK compare the two models token by token: the teacher must use the student's vocabulary."""
    try:
        teacher_tokenizer = AutoTokenizer.from_pretrained(script.teacher_model)
    except (OSError, ValueError):
        return  # no tokenizer next to the teacher: the trainer still checks the vocabulary sizes
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher_vocab != student_vocab:
        differ = len(set(teacher_vocab.items()) ^ set(student_vocab.items()))
        raise RecipeError(
            f"teacher_model={script.teacher_model!r} and student_model={script.student_model!r} have different "
            f"vocabularies ({len(teacher_vocab)} vs {len(student_vocab)} tokens, {differ} entries differ): logit KD "
            "and DDK need one tokenizer; use a teacher of the student's family."
        )


def build(argv: list[str] | None = None) -> tuple[DistillationTrainer, ScriptArguments, dict[str, Any]]:
    """Everything before training: arguments, data, models and the trainer. Bad input raises [`RecipeError`]."""
    argv = with_cpu_processes(sys.argv[1:] if argv is None else argv)
    try:
        script, args = parse_recipe_args((ScriptArguments, DistillationConfig), argv, DEFAULT_CONFIG)
    except ValueError as error:  # RecipeError, or a DistillationConfig / TrainingArguments check
        raise RecipeError(" ".join(str(error).split())) from error
    resolve_paths(script)
    warn_command_line_token(argv)
    refuse_evaluation_during_training(args, "recipes/ddk.py")
    _check_block_size(script)
    with args.main_process_first(desc="find a checkpoint to resume from"):
        resume = resume_point(args.output_dir, args.resume_from_checkpoint, script.overwrite_output_dir, args)
    tokenizer = load_tokenizer(script)
    data = load_data(script, args, tokenizer)

    compute_dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    student = _load_causal_lm(script.student_model, "student", script, torch.float32)
    teacher = _load_causal_lm(script.teacher_model, "teacher", script, compute_dtype)
    try:
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=data["train"],
            ddk_eval_dataset=data["ddk_validation"],
            processing_class=tokenizer,
            data_collator=default_data_collator,
        )
        trainer.check_resume(resume)  # e.g. a stream read with another batch size: before the first step
    except ValueError as error:
        raise RecipeError(" ".join(str(error).split())) from error
    return trainer, script, {**data, "resume": resume, "teacher": teacher}


def load_data(script: ScriptArguments, args: DistillationConfig, tokenizer: Any) -> dict[str, Any]:
    """
    The corpus without duplicate texts, split by `split_seed` into training texts and, per domain, `validation_size`
    texts for the table and (with DDK) `ddk_validation_size` other texts for DDK's validation; each set tokenized
    and packed. No held-out text occurs in training, and the table's texts are not DDK's.
    """
    if script.streaming:
        return load_streaming_data(script, args, tokenizer)
    try:
        corpus = load_domain_corpus(
            script.dataset_name, args.domain_column, script.text_column, script.dataset_config, script.dataset_split,
            script.data_files,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as error:
        raise RecipeError(f"--dataset_name {script.dataset_name}: {error}") from error
    workers = script.preprocessing_num_workers
    corpus, removed = deduplicate(corpus, script.text_column, workers)
    if removed:
        logger.warning(f"--dataset_name {script.dataset_name}: {removed} duplicate texts removed before the split.")
    ddk_size = _ddk_size(script, args)
    try:
        train_texts, held_out = hold_out(
            corpus, script.validation_size + ddk_size, args.domain_column, script.split_seed, workers
        )
    except ValueError as error:
        raise RecipeError(
            f"--validation_size {script.validation_size} (+ ddk_validation_size {ddk_size}): {error}"
        ) from error
    table, ddk = _table_and_ddk(held_out, script.validation_size, ddk_size)
    with args.main_process_first(desc="tokenize and pack"):
        try:
            packed = {
                "train": pack_texts(
                    train_texts, tokenizer, script.block_size, script.text_column, args.domain_column, workers
                ),
                "validation": _pack_each(table, tokenizer, script, "validation_size"),
                "ddk_validation": _pack_each(ddk, tokenizer, script, _ddk_flag(script)) if ddk else None,
            }
        except ValueError as error:
            raise RecipeError(str(error)) from error
    return {**packed, "corpus": corpus, "texts": {"train": train_texts, "table": table, "ddk": ddk}}


def load_streaming_data(script: ScriptArguments, args: DistillationConfig, tokenizer: Any) -> dict[str, Any]:
    """
    `--streaming`: each domain's file or folder of shards read lazily; the first `validation_size` (+ DDK's
    `ddk_validation_size`) distinct texts of each domain held out (table first, then DDK's) and filtered out of that
    domain's training stream, which a [`DomainStream`] tokenizes and packs on the fly.
    """
    ddk_size = _ddk_size(script, args)
    try:
        sources = stream_domain_sources(script.dataset_name, script.text_column)
        train, held_out = hold_out_stream(sources, script.validation_size + ddk_size, script.text_column)
        table, ddk = _table_and_ddk(held_out, script.validation_size, ddk_size)
        packed = {
            "train": DomainStream(train, script.block_size, tokenizer, script.text_column),
            "validation": _pack_each(table, tokenizer, script, "validation_size"),
            "ddk_validation": _pack_each(ddk, tokenizer, script, _ddk_flag(script)) if ddk else None,
        }
    except RecipeError:
        raise
    except ValueError as error:
        raise RecipeError(f"--dataset_name {script.dataset_name} --streaming true: {error}") from error
    return {**packed, "corpus": None, "texts": {"train": train, "table": table, "ddk": ddk}}


def _ddk_flag(script: ScriptArguments) -> str:
    """The flag that sets how many texts per domain DDK holds out."""
    return "validation_size" if script.ddk_validation_size is None else "ddk_validation_size"


def _ddk_size(script: ScriptArguments, args: DistillationConfig) -> int:
    """DDK's own held-out texts per domain (none without DDK)."""
    return 0 if args.ddk_update_steps is None else (script.ddk_validation_size or script.validation_size)


def _table_and_ddk(held_out: dict[str, Any], table_size: int, ddk_size: int) -> tuple[dict[str, Any], Any]:
    """The held-out texts of each domain split into the table's (first `table_size`) and DDK's (the rest)."""
    table = {d: texts.select(range(table_size)) for d, texts in held_out.items()}
    ddk = {d: texts.select(range(table_size, len(texts))) for d, texts in held_out.items()} if ddk_size else None
    return table, ddk


def _pack_each(texts: dict[str, Any], tokenizer: Any, script: ScriptArguments, flag: str) -> dict[str, Any]:
    """Each domain's held-out texts tokenized and packed; too few tokens for one block is a [`RecipeError`] naming
    `flag`, the held-out size that sets how many texts there are."""
    packed = {}
    for name, part in texts.items():
        try:
            packed[name] = pack_texts(part, tokenizer, script.block_size, script.text_column, None)
        except ValueError:
            raise RecipeError(
                f"{flag}={getattr(script, flag)}: the {len(part)} held-out texts of domain {name!r} hold fewer than "
                f"block_size={script.block_size} tokens, so they make no evaluation block: raise {flag} (or lower "
                "--block_size)."
            ) from None
    return packed


def perplexity_table(results: dict[str, dict[str, float]], weights: dict[str, float]) -> str:
    """The per-domain table: perplexity of teacher, student before and after, and the final domain weight."""
    columns = list(results)
    lines = [f"{'domain':<14}" + "".join(f"{c:>16}" for c in columns) + f"{'weight':>12}"]
    for domain in weights:
        cells = "".join(f"{math.exp(results[c][domain]):>16.3f}" for c in columns)
        lines.append(f"{domain:<14}{cells}{weights[domain]:>12.3f}")
    return "\n".join(lines)


def weight_history(trainer: DistillationTrainer) -> tuple[list[int], dict[str, list[float]]]:
    """The domain weights at step 0 and after every DDK update (the initial ones only for a static mixture)."""
    names = trainer.domain_sampler.domain_names
    updates = trainer.ddk_callback.updates if trainer.ddk_callback is not None else []
    steps = [0] + [update["step"] for update in updates]
    rows = [trainer.domain_sampler.history[0][1]] + [update["weights"] for update in updates]
    return steps, {name: [row[i] for row in rows] for i, name in enumerate(names)}


def ddk_updates(trainer: DistillationTrainer) -> list[dict[str, Any]]:
    """Each DDK update as measured: per domain the student's CE, the ratio with its standard error and the new weight
    (the teacher's CE, measured once, under `step` 0)."""
    callback = trainer.ddk_callback
    if callback is None or callback.teacher_losses is None:
        return []
    names = trainer.domain_sampler.domain_names
    rows = [{"step": 0, "teacher_loss": dict(zip(names, callback.teacher_losses, strict=True))}]
    for update in callback.updates:
        row = {"step": update["step"]}
        for key, name in (("student_losses", "student_loss"), ("ratios", "ratio"), ("ratio_se", "ratio_se"),
                          ("weights", "weight")):  # fmt: skip
            if key in update:  # an update restored from an earlier release's checkpoint has no ratios
                row[name] = dict(zip(names, update[key], strict=True))
        rows.append(row)
    return rows


@contextmanager
def phase(trainer: DistillationTrainer, what: str) -> Iterator[None]:
    """Print `[phase] what: N s` when a phase of the recipe ends (main process)."""
    start = time.perf_counter()
    yield
    if trainer.is_world_process_zero():
        print(f"[phase] {what} (step {trainer.state.global_step}): {time.perf_counter() - start:.1f} s", flush=True)


def plot_weights(steps: list[int], weights: dict[str, list[float]], path: str) -> None:
    """Save a step plot of the domain weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in weights.items():
        ax.step(steps, values, where="post", label=name, marker="o", markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("sampling weight")
    ax.set_title("DDK domain weights")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_results(output_dir: str, summary: dict[str, Any], table: str, plot: bool) -> None:
    """The local artefacts of a run (main process): the table on stdout, `results.json`, the plot."""
    print("\nPer-domain perplexity on the held-out texts\n" + table)
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    if plot:
        plot_weights(summary["ddk_steps"], summary["ddk_weights"], os.path.join(output_dir, "ddk_weights.png"))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    show_progress()
    try:
        trainer, script, data = build(argv)
    except RecipeError as error:
        fail(str(error), 2)
    args, validation = trainer.args, data["validation"]

    evaluator, names = trainer.domain_evaluator, list(validation)
    batches = evaluator.collate(validation, script.max_eval_batches)
    size = f"{len(names)} domains x {len(batches[0])} batches"

    def domain_losses(model: torch.nn.Module) -> dict[str, float]:  # the held-out batches are collated once
        return dict(zip(names, evaluator.batch_losses(model, batches, names), strict=True))

    # the trainer's teacher (placed and, under ZeRO-3, partitioned); with --teacher_cache it has none: the one loaded
    teacher = trainer.teacher if trainer.teacher is not None else data["teacher"].to(args.device).eval()
    with phase(trainer, f"table: teacher on {size}"):
        results = {"teacher": domain_losses(teacher)}
    if not all(math.isfinite(v) for v in results["teacher"].values()):
        fail(f"the teacher's held-out loss is not finite ({results['teacher']}): check teacher_model's weights.", 1)
    if is_deepspeed_zero3_enabled():  # the student is partitioned at load and only usable inside its engine
        logger.warning("student-before is not measured under DeepSpeed ZeRO-3 (the student is not wrapped yet).")
    else:
        with phase(trainer, f"table: student before training on {size}"):
            results["student-before"] = domain_losses(trainer.model)
    mixture = "static mixture" if args.ddk_update_steps is None else f"DDK every {args.ddk_update_steps} steps"
    try:
        with phase(trainer, f"training, {mixture}"):
            trainer.train(resume_from_checkpoint=data["resume"])
    except (NonFiniteError, EmptyLabelsError) as error:
        fail(f"training stopped: {error}", 1)
    with phase(trainer, f"table: student after training on {size}"):
        results["student-after"] = domain_losses(trainer.model)
    steps, history = weight_history(trainer)
    final = {name: values[-1] for name, values in history.items()}
    summary = {"loss": results, "perplexity": {k: {d: math.exp(v) for d, v in r.items()} for k, r in results.items()}}
    summary.update({"ddk_steps": steps, "ddk_weights": history, "ddk_updates": ddk_updates(trainer)})

    trainer.model_card_info.update(
        dataset_name=script.dataset_name, results=results, teacher_name=script.teacher_model
    )
    table = perplexity_table(results, final)
    save_then_push(trainer, lambda: write_results(args.output_dir, summary, table, script.plot))
    where = os.path.abspath(args.output_dir)
    if trainer.is_world_process_zero():
        pushed = f", pushed to {trainer.hub_model_id}" if args.push_to_hub else ""
        improved = ""
        if "student-before" in results:
            better = sum(results["student-after"][d] < results["student-before"][d] for d in final)
            improved = f"perplexity improved on {better}/{len(final)} domains; "
        files = "results.json, README.md, ddk_weights.png" if script.plot else "results.json, README.md"
        print(
            f"Done: student saved to {where} (safetensors + tokenizer; {files})"
            f"{pushed}; {improved}{trainer.accelerator.num_processes} process(es)."
        )
    trainer.release()  # before the interpreter exits (else a gloo run may abort at exit)
    return summary


if __name__ == "__main__":
    main()
