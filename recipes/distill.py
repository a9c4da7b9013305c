"""Distil a tiny teacher into a smaller student on an embedded synthetic corpus, offline, on CPU in about a minute.

    accelerate launch recipes/distill.py                      # the embedded default
    accelerate launch recipes/distill.py --max_steps 300 --temperature 2 --hidden_weight 1

The corpus is generated from a seed: sequences that follow `x[i+1] = (a * x[i] + b) mod V` for a handful of
`(a, b)` rules, with a little noise. A 4-layer teacher first learns it (plain fine-tuning through the same trainer
with every distillation weight at 0); a 2-layer, narrower student is then distilled from it with logit KD and
hidden-state matching. The script prints teacher / student-before / student-after evaluation loss and perplexity
and saves the student (safetensors) to `--output_dir`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field

import torch
from datasets import Dataset
from transformers import HfArgumentParser, LlamaConfig, LlamaForCausalLM

from hf_distill import DistillationConfig, DistillationTrainer

VOCAB = 64


@dataclass
class DemoArguments:
    teacher_steps: int = field(default=300, metadata={"help": "Steps of plain training that make the teacher."})
    num_sequences: int = field(default=512, metadata={"help": "Size of the synthetic training corpus."})
    seq_len: int = field(default=32, metadata={"help": "Tokens per sequence."})


def synthetic_corpus(n: int, seq_len: int, seed: int) -> Dataset:
    """Sequences of affine rules modulo VOCAB with 5% noise tokens."""
    g = torch.Generator().manual_seed(seed)
    rules = [(3, 1), (5, 7), (7, 3), (11, 5)]
    rows = []
    for i in range(n):
        a, b = rules[i % len(rules)]
        x = [int(torch.randint(0, VOCAB, (1,), generator=g))]
        for _ in range(seq_len - 1):
            noise = torch.rand(1, generator=g).item() < 0.05
            x.append(int(torch.randint(0, VOCAB, (1,), generator=g)) if noise else (a * x[-1] + b) % VOCAB)
        rows.append({"input_ids": x, "attention_mask": [1] * seq_len, "labels": x})
    return Dataset.from_list(rows)


def tiny_llama(hidden: int, layers: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config)


def eval_loss(trainer: DistillationTrainer, model: torch.nn.Module, dataset: Dataset) -> float:
    """Mean token cross-entropy of `model` on `dataset`."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in trainer.get_eval_dataloader(dataset):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            labels = batch["labels"][:, 1:]
            total += torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), reduction="sum")
            count += labels.numel()
    return float(total) / count


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser((DemoArguments, DistillationConfig))
    defaults = [
        "--output_dir", "outputs/distill-demo", "--max_steps", "300", "--learning_rate", "3e-3",
        "--per_device_train_batch_size", "16", "--logging_steps", "50", "--save_strategy", "no",
        "--report_to", "none", "--temperature", "2.0", "--hidden_weight", "1.0", "--alpha_ce", "0.5",
    ]  # fmt: skip
    demo, args = parser.parse_args_into_dataclasses(defaults + (sys.argv[1:] if argv is None else argv))
    train = synthetic_corpus(demo.num_sequences, demo.seq_len, seed=args.seed)
    valid = synthetic_corpus(128, demo.seq_len, seed=args.seed + 1)

    teacher = tiny_llama(hidden=64, layers=4, seed=args.seed)
    teacher_args = dataclasses.replace(
        args,
        alpha_ce=1.0,
        gamma=0.0,
        hidden_weight=0.0,
        attention_weight=0.0,
        max_steps=demo.teacher_steps,
        output_dir=os.path.join(args.output_dir, "teacher"),
    )
    DistillationTrainer(model=teacher, args=teacher_args, train_dataset=train).train()

    student = tiny_llama(hidden=32, layers=2, seed=args.seed + 1)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=train)
    results = {"teacher": eval_loss(trainer, teacher, valid), "student-before": eval_loss(trainer, student, valid)}
    trainer.train()
    results["student-after"] = eval_loss(trainer, student, valid)

    if trainer.is_world_process_zero():
        print(f"\n{'model':<16}{'eval loss':>10}{'perplexity':>12}")
        for name, loss in results.items():
            print(f"{name:<16}{loss:>10.4f}{math.exp(loss):>12.2f}")
        trainer.save_model(args.output_dir)
        with open(os.path.join(args.output_dir, "demo_results.json"), "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nStudent saved to {os.path.abspath(args.output_dir)}")
    return results


if __name__ == "__main__":
    main()
