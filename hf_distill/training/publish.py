"""Publishing the student: its distillation model card, and the staged upload of the student alone (never the
projections, the teacher or training state)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import DistillationConfig
from ..hub import distillation_model_card, upload_student
from ..terms import active_terms
from ..terms.registry import describe

STAGING_DIR = "_hub_upload"


def student_card(
    args: DistillationConfig,
    student: Any,
    teacher: Any,
    layer_pairs: Sequence[tuple[int, int]],
    domain_weights: Mapping[str, float] | None,
    info: Mapping[str, Any],
) -> Any:
    """
    The distillation card (`huggingface_hub.ModelCard`) of a run: the loss terms that are on with their weights and
    settings (from the term registry), the layer map, the final DDK weights, and `info` (`dataset_name`, `results`,
    `teacher_name`, `tags`, `model_name`).
    """
    losses = describe(active_terms(args), args)
    if args.ddk_update_steps is not None:
        losses.update(
            ddk_update_steps=args.ddk_update_steps, ddk_alpha=args.ddk_alpha, ddk_gap=args.ddk_gap,
            ddk_ratio_temperature=args.ddk_ratio_temperature, ddk_eval_tokens=args.ddk_eval_tokens,
        )  # fmt: skip
        if (args.ddk_min_weight, args.ddk_max_weight) != (0.0, 1.0):
            losses.update(ddk_min_weight=args.ddk_min_weight, ddk_max_weight=args.ddk_max_weight)
    return distillation_model_card(
        model_name=info.get("model_name") or (args.hub_model_id or Path(args.output_dir).name).split("/")[-1],
        student_base=getattr(student, "name_or_path", None),
        teacher=info.get("teacher_name") or (getattr(teacher, "name_or_path", None) if teacher is not None else None),
        dataset=info.get("dataset_name"),
        losses=losses,
        layer_pairs=layer_pairs,
        domain_weights=domain_weights,
        results=info.get("results"),
        extra_tags=info.get("tags") or (),
    )


def push_staged_student(
    output_dir: str,
    save: Callable[[str], None],
    is_main_process: bool,
    card: Callable[[], Any],
    repo_id: str,
    token: str | None,
    commit_message: str,
    revision: str | None,
) -> Any:
    """
    Save the student into a staging folder of `output_dir` (`save` runs on every process: ZeRO-3 / FSDP gather the
    weights), write its card, upload the student's files only, and remove the folder.

    Returns:
        `huggingface_hub.CommitInfo` on the main process, `None` on the others.
    """
    staging = os.path.join(output_dir, STAGING_DIR)
    save(staging)
    if not is_main_process:
        return None
    try:
        card().save(os.path.join(staging, "README.md"))
        return upload_student(staging, repo_id, token, commit_message, revision)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
