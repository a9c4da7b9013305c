"""One SGD step of DistillationTrainer; writes the updated student and projector to OUT/rank{i}.safetensors.

Run under `accelerate launch --multi_gpu --num_processes 2` (gloo on CPU) or as one process.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import PadCollator, lm_dataset, make_config, tiny_llama  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from hf_distill import DistillationTrainer  # noqa: E402


def main(out: str, batch_size: int) -> None:
    from pathlib import Path

    args = make_config(
        Path(out), max_steps=1, optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", max_grad_norm=0.0,
        per_device_train_batch_size=batch_size, alpha_ce=0.5, gamma=1.0, hidden_weight=1.0, attention_weight=5.0,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=tiny_llama(hidden=16, seed=1),
        teacher_model=tiny_llama(hidden=32, layers=4, seed=2),
        args=args,
        train_dataset=lm_dataset(n=8, min_len=3, max_len=20),
        data_collator=PadCollator(),
    )
    trainer.train()
    state = {f"s.{k}": v.contiguous() for k, v in trainer.student.state_dict().items()}
    state.update({f"p.{k}": v.contiguous() for k, v in trainer.projector.state_dict().items()})
    save_file(state, os.path.join(out, f"rank{trainer.args.process_index}.safetensors"))
    trainer.release()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
