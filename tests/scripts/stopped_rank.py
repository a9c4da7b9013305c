"""A 2-process DistillationTrainer run on CPU in which rank 1 stops itself (SIGSTOP) at step 2, as a hung process
would: rank 0 must fail within `ddp_timeout` instead of waiting forever. Writes OUT/stopped_at (a time stamp).

Run under `accelerate launch --multi_gpu --num_processes 2` with `--ddp_timeout` given as the second argument.
"""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import PadCollator, lm_dataset, make_config, tiny_llama  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from hf_distill import DistillationTrainer  # noqa: E402


class StopRankOne(TrainerCallback):
    def __init__(self, out: str):
        self.out = out

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2 and args.process_index == 1:
            with open(os.path.join(self.out, "stopped_at"), "w") as f:
                f.write(str(time.time()))
            os.kill(os.getpid(), signal.SIGSTOP)


def main(out: str, timeout: int) -> None:
    from pathlib import Path

    args = make_config(Path(out), max_steps=50, per_device_train_batch_size=2, use_cpu=True, ddp_timeout=timeout)
    trainer = DistillationTrainer(
        model=tiny_llama(hidden=16, seed=1),
        teacher_model=tiny_llama(hidden=32, seed=2),
        args=args,
        train_dataset=lm_dataset(n=200, min_len=3, max_len=12),
        data_collator=PadCollator(),
        callbacks=[StopRankOne(out)],
    )
    trainer.train()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
