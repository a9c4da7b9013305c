"""Which checkpoints can be resumed from: a folder killed while being written is recognised and skipped.

The Trainer writes a checkpoint's `trainer_state.json` last (after the weights, optimizer, scheduler and RNG states),
so a folder is complete when that file is whole JSON and every weight file it holds has a whole safetensors header.
"""

from __future__ import annotations

import json
import os
import re

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..files import checked_weight_files

logger = logging.get_logger(__name__)
CHECKPOINT_FOLDER = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")  # the Trainer's own naming
# the model's files: safetensors / index / adapters / bin, DeepSpeed's `latest` tag, FSDP's sharded state folder
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin",
            "latest", "pytorch_model_fsdp_0")  # fmt: skip

__all__ = ["CHECKPOINT_FOLDER", "checkpoint_folders", "checkpoint_problem", "last_complete_checkpoint"]


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
