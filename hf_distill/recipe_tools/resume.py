"""Where a recipe run starts: from scratch, or from the newest complete checkpoint of its output folder."""

from __future__ import annotations

import shutil
from typing import Any

from transformers.utils import logging

from ..training.checkpoints import (
    checkpoint_folders,
    checkpoint_problem,
    last_complete_checkpoint,
    training_state_problems,
    training_state_refusal,
)
from .cli import RecipeError

logger = logging.get_logger(__name__)

__all__ = ["resume_point"]


def resume_point(
    output_dir: str, resume_from_checkpoint: str | None, overwrite_output_dir: bool, args: Any = None
) -> str | None:
    """
    The checkpoint a recipe resumes from, as transformers' example scripts decide it, but never from a folder
    killed while being written.

    - `resume_from_checkpoint="true"`: the newest complete checkpoint of `output_dir` (an error if there is none);
    - a path: that checkpoint, which must be complete;
    - unset, with checkpoints in `output_dir`: the newest complete one, with a log line; with
      `overwrite_output_dir` the old checkpoints are removed instead and training starts from scratch.

    With the run's `args` (a [`DistillationConfig`]), a checkpoint whose optimizer, scheduler or RNG files are
    missing or unreadable is refused here too, before any model loads, unless `args.resume_without_training_state`.

    Call it on every process inside `main_process_first()` (the main process removes, the others then see none).

    Raises:
        [`RecipeError`]: one line naming the flag and the fix.
    """
    checkpoint = _checkpoint(output_dir, resume_from_checkpoint, overwrite_output_dir)
    if checkpoint is not None and args is not None and not args.resume_without_training_state:
        problems = training_state_problems(checkpoint, args.world_size)
        if problems:
            raise RecipeError(
                training_state_refusal(checkpoint, problems, "pass --resume_without_training_state true")
            )
    return checkpoint


def _checkpoint(output_dir: str, resume_from_checkpoint: str | None, overwrite_output_dir: bool) -> str | None:
    """[`resume_point`] without the training-state check."""
    if resume_from_checkpoint is not None and resume_from_checkpoint.lower() in ("true", "last"):
        last = last_complete_checkpoint(output_dir)
        if last is None:
            raise RecipeError(
                f"--resume_from_checkpoint {resume_from_checkpoint}: output_dir={output_dir!r} holds no complete "
                "checkpoint (set save_strategy/save_steps to write some, or drop the flag)."
            )
        return last
    if resume_from_checkpoint is not None:
        problem = checkpoint_problem(resume_from_checkpoint)
        if problem is not None:
            raise RecipeError(
                f"--resume_from_checkpoint {resume_from_checkpoint!r} is not a complete checkpoint: {problem}."
            )
        return resume_from_checkpoint
    found = checkpoint_folders(output_dir)
    if not found:
        return None
    if overwrite_output_dir:
        logger.warning(f"--overwrite_output_dir: removing {len(found)} old checkpoint(s) of {output_dir!r}.")
        for path in found:
            shutil.rmtree(path, ignore_errors=True)
        return None
    last = last_complete_checkpoint(output_dir)
    if last is None:
        raise RecipeError(
            f"output_dir={output_dir!r} holds only incomplete checkpoints ({', '.join(found)}): pass "
            "--overwrite_output_dir true to start over, or use another --output_dir."
        )
    logger.warning(
        f"output_dir={output_dir!r} holds checkpoints: resuming from {last} (pass --overwrite_output_dir true to "
        "start over, or use another --output_dir)."
    )
    return last
