"""DSG-KD: fine-tune a general student on a classification task while it matches a domain-specific teacher's hidden
states and attention maps on domain-knowledge words, across two tokenizers; compare with plain fine-tuning.

    python recipes/dsg_kd.py --student klue/bert-base --teacher madatnlp/km-bert \
        --dataset data/ --text_column text --label_column label --output_dir out/dsg-kd
    accelerate launch recipes/dsg_kd.py ...     # same, on every configured device
    accelerate launch recipes/dsg_kd.py --config recipes/configs/bert-dsg-kd.yaml   # values from YAML, CLI wins

`--dataset` is a hub dataset name, a local JSON / JSON Lines / CSV / Parquet file, or a directory holding
`train.*` and `test.*` (or `validation.*`) files. Without an evaluation split, 10% of the training set is held out.
Both runs use the same seed and settings; the table printed at the end gives AUROC, AUPRC and F1 of each on the
evaluation split, `results.json` keeps them, and the DSG-KD student is saved (safetensors) in `--output_dir`.
Domain words default to Latin-script runs in non-Latin text (English terms in Korean notes); `--lexicon FILE`
(one term per line) or `--term_pattern REGEX` replaces the rule.

Each run keeps its checkpoints in its own folder (`OUTPUT_DIR/fine-tuning`, `OUTPUT_DIR/dsg-kd`); re-started with the
same `--output_dir`, each run resumes from its newest complete checkpoint (`--overwrite_output_dir true` starts over).
Bad values, files and NaN losses end the run with one `error: ...` line, as in `recipes/ddk.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from datasets import DatasetDict, load_dataset
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from hf_distill import (
    DistillationConfig,
    DistillationTrainer,
    DomainTermTagger,
    DSGKDCollator,
    EmptyLabelsError,
    NonFiniteError,
)
from hf_distill.files import read_text_file
from hf_distill.metrics import classification_metrics
from hf_distill.recipe_tools.cli import RecipeError, load_or_refuse, parse_recipe_args, warn_command_line_token
from hf_distill.recipe_tools.corpus import FILE_BUILDERS, load_data_files
from hf_distill.recipe_tools.publish import fail, save_then_push
from hf_distill.recipe_tools.resume import resume_point
from hf_distill.validation import NumberRule, check_numbers

# DSG-KD's defaults; a --config YAML and the command line override them
DEFAULTS = {"gamma": 0.0, "word_hidden_weight": 1.0, "word_attention_weight": 1.0, "report_to": "none"}


@dataclass
class DSGKDArguments:
    student: str = field(metadata={"help": "Student model (hub id or local path), e.g. a multilingual BERT."})
    teacher: str = field(metadata={"help": "Domain-specific teacher (hub id or local path), own tokenizer."})
    dataset: str = field(metadata={"help": "Hub dataset name, a local data file, or a directory of split files."})
    text_column: str = field(default="text", metadata={"help": "Column of the raw text."})
    label_column: str = field(default="label", metadata={"help": "Column of the class label (int)."})
    max_length: int = field(default=128, metadata={"help": "Truncation length of both tokenizations."})
    lexicon: str | None = field(default=None, metadata={"help": "File of domain terms, one per line."})
    term_pattern: str | None = field(default=None, metadata={"help": "Regex that finds domain terms."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Remove the runs' checkpoints in --output_dir and start over (otherwise they resume)."},
    )

    def __post_init__(self):
        check_numbers(self, {"max_length": NumberRule(low=2, hint="tokens per example")})


def _load_files(files: dict[str, str]) -> DatasetDict:
    try:
        return load_data_files(files)
    except ValueError as error:
        raise RecipeError(f"--dataset: {error}") from error


def load_splits(path: str, seed: int) -> tuple:
    """(train, eval) from a hub name, a data file or a directory of split files."""
    if os.path.isdir(path):
        files = {}
        for name in sorted(os.listdir(path)):
            stem, ext = os.path.splitext(name)
            if ext in FILE_BUILDERS and stem in ("train", "validation", "test"):
                files[stem] = os.path.join(path, name)
        if "train" not in files:
            raise RecipeError(f"--dataset {path!r} has no train.json/.jsonl/.csv/.parquet file")
        data = _load_files({"train": files.pop("train"), **files})  # the train file's type reads every split
    elif os.path.isfile(path):
        ext = os.path.splitext(path)[1]
        if ext not in FILE_BUILDERS:
            raise RecipeError(f"--dataset {path!r}: use a {sorted(FILE_BUILDERS)} file")
        data = _load_files({"train": path})
    elif os.path.sep in path or path.startswith("."):
        raise RecipeError(f"--dataset {path!r} does not exist")
    else:
        data = load_dataset(path)
    data = data if isinstance(data, DatasetDict) else DatasetDict(train=data)
    evaluation = next((data[s] for s in ("validation", "test") if s in data), None)
    if evaluation is None:
        held_out = data["train"].train_test_split(test_size=0.1, seed=seed)
        return held_out["train"], held_out["test"]
    return data["train"], evaluation


def prepare(argv: list[str]) -> tuple[DSGKDArguments, DistillationConfig, dict[str, Any]]:
    """Arguments, data, tokenizers, collator and teacher; any bad input is a [`RecipeError`]."""
    try:
        script, args = parse_recipe_args((DSGKDArguments, DistillationConfig), argv, defaults=DEFAULTS)
    except ValueError as error:  # RecipeError, or a DistillationConfig check
        raise RecipeError(" ".join(str(error).split())) from None
    warn_command_line_token(argv)
    if args.resume_from_checkpoint not in (None, "true", "True"):
        raise RecipeError(
            f"--resume_from_checkpoint {args.resume_from_checkpoint}: this recipe trains two students, each with "
            "its own checkpoints in --output_dir; use --resume_from_checkpoint true (each resumes from its newest)."
        )
    train, evaluation = load_splits(script.dataset, args.seed)
    for column in (script.text_column, script.label_column):
        if column not in train.column_names:
            raise RecipeError(f"the dataset has no {column!r} column (columns: {train.column_names})")
    lexicon = None
    if script.lexicon is not None:
        try:
            lexicon = [line for line in read_text_file(script.lexicon).splitlines() if line.strip()]
        except ValueError as error:
            raise RecipeError(f"--lexicon {error}") from None
    student_tokenizer = load_or_refuse(AutoTokenizer.from_pretrained, script.student, "student")
    collator = DSGKDCollator(
        student_tokenizer,
        load_or_refuse(AutoTokenizer.from_pretrained, script.teacher, "teacher"),
        tagger=DomainTermTagger(lexicon=lexicon, pattern=script.term_pattern),
        max_length=script.max_length,
        text_column=script.text_column,
        label_column=script.label_column,
    )
    teacher = load_or_refuse(AutoModel.from_pretrained, script.teacher, "teacher", attn_implementation="eager",
                    use_safetensors=True)  # fmt: skip
    parts = {"train": train, "evaluation": evaluation, "collator": collator, "tokenizer": student_tokenizer}
    return script, args, {**parts, "teacher": teacher, "num_labels": len(set(train[script.label_column]))}


def run(name: str, run_args: DistillationConfig, script: DSGKDArguments, parts: dict[str, Any]) -> DistillationTrainer:
    """Train one student in `output_dir/<name>` (resuming from its newest complete checkpoint) and evaluate it."""
    with run_args.main_process_first(desc="find a checkpoint to resume from"):
        resume = resume_point(run_args.output_dir, run_args.resume_from_checkpoint, script.overwrite_output_dir,
                              run_args)  # fmt: skip
    student = load_or_refuse(AutoModelForSequenceClassification.from_pretrained, script.student, "student",
                    num_labels=parts["num_labels"], attn_implementation="eager", use_safetensors=True)  # fmt: skip
    trainer = DistillationTrainer(
        model=student,
        teacher_model=parts["teacher"] if run_args.dsg_kd else None,
        args=run_args,
        train_dataset=parts["train"],
        eval_dataset=parts["evaluation"],
        data_collator=parts["collator"],
        processing_class=parts["tokenizer"],
        compute_metrics=classification_metrics,
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def main(argv: list[str] | None = None) -> None:
    try:
        script, args, parts = prepare(argv)
        plain = {"word_hidden_weight": 0.0, "word_attention_weight": 0.0, "alpha_ce": 1.0, "push_to_hub": False}
        runs = {  # each run keeps its checkpoints in output_dir/<name, lower case>
            name: dataclasses.replace(args, output_dir=os.path.join(args.output_dir, name.lower()), **changes)
            for name, changes in (("fine-tuning", plain), ("DSG-KD", {}))
        }
    except RecipeError as error:
        fail(" ".join(str(error).split()), 2)
    results = {}
    for name, run_args in runs.items():
        try:
            trainer = run(name, run_args, script, parts)
        except RecipeError as error:
            fail(str(error), 2)
        except (NonFiniteError, EmptyLabelsError) as error:
            fail(f"training stopped ({name}): {error}", 1)
        metrics = trainer.evaluate()
        results[name] = {k: metrics[f"eval_{k}"] for k in ("auroc", "auprc", "f1")}
    trainer.args.output_dir = args.output_dir  # the DSG-KD student is saved at the top of --output_dir

    def write_local() -> None:
        with open(os.path.join(args.output_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        print(f"\n{'run':<12} {'AUROC':>8} {'AUPRC':>8} {'F1':>8}")
        for name, row in results.items():
            print(f"{name:<12} {row['auroc']:>8.4f} {row['auprc']:>8.4f} {row['f1']:>8.4f}")

    save_then_push(trainer, write_local)
    if trainer.is_world_process_zero():
        print(f"DSG-KD student saved to {args.output_dir}")
    trainer.release()  # the last trainer only: the first run's processes still share the group for the second


if __name__ == "__main__":
    main(sys.argv[1:])
