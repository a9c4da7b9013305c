"""Which checkpoints can be resumed from: a folder killed while being written is recognised and skipped.

The Trainer writes a checkpoint's `trainer_state.json` last (after the weights, optimizer, scheduler and RNG states),
so a folder is complete when that file is whole JSON and every weight file it holds has a whole safetensors header.
"""

from __future__ import annotations

import json
import os
import re
import zipfile

from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..files import checked_weight_files

logger = logging.get_logger(__name__)
CHECKPOINT_FOLDER = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")  # the Trainer's own naming
# the model's files: safetensors / index / adapters / bin, DeepSpeed's `latest` tag, FSDP's sharded state folder
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin",
            "latest", "pytorch_model_fsdp_0")  # fmt: skip

# where an engine keeps the optimizer state instead of optimizer.pt: DeepSpeed's tag folder, FSDP's sharded state
_ENGINE_OPTIMIZER = ("latest", "optimizer_0", "pytorch_model_fsdp_0")

__all__ = [
    "CHECKPOINT_FOLDER",
    "checkpoint_folders",
    "checkpoint_problem",
    "last_complete_checkpoint",
    "training_state_files",
    "training_state_losses",
    "training_state_problems",
    "training_state_refusal",
]
_LOST = {  # what a resume without each training-state file loses
    "optimizer": "a fresh optimizer state (e.g. Adam's moments from zero)",
    "scheduler": "the learning-rate schedule from its start",
    "rng": "random state not restored (data order and dropout differ from an uninterrupted run)",
}


def checkpoint_folders(output_dir: str) -> list[str]:
    """The `checkpoint-N` folders of `output_dir`, by step (oldest first)."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(output_dir) if (m := CHECKPOINT_FOLDER.match(name))]
    return [
        os.path.join(output_dir, name) for _, name in sorted(found) if os.path.isdir(os.path.join(output_dir, name))
    ]


def checkpoint_problem(path: str) -> str | None:
    """Why `path` is not a complete Trainer checkpoint (`None` when it is)."""
    if not os.path.isdir(path):
        return "no such folder"
    try:
        with open(os.path.join(path, TRAINER_STATE_NAME), encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        return f"no {TRAINER_STATE_NAME} (the Trainer writes it last: the save was interrupted)"
    except (OSError, ValueError):
        return f"{TRAINER_STATE_NAME} is not whole JSON (the save was interrupted)"
    if not isinstance(state, dict) or "global_step" not in state:
        return f"{TRAINER_STATE_NAME} holds no global_step"
    if not any(os.path.exists(os.path.join(path, name)) for name in _WEIGHTS):
        return "no model weights"
    return checked_weight_files(path)


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint of `output_dir`; each newer incomplete one is skipped with a log line."""
    for path in reversed(checkpoint_folders(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning(f"Checkpoint {path} is incomplete ({problem}): skipped.")
    return None


def training_state_files(path: str, world_size: int) -> list[str]:
    """The files of checkpoint `path` a resume reads besides the weights: the optimizer state (unless an engine keeps
    it in its own folder: DeepSpeed, FSDP), the learning-rate scheduler (under DeepSpeed only when written: a
    DeepSpeed scheduler lives in its engine) and the RNG state of each of `world_size` processes."""
    engine = any(os.path.exists(os.path.join(path, name)) for name in _ENGINE_OPTIMIZER)
    names = [] if engine else [OPTIMIZER_NAME]
    if not engine or os.path.exists(os.path.join(path, SCHEDULER_NAME)):
        names.append(SCHEDULER_NAME)
    return names + (["rng_state.pth"] if world_size <= 1 else [f"rng_state_{i}.pth" for i in range(world_size)])


def training_state_problems(path: str, world_size: int) -> dict[str, str]:
    """`{file: why}` for each of [`training_state_files`] that is missing or not a whole torch file (its zip
    directory, written last, is checked: a truncated file has none); empty when all are there."""
    problems = {}
    for name in training_state_files(path, world_size):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            problems[name] = "missing"
            continue
        try:
            with zipfile.ZipFile(file):
                pass
        except (OSError, zipfile.BadZipFile):
            problems[name] = "not a whole torch file (truncated or corrupted)"
    return problems


def training_state_losses(problems: dict[str, str]) -> str:
    """Each of these [`training_state_problems`] and what a resume without the file loses, on one line."""
    return "; ".join(
        f"{name} is {why}, so the run would go on with {_LOST[name.split('_')[0].split('.')[0]]}"
        for name, why in problems.items()
    )


def training_state_refusal(
    checkpoint: str, problems: dict[str, str], flag: str = "set resume_without_training_state=True"
) -> str:
    """One line refusing to resume from `checkpoint` with these [`training_state_problems`]: each file, why, what
    would be lost, and the two fixes (`flag` says how to go on without them)."""
    return (
        f"resume_from_checkpoint={checkpoint!r}: {training_state_losses(problems)}. Resume from another checkpoint, "
        f"or {flag} to go on without it."
    )
