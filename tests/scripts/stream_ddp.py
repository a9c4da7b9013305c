"""DDK training on a DomainStream, then the same run resumed from its step-3 checkpoint; writes OUT/rank{i}.json with
each run's DDK updates and weights history, the blocks of each training micro-batch on this process (as
(domain, row index) pairs) and the training logs.

Run under `accelerate launch --multi_gpu --num_processes 2` (gloo on CPU) or as one process.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import PadCollator, make_config  # noqa: E402
from datasets import Dataset  # noqa: E402
from toy_domains import DOMAINS, domain_rows, toy_trainer  # noqa: E402

from hf_distill import DomainStream  # noqa: E402

ROWS = {d: [list(r) for r in dict.fromkeys(map(tuple, domain_rows(d, 200, seed=0)))][:40] for d in DOMAINS}  # distinct
WHERE = {tuple(row): (d, i) for d, rows in ROWS.items() for i, row in enumerate(rows)}


class RecordingCollator(PadCollator):
    """Pads like PadCollator and records which row each training block is (DDK's validation rows are not in ROWS)."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def __call__(self, rows):
        found = [WHERE.get(tuple(r["input_ids"])) for r in rows]
        if all(found):
            self.batches.append(found)
        return super().__call__(rows)


def run(out: Path, name: str, resume: str | None = None) -> dict:
    sources = {d: Dataset.from_dict({"input_ids": rows}).to_iterable_dataset(num_shards=2) for d, rows in ROWS.items()}
    args = make_config(
        out, output_dir=str(out / name), max_steps=6, per_device_train_batch_size=4, ddk_update_steps=2,
        ddk_eval_batches=2, per_device_eval_batch_size=4, save_strategy="steps", save_steps=3,
    )  # fmt: skip
    collator = RecordingCollator()
    trainer = toy_trainer(args, DomainStream(sources, block_size=16, group_size=4), collator)
    trainer.train(resume_from_checkpoint=resume)
    if resume:  # the last run of the script
        trainer.release()
    return {
        "history": trainer.domain_sampler.history,
        "updates": trainer.ddk_callback.updates,
        "batches": collator.batches,
        "logs": [h for h in trainer.state.log_history if "loss" in h],
        "world_size": trainer.args.world_size,
        "rank": trainer.args.process_index,
    }


def main(out: str) -> None:
    full = run(Path(out), "full")
    resumed = run(Path(out), "resumed", resume=os.path.join(out, "full", "checkpoint-3"))
    with open(os.path.join(out, f"rank{full['rank']}.json"), "w") as f:
        json.dump({"full": full, "resumed": resumed}, f)


if __name__ == "__main__":
    main(sys.argv[1])
