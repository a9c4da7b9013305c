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
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field

from datasets import DatasetDict, load_dataset
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from hf_distill import DistillationConfig, DistillationTrainer, DomainTermTagger, DSGKDCollator
from hf_distill.metrics import classification_metrics
from hf_distill.recipe_tools.cli import parse_recipe_args

# DSG-KD's defaults; a --config YAML and the command line override them
DEFAULTS = {"gamma": 0.0, "word_hidden_weight": 1.0, "word_attention_weight": 1.0, "report_to": "none"}
_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


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


def load_splits(path: str, seed: int) -> tuple:
    """(train, eval) from a hub name, a data file or a directory of split files."""
    if os.path.isdir(path):
        files = {}
        for name in sorted(os.listdir(path)):
            stem, ext = os.path.splitext(name)
            if ext in _FORMATS and stem in ("train", "validation", "test"):
                files[stem] = os.path.join(path, name)
        if "train" not in files:
            raise SystemExit(f"error: --dataset {path!r} has no train.json/.jsonl/.csv/.parquet file")
        data = load_dataset(_FORMATS[os.path.splitext(files["train"])[1]], data_files=files)
    elif os.path.isfile(path):
        ext = os.path.splitext(path)[1]
        if ext not in _FORMATS:
            raise SystemExit(f"error: --dataset {path!r}: use a {sorted(_FORMATS)} file")
        data = load_dataset(_FORMATS[ext], data_files={"train": path})
    elif os.path.sep in path or path.startswith("."):
        raise SystemExit(f"error: --dataset {path!r} does not exist")
    else:
        data = load_dataset(path)
    data = data if isinstance(data, DatasetDict) else DatasetDict(train=data)
    evaluation = next((data[s] for s in ("validation", "test") if s in data), None)
    if evaluation is None:
        held_out = data["train"].train_test_split(test_size=0.1, seed=seed)
        return held_out["train"], held_out["test"]
    return data["train"], evaluation


def main(argv: list[str]) -> None:
    try:
        script, args = parse_recipe_args((DSGKDArguments, DistillationConfig), argv, defaults=DEFAULTS)
    except ValueError as error:  # RecipeError, or a DistillationConfig check
        raise SystemExit(f"error: {' '.join(str(error).split())}") from None
    train, evaluation = load_splits(script.dataset, args.seed)
    for column in (script.text_column, script.label_column):
        if column not in train.column_names:
            raise SystemExit(f"error: the dataset has no {column!r} column (columns: {train.column_names})")
    num_labels = len(set(train[script.label_column]))
    lexicon = None
    if script.lexicon is not None:
        with open(script.lexicon, encoding="utf-8") as f:
            lexicon = [line for line in f.read().splitlines() if line.strip()]
    tagger = DomainTermTagger(lexicon=lexicon, pattern=script.term_pattern)
    student_tokenizer = AutoTokenizer.from_pretrained(script.student)
    collator = DSGKDCollator(
        student_tokenizer,
        AutoTokenizer.from_pretrained(script.teacher),
        tagger=tagger,
        max_length=script.max_length,
        text_column=script.text_column,
        label_column=script.label_column,
    )
    teacher = AutoModel.from_pretrained(script.teacher, attn_implementation="eager", use_safetensors=True)
    results = {}
    for name, run_args in (
        ("fine-tuning", dataclasses.replace(args, word_hidden_weight=0.0, word_attention_weight=0.0, alpha_ce=1.0)),
        ("DSG-KD", args),
    ):
        student = AutoModelForSequenceClassification.from_pretrained(
            script.student, num_labels=num_labels, attn_implementation="eager", use_safetensors=True
        )
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher if run_args.dsg_kd else None,
            args=run_args,
            train_dataset=train,
            eval_dataset=evaluation,
            data_collator=collator,
            processing_class=student_tokenizer,
            compute_metrics=classification_metrics,
        )
        trainer.train()
        metrics = trainer.evaluate()
        results[name] = {k: metrics[f"eval_{k}"] for k in ("auroc", "auprc", "f1")}
    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():
        with open(os.path.join(args.output_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        print(f"\n{'run':<12} {'AUROC':>8} {'AUPRC':>8} {'F1':>8}")
        for name, row in results.items():
            print(f"{name:<12} {row['auroc']:>8.4f} {row['auprc']:>8.4f} {row['f1']:>8.4f}")
        print(f"DSG-KD student saved to {args.output_dir}")


if __name__ == "__main__":
    main(sys.argv[1:])
