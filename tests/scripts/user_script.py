"""A user's own distillation script, as the README's "Your own script on several processes" writes it: no `use_cpu`,
no test helpers. Trains 3 steps and writes OUT/rank{i}.json (world size, the rows this process trained on) and
OUT/rank{i}.safetensors (the trained student).

Run under `accelerate launch --multi_gpu --num_processes 2` on a machine without an accelerator.
"""

import json
import os
import sys

import torch
from datasets import Dataset
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from hf_distill import DistillationConfig, DistillationTrainer


def llama(hidden: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)  # fmt: skip
    return LlamaForCausalLM(config)


class Collator:
    """Stacks equal-length rows and records which rows (by their first token) this process trained on."""

    def __init__(self):
        self.seen = []

    def __call__(self, rows):
        ids = torch.tensor([row["input_ids"] for row in rows])
        self.seen += [int(i) for i in ids[:, 0]]
        return {"input_ids": ids, "labels": ids.clone()}


def main(out: str) -> None:
    rows = [[i + 1] + [(i * 7 + k) % 63 + 1 for k in range(7)] for i in range(48)]  # row i starts with token i + 1
    args = DistillationConfig(
        output_dir=out, max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2, report_to="none",
        save_strategy="no", disable_tqdm=True, dataloader_pin_memory=False, seed=0,
    )  # fmt: skip
    collator = Collator()
    trainer = DistillationTrainer(
        model=llama(16, seed=1), teacher_model=llama(32, seed=2), args=args,
        train_dataset=Dataset.from_dict({"input_ids": rows}), data_collator=collator,
    )  # fmt: skip
    trainer.train()
    rank = trainer.args.process_index
    save_file({k: v.contiguous() for k, v in trainer.student.state_dict().items()}, f"{out}/rank{rank}.safetensors")
    record = {"world_size": trainer.args.world_size, "rank": rank, "use_cpu": args.use_cpu, "rows": collator.seen}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
    trainer.release()


if __name__ == "__main__":
    main(sys.argv[1])
