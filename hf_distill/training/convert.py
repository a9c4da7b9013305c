"""Converting a checkpoint of hf_distill 0.1 (learned projections in their own optimizer parameter group) to this
release's layout (the projections are parameters of the student module, in the Trainer's own parameter groups)."""

from __future__ import annotations

import os
import shutil
from typing import Any

import torch
from safetensors.torch import load_file
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME

from .student import PROJECTOR_NAME, DistillationStudent, projections_layout


def convert_checkpoint(trainer: Any, checkpoint: str, output_dir: str) -> str:
    """
    Copy a checkpoint written by hf_distill 0.1 to `output_dir` in this release's layout, so that
    `trainer.train(resume_from_checkpoint=output_dir)` continues the run exactly (the source is left untouched).

    In 0.1 the optimizer had three parameter groups: the student's decayed and not-decayed parameters, then the
    projections (weight decay 0). Now the projections belong to the student module: their weights join the decayed
    group, their biases the other one (with `weight_decay > 0` the projection weights are decayed from here on).
    The optimizer state of every parameter is moved to its new place; the scheduler keeps the first two groups.

    Args:
        trainer ([`DistillationTrainer`]): A trainer built with the settings of the run that wrote `checkpoint`
            (same student, same layer map and widths).
        checkpoint (`str`): The 0.1 checkpoint folder (`checkpoint-N`).
        output_dir (`str`): A new folder for the converted copy.

    Returns:
        `str`: `output_dir`.
    """
    module = trainer.model
    if not isinstance(module, DistillationStudent) or not module.has_projection_weights():
        raise ValueError(
            "convert_checkpoint needs a trainer with learned projections (hidden_weight > 0, widths differ)."
        )
    path = os.path.join(checkpoint, PROJECTOR_NAME)
    if not os.path.isfile(path) or projections_layout(path) != "":
        raise ValueError(f"checkpoint={checkpoint!r} is not an hf_distill 0.1 checkpoint with projections.")
    if os.path.exists(output_dir):
        raise FileExistsError(f"output_dir={output_dir!r} exists: choose a new folder for the converted checkpoint.")
    old, groups = _old_order(trainer, module), _new_groups(trainer, module)
    optimizer = torch.load(os.path.join(checkpoint, OPTIMIZER_NAME), map_location="cpu", weights_only=True)
    sizes = [len(g["params"]) for g in optimizer["param_groups"]]
    if len(sizes) != 3 or sum(sizes) != len(old):
        raise ValueError(
            f"checkpoint={checkpoint!r}: its optimizer has groups of {sizes} parameters, the trainer's student and "
            f"projections have {len(old)}: build the trainer with the settings of the run that wrote it."
        )
    new = groups[0] + groups[1]
    state = {new.index(name): optimizer["state"][i] for i, name in enumerate(old) if i in optimizer["state"]}
    param_groups, start = [], 0
    for group, names in zip(optimizer["param_groups"][:2], groups, strict=True):
        param_groups.append({**group, "params": list(range(start, start + len(names)))})
        start += len(names)
    shutil.copytree(checkpoint, output_dir)
    torch.save({"state": state, "param_groups": param_groups}, os.path.join(output_dir, OPTIMIZER_NAME))
    scheduler_path = os.path.join(output_dir, SCHEDULER_NAME)
    if os.path.isfile(scheduler_path):
        scheduler = torch.load(scheduler_path, map_location="cpu", weights_only=True)
        scheduler = {k: v[:2] if isinstance(v, list) and len(v) == 3 else v for k, v in scheduler.items()}
        torch.save(scheduler, scheduler_path)
    DistillationStudent.save_projections(load_file(path), output_dir)
    return output_dir


def _old_order(trainer: Any, module: DistillationStudent) -> list[str]:
    """Parameter names (of the student module) in 0.1's optimizer order: decayed, not decayed, projections."""
    decay = set(trainer.get_decay_parameter_names(module.student))
    trainable = [name for name, p in module.student.named_parameters() if p.requires_grad]
    projections = [f"projections.{name}" for name, p in module.projections.named_parameters() if p.requires_grad]
    return (
        [f"student.{n}" for n in trainable if n in decay]
        + [f"student.{n}" for n in trainable if n not in decay]
        + projections
    )


def _new_groups(trainer: Any, module: DistillationStudent) -> list[list[str]]:
    """Parameter names of the Trainer's two groups over the student module: decayed, not decayed."""
    decay = set(trainer.get_decay_parameter_names(module))
    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    return [[n for n in trainable if n in decay], [n for n in trainable if n not in decay]]
