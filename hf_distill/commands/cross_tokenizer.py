"""Cross-tokenizer distillation: a student on one tokenizer learns from a teacher on another, with the span-aligned
terms (TRL GOLD's merged probabilities: KD on the tokens both vocabularies hold, ULD on the rest), and DDK re-weighting
the domains on bits per byte.

    accelerate launch recipes/cross_tokenizer.py                              # embedded demo, CPU, offline (~1 min)
    accelerate launch recipes/cross_tokenizer.py --uld_weight 1 --span_kd_weight 0 --span_uld_weight 0   # plain ULD
    accelerate launch recipes/cross_tokenizer.py --teacher_model T --student_model S --dataset corpus_dir/

The embedded demo: the demo teacher (a 4-layer Llama on a GPT-2-style byte-level BPE without BOS, pretrained on the
four demo domains) and a student of the demo student's architecture initialised afresh on the shipped Llama-style
SentencePiece BPE (`hf_distill/demo/llama_tokenizer/`: `▁` word starts, `<s>` BOS): two tokenizer families, two
vocabularies (384 and 448 tokens) that share only the strings both hold. `--dataset` is a directory with one JSON Lines
/ JSON / Parquet / CSV file of texts per domain (the demo corpus); `--validation_size` texts per domain are held out
for DDK and for the table. The recipe prints each domain's bits per byte of the teacher and of the student before and
after training (each model on its own tokenization, over the characters both cover), then saves the student
(safetensors), its tokenizer, `results.json` and its model card in `--output_dir`. Arguments are the fields of
`CrossTokenizerArguments` below and of `hf_distill.DistillationConfig`, from a YAML file (`--config`) and the command
line; bad values end the run with one `error: ...` line (exit code 2).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field

from datasets import Dataset, concatenate_datasets
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, set_seed
from transformers.integrations import is_deepspeed_zero3_enabled

from hf_distill import (
    CrossTokenizerCollator,
    DistillationConfig,
    DistillationTrainer,
    EmptyLabelsError,
    NonFiniteError,
)
from hf_distill.recipe_tools.cli import (
    RecipeError,
    load_or_refuse,
    parse_recipe_args,
    refuse_evaluation_during_training,
    warn_command_line_token,
    with_cpu_processes,
)
from hf_distill.recipe_tools.corpus import deduplicate, first_per_domain, hold_out, load_domain_corpus
from hf_distill.recipe_tools.publish import fail, save_then_push
from hf_distill.recipe_tools.resume import resume_point
from hf_distill.validation import NumberRule, check_numbers

from . import DEMO

# the embedded default: CE on the student's tokens + span KD / span ULD (GOLD's hybrid), DDK every 20 steps
DEFAULTS = {
    "output_dir": "outputs/cross-tokenizer-demo", "alpha_ce": 0.5, "gamma": 0.0, "span_kd_weight": 1.0,
    "span_uld_weight": 1.0, "domain_column": "domain", "ddk_update_steps": 20, "max_steps": 80,
    "per_device_train_batch_size": 16, "per_device_eval_batch_size": 16, "learning_rate": 3e-3,
    "lr_scheduler_type": "cosine", "warmup_steps": 8, "logging_steps": 10, "save_strategy": "no", "report_to": "none",
    "dataloader_pin_memory": False, "seed": 0,
}  # fmt: skip


@dataclass
class CrossTokenizerArguments:
    """Models and data of the cross-tokenizer recipe (training and distillation settings are `DistillationConfig`
    fields)."""

    teacher_model: str = field(
        default=os.path.join(DEMO, "teacher"), metadata={"help": "Teacher (hub name or path), with its tokenizer."}
    )
    student_model: str | None = field(
        default=None,
        metadata={
            "help": "Student (hub name or path). Unset: the demo student's architecture, initialised afresh on the "
            "vocabulary of --student_tokenizer."
        },
    )
    student_tokenizer: str | None = field(
        default=None,
        metadata={"help": "The student's tokenizer; defaults to --student_model's (the demo: the Llama-style one)."},
    )
    dataset: str = field(
        default=os.path.join(DEMO, "corpus"), metadata={"help": "A directory with one text file per domain."}
    )
    examples_per_domain: int | None = field(default=400, metadata={"help": "At most this many texts per domain."})
    validation_size: int = field(default=24, metadata={"help": "Texts held out per domain (DDK and the table)."})
    max_length: int = field(default=96, metadata={"help": "Truncation length of both tokenizations."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Remove the checkpoints of --output_dir and start over (otherwise the run resumes)."},
    )

    def __post_init__(self):
        check_numbers(self, {
            "examples_per_domain": NumberRule(low=2), "validation_size": NumberRule(low=1),
            "max_length": NumberRule(low=4, hint="tokens per text"),
        })  # fmt: skip


def load_texts(script: CrossTokenizerArguments, seed: int) -> tuple[Dataset, dict[str, Dataset]]:
    """(training texts of every domain, held-out texts per domain)."""
    if not os.path.isdir(script.dataset):
        raise RecipeError(f"--dataset {script.dataset!r} is not a directory with one text file per domain")
    try:
        corpus, _ = deduplicate(load_domain_corpus(script.dataset))
    except ValueError as error:
        raise RecipeError(f"--dataset: {error}") from None
    if script.examples_per_domain is not None:
        corpus = first_per_domain(corpus, script.examples_per_domain)
    try:
        return hold_out(corpus, script.validation_size, seed=seed)
    except ValueError as error:
        raise RecipeError(f"--validation_size {script.validation_size}: {error}") from None


def load_student(script: CrossTokenizerArguments, seed: int):
    """(student, its tokenizer): `--student_model`, or the demo student's architecture afresh on the tokenizer."""
    name = script.student_tokenizer or script.student_model or os.path.join(DEMO, "llama_tokenizer")
    tokenizer = load_or_refuse(AutoTokenizer.from_pretrained, name, "student_tokenizer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if script.student_model is not None:
        load = AutoModelForCausalLM.from_pretrained
        return load_or_refuse(load, script.student_model, "student_model", use_safetensors=True), tokenizer
    config = AutoConfig.from_pretrained(os.path.join(DEMO, "student"))
    config.vocab_size = len(tokenizer)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    set_seed(seed)
    return AutoModelForCausalLM.from_config(config), tokenizer


def main(argv: list[str] | None = None) -> None:
    try:
        argv = with_cpu_processes(argv)
        script, args = parse_recipe_args((CrossTokenizerArguments, DistillationConfig), argv, defaults=DEFAULTS)
        warn_command_line_token(argv)
        refuse_evaluation_during_training(args, "recipes/cross_tokenizer.py")
        with args.main_process_first(desc="find a checkpoint to resume from"):
            resume = resume_point(args.output_dir, args.resume_from_checkpoint, script.overwrite_output_dir, args)
        train, held = load_texts(script, args.seed)
        teacher_tokenizer = load_or_refuse(AutoTokenizer.from_pretrained, script.teacher_model, "teacher_model")
        if teacher_tokenizer.pad_token is None:
            teacher_tokenizer.pad_token = teacher_tokenizer.eos_token
        load = AutoModelForCausalLM.from_pretrained
        teacher = load_or_refuse(load, script.teacher_model, "teacher_model", use_safetensors=True)
        student, tokenizer = load_student(script, args.seed)
        collator = CrossTokenizerCollator(tokenizer, teacher_tokenizer, max_length=script.max_length)
    except (RecipeError, ValueError) as error:
        fail(" ".join(str(error).split()), 2)
    held_out = concatenate_datasets(list(held.values()))
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=train, data_collator=collator,
        processing_class=tokenizer, ddk_eval_dataset=held_out if args.ddk_update_steps is not None else None,
    )  # fmt: skip
    table = {"teacher": trainer.evaluate_domains(trainer.teacher, held)}
    if not is_deepspeed_zero3_enabled():  # under ZeRO-3 the student is only usable inside its engine
        table["student-before"] = trainer.evaluate_domains(datasets=held)
    try:
        trainer.train(resume_from_checkpoint=resume)
    except (NonFiniteError, EmptyLabelsError) as error:
        fail(f"training stopped: {error}", 1)
    table["student-after"] = trainer.evaluate_domains(datasets=held)

    def write_local() -> None:
        bits = {run: {d: nats / math.log(2) for d, nats in values.items()} for run, values in table.items()}
        with open(os.path.join(args.output_dir, "results.json"), "w") as f:
            summary = {"bits_per_byte": bits, "processes": trainer.accelerator.num_processes}
            json.dump({**summary, "log_history": trainer.state.log_history}, f, indent=2)
        print(f"\nper-domain bits per byte of the held-out texts (each model on its own tokenization)\n{'domain':<12}"
              + "".join(f"{run:>16}" for run in bits))  # fmt: skip
        for domain in held:
            print(f"{domain:<12}" + "".join(f"{bits[run][domain]:>16.3f}" for run in bits))

    save_then_push(trainer, write_local)
    if trainer.is_world_process_zero():
        print(f"\nstudent saved to {args.output_dir}")
    trainer.release()


if __name__ == "__main__":
    main(sys.argv[1:])
