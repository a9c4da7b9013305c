"""DDK distillation of a causal LM on a multi-domain corpus: the main job of hf_distill.

    accelerate launch recipes/ddk.py                                             # embedded demo, CPU, offline
    accelerate launch recipes/ddk.py --max_steps 100 --ddk_update_steps 20       # command line overrides
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/ddk.py \\
        --config recipes/configs/qwen2.5-1.5b-to-0.5b-ddk.yaml

Arguments are the fields of `ScriptArguments` below and of `hf_distill.DistillationConfig` (every
`TrainingArguments` field included), read from a YAML file (`--config`, default `recipes/configs/demo.yaml`) and
overridden on the command line. The recipe loads teacher and student, loads the corpus (hub name with a domain
column, a local JSON/Parquet/CSV file, or a directory with one file per domain), holds out `validation_size` texts
per domain, tokenizes and packs, trains with DDK, prints the per-domain perplexity of the teacher, the student
before and the student after, plots the DDK domain weights over the steps, saves the student (safetensors and
tokenizer), `results.json` and its model card (`README.md`) and, with `--push_to_hub`, then pushes it.

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
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, default_data_collator
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.utils import logging

from hf_distill import DistillationConfig, DistillationTrainer, EmptyLabelsError, NonFiniteError
from hf_distill.recipe_tools.cli import RecipeError, load_or_refuse, parse_recipe_args, warn_command_line_token
from hf_distill.recipe_tools.corpus import hold_out, load_domain_corpus, pack_texts
from hf_distill.recipe_tools.publish import fail, save_then_push
from hf_distill.recipe_tools.resume import resume_point
from hf_distill.validation import NumberRule, check_numbers

logger = logging.get_logger("recipes.ddk")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "recipes", "configs", "demo.yaml")


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
    validation_size: int = field(
        default=64, metadata={"help": "Texts held out per domain for DDK and for the perplexity table."}
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

    def __post_init__(self):
        check_numbers(self, SCRIPT_NUMBER_RULES)


SCRIPT_NUMBER_RULES = {
    "block_size": NumberRule(low=2, hint="tokens per training block"),
    "validation_size": NumberRule(low=1, hint="held-out texts per domain"),
    "max_eval_batches": NumberRule(low=1, hint="unset evaluates every held-out block"),
}


def _has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def _local(path: str | None) -> str | None:
    """A relative path that does not exist from here but does from the repository root is taken from there."""
    if path and not os.path.exists(path) and os.path.exists(os.path.join(REPO, path)):
        return os.path.join(REPO, path)
    return path


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
    argv = list(sys.argv[1:] if argv is None else argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _has_accelerator():
        argv = ["--use_cpu", "true", *argv]  # e.g. accelerate_configs/cpu.yaml: several processes on CPU (gloo)
    try:
        script, args = parse_recipe_args((ScriptArguments, DistillationConfig), argv, DEFAULT_CONFIG)
    except ValueError as error:  # RecipeError, or a DistillationConfig / TrainingArguments check
        raise RecipeError(" ".join(str(error).split())) from error
    for name in ("teacher_model", "student_model", "dataset_name"):
        if getattr(script, name) is None:
            raise RecipeError(f"{name} is not set: pass --{name} or set it in the --config YAML.")
        setattr(script, name, _local(getattr(script, name)))
    if args.ddk_update_steps is None:
        raise RecipeError("ddk_update_steps is not set: this recipe trains with DDK (e.g. --ddk_update_steps 100).")
    warn_command_line_token(argv)
    _check_block_size(script)
    with args.main_process_first(desc="find a checkpoint to resume from"):
        resume = resume_point(args.output_dir, args.resume_from_checkpoint, script.overwrite_output_dir)

    try:
        corpus = load_domain_corpus(
            script.dataset_name,
            args.domain_column,
            script.text_column,
            script.dataset_config,
            script.dataset_split,
            script.data_files,
        )
    except (FileNotFoundError, ValueError) as error:
        raise RecipeError(f"--dataset_name {script.dataset_name}: {error}") from error
    try:
        train_texts, held_out = hold_out(corpus, script.validation_size, args.domain_column, args.seed)
    except ValueError as error:
        raise RecipeError(f"--validation_size {script.validation_size}: {error}") from error
    tokenizer = load_or_refuse(
        AutoTokenizer.from_pretrained,
        script.student_model,
        "student_model",
        trust_remote_code=script.trust_remote_code,
    )
    _check_tokenizers(script, tokenizer)
    with args.main_process_first(desc="tokenize and pack"):
        try:
            train = pack_texts(train_texts, tokenizer, script.block_size, script.text_column, args.domain_column)
            validation = {
                name: pack_texts(texts, tokenizer, script.block_size, script.text_column, None)
                for name, texts in held_out.items()
            }
        except ValueError as error:
            raise RecipeError(str(error)) from error

    compute_dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    student = _load_causal_lm(script.student_model, "student", script, torch.float32)
    teacher = _load_causal_lm(script.teacher_model, "teacher", script, compute_dtype)
    try:
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=train,
            ddk_eval_dataset=validation,
            processing_class=tokenizer,
            data_collator=default_data_collator,
        )
    except ValueError as error:
        raise RecipeError(" ".join(str(error).split())) from error
    return trainer, script, {"validation": validation, "corpus": corpus, "resume": resume}


def perplexity_table(results: dict[str, dict[str, float]], weights: dict[str, float]) -> str:
    """The per-domain table: perplexity of teacher, student before and after, and the final DDK weight."""
    columns = list(results)
    lines = [f"{'domain':<14}" + "".join(f"{c:>16}" for c in columns) + f"{'DDK weight':>12}"]
    for domain in weights:
        cells = "".join(f"{math.exp(results[c][domain]):>16.3f}" for c in columns)
        lines.append(f"{domain:<14}{cells}{weights[domain]:>12.3f}")
    return "\n".join(lines)


def weight_history(trainer: DistillationTrainer) -> tuple[list[int], dict[str, list[float]]]:
    """DDK's domain weights at step 0 and after every update."""
    names = trainer.domain_sampler.domain_names
    steps = [0] + [update["step"] for update in trainer.ddk_callback.updates]
    rows = [trainer.domain_sampler.history[0][1]] + [update["weights"] for update in trainer.ddk_callback.updates]
    return steps, {name: [row[i] for row in rows] for i, name in enumerate(names)}


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
    try:
        trainer, script, data = build(argv)
    except RecipeError as error:
        fail(str(error), 2)
    args, validation = trainer.args, data["validation"]

    evaluator, names = trainer.domain_evaluator, list(validation)
    batches = evaluator.collate(validation, script.max_eval_batches)

    def domain_losses(model: torch.nn.Module) -> dict[str, float]:  # the held-out batches are collated once
        return dict(zip(names, evaluator.batch_losses(model, batches, names), strict=True))

    results = {"teacher": domain_losses(trainer.teacher)}
    if is_deepspeed_zero3_enabled():  # the student is partitioned at load and only usable inside its engine
        logger.warning("student-before is not measured under DeepSpeed ZeRO-3 (the student is not wrapped yet).")
    else:
        results["student-before"] = domain_losses(trainer.model)
    if not all(math.isfinite(v) for v in results["teacher"].values()):
        fail(f"the teacher's held-out loss is not finite ({results['teacher']}): check teacher_model's weights.", 1)
    try:
        trainer.train(resume_from_checkpoint=data["resume"])
    except (NonFiniteError, EmptyLabelsError) as error:
        fail(f"training stopped: {error}", 1)
    results["student-after"] = domain_losses(trainer.model)
    steps, history = weight_history(trainer)
    final = {name: values[-1] for name, values in history.items()}
    summary = {"loss": results, "perplexity": {k: {d: math.exp(v) for d, v in r.items()} for k, r in results.items()}}
    summary.update({"ddk_steps": steps, "ddk_weights": history})

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
        print(
            f"Done: student saved to {where} (safetensors + tokenizer; results.json, README.md, ddk_weights.png)"
            f"{pushed}; {improved}{trainer.accelerator.num_processes} process(es)."
        )
    return summary


if __name__ == "__main__":
    main()
