"""`recipes/ddk.py ARGS` with, on each process, a record of how the engine placed the models: OUT/engine-rank{i}.json
(OUT is the recipe's `--output_dir`) with the teacher's parameters held by this process (ZeRO-3 partitions), which
modules the trained engine holds, the log history and (process 0, ZeRO-3) the student's parameters gathered from the
engine after training (OUT/gathered.safetensors).

Run under `accelerate launch --config_file CONFIG` (DDP, ZeRO-2 or ZeRO-3 on 2 CPU processes) or as one process.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "recipes"))

import ddk  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from hf_distill import DistillationTrainer  # noqa: E402


def _held(parameters) -> dict[str, int]:
    """Elements of `parameters` in all (`ds_numel` under ZeRO-3) and held by this process outside a forward (its
    ZeRO-3 partition `ds_tensor` plus whatever full data it keeps)."""
    total = held = 0
    for p in parameters:
        total += getattr(p, "ds_numel", p.numel())
        held += p.data.numel() + (p.ds_tensor.numel() if hasattr(p, "ds_tensor") else 0)
    return {"total": total, "held": held}


def _gathered_student(trainer) -> dict[str, torch.Tensor]:
    import deepspeed

    student = trainer.model_wrapped.module.student
    with deepspeed.zero.GatheredParameters(list(student.parameters())):
        return {k: v.detach().clone().contiguous() for k, v in student.state_dict().items()}


def main() -> None:
    out = sys.argv[sys.argv.index("--output_dir") + 1]
    os.makedirs(out, exist_ok=True)
    train = DistillationTrainer.train

    def recorded_train(self, *args, **kwargs):
        teacher = getattr(self.teacher, "module", self.teacher)  # inside a ZeRO-3 inference engine
        before = _held(teacher.parameters())
        result = train(self, *args, **kwargs)
        engine = self.model_wrapped
        trained = getattr(engine, "module", engine)
        teacher_ids = {id(p) for p in teacher.parameters()}
        record = {
            "teacher": before,
            "teacher_optimizer": type(getattr(self.teacher, "optimizer", None)).__name__,
            "teacher_requires_grad": any(p.requires_grad for p in teacher.parameters()),
            "trained_modules": sorted({name.split(".")[0] for name, _ in trained.named_parameters()}),
            "trained_shares_teacher": bool({id(p) for p in trained.parameters()} & teacher_ids),
            "engine": type(engine).__name__,
            "log_history": self.state.log_history,
            "world_size": self.args.world_size,
        }
        if type(engine).__name__ == "DeepSpeedEngine" and engine.zero_optimization_stage() == 3:
            state = _gathered_student(self)
            if self.args.process_index == 0:
                save_file(state, os.path.join(out, "gathered.safetensors"))
        with open(os.path.join(out, f"engine-rank{self.args.process_index}.json"), "w") as f:
            json.dump(record, f)
        return result

    DistillationTrainer.train = recorded_train
    ddk.main(sys.argv[1:])


if __name__ == "__main__":
    main()
