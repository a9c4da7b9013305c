"""On-policy distillation (GKD) of a causal LM on prompt/completion data.

    accelerate launch recipes/on_policy.py                                   # embedded demo, CPU, offline (~10 s)
    accelerate launch recipes/on_policy.py --lmbda 1.0 --divergence reverse_kl
    accelerate launch recipes/on_policy.py --lmbda 0.0 --seq_kd true         # sequence-level KD (teacher samples)
    accelerate launch recipes/on_policy.py --dataset data.jsonl --teacher_model T --student_model S

`--dataset` is either a directory with one JSON Lines / JSON / Parquet / CSV file of texts per domain (the demo corpus;
each text is cut after `--prompt_fraction` of its words into a prompt and its completion), or one such file with
`prompt` / `completion` columns or a conversational `messages` column (TRL's formats; one domain). `--validation_size`
examples per domain are held out. With probability `--lmbda` a batch's completions are sampled from the student and
scored by the teacher (`--seq_kd true`: the other batches use the teacher's samples); the logit terms are taken on the
completion tokens only. The recipe prints the perplexity of the teacher and of the student before and after training on
each domain's held-out completions, and the completions of a few held-out prompts (student before, student after,
teacher, greedy), then saves the student (safetensors), `results.json` and its model card in `--output_dir`.
Arguments are the fields of `OnPolicyArguments` below and of `hf_distill.DistillationConfig`, from a YAML file
(`--config`) and the command line; bad values end the run with one `error: ...` line (exit code 2).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.integrations import is_deepspeed_zero3_enabled

from hf_distill import (
    DistillationConfig,
    DistillationTrainer,
    EmptyLabelsError,
    NonFiniteError,
    PromptCompletionCollator,
)
from hf_distill.ddk.data import split_by_domain
from hf_distill.recipe_tools.cli import (
    RecipeError,
    load_or_refuse,
    parse_recipe_args,
    refuse_evaluation_during_training,
    warn_command_line_token,
    with_cpu_processes,
)
from hf_distill.recipe_tools.corpus import (
    deduplicate,
    first_per_domain,
    hold_out,
    load_data_files,
    load_domain_corpus,
)
from hf_distill.recipe_tools.publish import fail, save_then_push
from hf_distill.recipe_tools.resume import resume_point
from hf_distill.validation import NumberRule, check_numbers

from . import DEMO

# the embedded default (GKD's mixed setting: half the batches on-policy, JSD(0.5)); --config and the command line win
DEFAULTS = {
    "output_dir": "outputs/on-policy-demo", "lmbda": 0.5, "alpha_ce": 0.0, "gamma": 1.0, "divergence": "jsd",
    "jsd_beta": 0.5, "max_new_tokens": 24, "max_steps": 40, "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 16, "learning_rate": 1e-3, "logging_steps": 5, "save_strategy": "no",
    "report_to": "none", "dataloader_pin_memory": False, "seed": 0,
}  # fmt: skip


@dataclass
class OnPolicyArguments:
    """Models and data of the on-policy recipe (training and distillation settings are `DistillationConfig` fields)."""

    teacher_model: str = field(default=os.path.join(DEMO, "teacher"), metadata={"help": "Teacher: hub name or path."})
    student_model: str = field(default=os.path.join(DEMO, "student"), metadata={"help": "Student: hub name or path."})
    dataset: str = field(
        default=os.path.join(DEMO, "corpus"),
        metadata={"help": "A directory of per-domain text files, or one prompt/completion (or messages) data file."},
    )
    prompt_fraction: float = field(
        default=0.4, metadata={"help": "Texts of a corpus directory: the share of their words that is the prompt."}
    )
    examples_per_domain: int | None = field(default=200, metadata={"help": "At most this many texts per domain."})
    validation_size: int = field(default=16, metadata={"help": "Examples held out per domain for the table."})
    max_length: int = field(default=96, metadata={"help": "Longest training sequence (prompt + completion)."})
    max_prompt_length: int = field(default=48, metadata={"help": "Longest prompt (its last tokens are kept)."})
    num_samples: int = field(default=3, metadata={"help": "Held-out prompts whose completions are printed."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Remove the checkpoints of --output_dir and start over (otherwise the run resumes)."},
    )

    def __post_init__(self):
        check_numbers(self, {
            "prompt_fraction": NumberRule(low=0, high=1, low_open=True, high_open=True),
            "examples_per_domain": NumberRule(low=2), "validation_size": NumberRule(low=1),
            "max_length": NumberRule(low=2), "max_prompt_length": NumberRule(low=1), "num_samples": NumberRule(low=0),
        })  # fmt: skip


def cut(text: str, fraction: float) -> dict[str, str]:
    """A text as a prompt (its first `fraction` of words, at least one; of characters for a text of one word) and
    the rest as the completion."""
    words = text.split(" ")
    if len(words) < 2:
        n = min(len(text) - 1, max(1, round(fraction * len(text))))
        return {"prompt": text[:n], "completion": text[n:]}
    n = min(len(words) - 1, max(1, round(fraction * len(words))))
    return {"prompt": " ".join(words[:n]), "completion": " " + " ".join(words[n:])}


def load_examples(script: OnPolicyArguments, seed: int) -> tuple[dict[str, Dataset], dict[str, Dataset]]:
    """(training, held-out) prompt/completion examples per domain."""
    path = script.dataset
    if os.path.isdir(path):
        corpus, _ = deduplicate(load_domain_corpus(path))
        columns = [c for c in corpus.column_names if c != "domain"]
        corpus = corpus.map(lambda row: cut(row["text"], script.prompt_fraction), remove_columns=columns)
    elif os.path.isfile(path):
        try:
            corpus = load_data_files({"train": path})["train"]
        except ValueError as error:
            raise RecipeError(f"--dataset: {error}") from error
        if not {"prompt", "messages"} & set(corpus.column_names):
            raise RecipeError(f"--dataset {path!r} has neither a prompt nor a messages column ({corpus.column_names})")
        corpus = corpus.add_column("domain", ["all"] * len(corpus))
    else:
        raise RecipeError(f"--dataset {path!r} does not exist: give a corpus directory or a prompt/completion file")
    if script.examples_per_domain is not None:
        corpus = first_per_domain(corpus, script.examples_per_domain)
    try:
        train, held = hold_out(corpus, script.validation_size, seed=seed)
    except ValueError as error:
        raise RecipeError(f"--validation_size {script.validation_size}: {error}") from None
    return split_by_domain(train), held


@torch.no_grad()
def greedy(model: torch.nn.Module, collator: PromptCompletionCollator, rows: list[dict[str, Any]], tokens: int):
    """Greedy completions of the rows' prompts (one at a time, unpadded)."""
    was = model.training
    model.eval()
    texts = []
    for row in rows:
        prompt, _ = collator.encode(row)
        ids = torch.tensor([prompt], device=next(model.parameters()).device)
        out = model.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=collator.tokenizer.pad_token_id)
        texts.append(collator.tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True))
    model.train(was)
    return texts


def main(argv: list[str] | None = None) -> None:
    try:
        argv = with_cpu_processes(argv)
        script, args = parse_recipe_args((OnPolicyArguments, DistillationConfig), argv, defaults=DEFAULTS)
        warn_command_line_token(argv)
        refuse_evaluation_during_training(args, "recipes/on_policy.py")
        # first: starts the process group (ZeRO-3 partitions the models as they load) and finds the checkpoint
        with args.main_process_first(desc="find a checkpoint to resume from"):
            resume = resume_point(args.output_dir, args.resume_from_checkpoint, script.overwrite_output_dir, args)
        tokenizer = load_or_refuse(AutoTokenizer.from_pretrained, script.student_model, "student_model")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        collator = PromptCompletionCollator(tokenizer, script.max_length, script.max_prompt_length)
        train, held = load_examples(script, args.seed)
        load = AutoModelForCausalLM.from_pretrained
        teacher = load_or_refuse(load, script.teacher_model, "teacher_model", use_safetensors=True)
        student = load_or_refuse(load, script.student_model, "student_model", use_safetensors=True)
    except (RecipeError, ValueError) as error:
        fail(" ".join(str(error).split()), 2)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=train, data_collator=collator,
        processing_class=tokenizer,
    )  # fmt: skip
    samples = [held[name][0] for name in held][: script.num_samples]
    table = {"teacher": trainer.evaluate_domains(trainer.teacher, held)}
    before = [None] * len(samples)
    if not is_deepspeed_zero3_enabled():  # under ZeRO-3 the student is only usable inside its engine
        table["student-before"] = trainer.evaluate_domains(datasets=held)
        before = greedy(trainer.student, collator, samples, args.max_new_tokens)
    try:
        trainer.train(resume_from_checkpoint=resume)
    except (NonFiniteError, EmptyLabelsError) as error:
        fail(f"training stopped: {error}", 1)
    table["student-after"] = trainer.evaluate_domains(datasets=held)
    after = greedy(trainer.student, collator, samples, args.max_new_tokens)
    teacher_text = greedy(trainer.accelerator.unwrap_model(trainer.teacher), collator, samples, args.max_new_tokens)
    shown = [
        {"prompt": collator.texts(row)[0], "student-before": b, "student-after": a, "teacher": t}
        for row, b, a, t in zip(samples, before, after, teacher_text, strict=True)
    ]

    def write_local() -> None:
        perplexity = {run: {d: math.exp(ce) for d, ce in values.items()} for run, values in table.items()}
        with open(os.path.join(args.output_dir, "results.json"), "w") as f:
            summary = {"perplexity": perplexity, "samples": shown, "processes": trainer.accelerator.num_processes}
            json.dump({**summary, "log_history": trainer.state.log_history}, f, indent=2)
        print(f"\nper-domain perplexity of the held-out completions\n{'domain':<12}" + "".join(
            f"{run:>16}" for run in perplexity))  # fmt: skip
        for domain in held:
            print(f"{domain:<12}" + "".join(f"{perplexity[run][domain]:>16.3f}" for run in perplexity))
        for sample in shown:
            print(f"\nprompt:         {sample['prompt']!r}")
            for who in ("student-before", "student-after", "teacher"):
                if sample[who] is not None:
                    print(f"{who + ':':<16}{sample[who]!r}")

    save_then_push(trainer, write_local)
    if trainer.is_world_process_zero():
        print(f"\nstudent saved to {args.output_dir}")
    trainer.release()


if __name__ == "__main__":
    main(sys.argv[1:])
