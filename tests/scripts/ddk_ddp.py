"""DDK training with DistillationTrainer; writes OUT/rank{i}.json with the sampler state, the DDK updates, the
teacher's per-block losses (7 held-out blocks of 15 tokens per domain reach ddk_eval_tokens=100) and the example uids
of each training step on this process.

Run under `accelerate launch --multi_gpu --num_processes 2` (gloo on CPU) or as one process.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import PadCollator, make_config  # noqa: E402
from datasets import Dataset  # noqa: E402
from toy_domains import DOMAINS, domain_rows, toy_trainer  # noqa: E402

STEPS = 6


class RecordingCollator(PadCollator):
    """Pads like PadCollator and records the `uid` of each training example, batch by batch (DDK's validation
    examples have none)."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def __call__(self, rows):
        if "uid" in rows[0]:
            self.batches.append([r["uid"] for r in rows])
        return super().__call__(rows)


def main(out: str) -> None:
    from pathlib import Path

    rows = [{"input_ids": r, "domain": d} for d in DOMAINS for r in domain_rows(d, 40, seed=0)]
    train = Dataset.from_list([{**r, "uid": i} for i, r in enumerate(rows)])
    args = make_config(
        Path(out), max_steps=STEPS, per_device_train_batch_size=4, ddk_update_steps=2, ddk_eval_batches=None,
        ddk_eval_tokens=100, per_device_eval_batch_size=4, remove_unused_columns=False,
    )  # fmt: skip
    collator = RecordingCollator()
    trainer = toy_trainer(args, train, collator)
    trainer.train()
    rank = trainer.args.process_index
    record = {
        "sampler": trainer.domain_sampler.state_dict(),
        "updates": trainer.ddk_callback.updates,
        "teacher_losses": trainer.ddk_callback.teacher_losses,
        "teacher_blocks": trainer.ddk_callback.teacher_blocks,
        "labels": list(train["domain"]),
        "steps": collator.batches[:STEPS],
        "world_size": trainer.args.world_size,
    }
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
    trainer.release()


if __name__ == "__main__":
    main(sys.argv[1])
