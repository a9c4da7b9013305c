"""Checks of `TrainingArguments` fields that transformers only trips over later (at the first save, when the
scheduler is made): the output folder and the keyword-argument mappings. One line each, naming the field."""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["MAPPING_FIELDS", "check_best_model", "check_mappings", "check_output_dir"]

# `dict | str` fields whose string form must be a JSON object (the other dict fields may also name a file)
MAPPING_FIELDS = ("lr_scheduler_kwargs", "gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")


def check_output_dir(args: Any) -> None:
    """`output_dir` is unset (transformers' default folder), or a non-empty path that is a folder or does not exist.

    Raises:
        `ValueError`: naming the value and the fix.
    """
    where = f"{type(args).__name__}.output_dir"
    value = args.output_dir
    if value is None:
        return
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ValueError(f"{where}={value!r} is empty: give the folder the student and its checkpoints go to.")
    if os.path.exists(value) and not os.path.isdir(value):
        raise ValueError(f"{where}={value!r} is a file, not a folder: choose another output_dir.")


def check_mappings(args: Any, names: tuple[str, ...] = MAPPING_FIELDS) -> None:
    """Each of `names` is unset, a mapping, or a string holding a JSON object (as transformers parses it).

    Raises:
        `ValueError`: naming the field, the value and the fix.
    """
    for name in names:
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, value.strip())  # transformers parses a string that starts with '{'
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = None
        else:
            parsed = value
        if value is not None and not isinstance(parsed, dict):
            raise ValueError(
                f"{type(args).__name__}.{name}={value!r} is not a mapping: give a JSON object (e.g. "
                f"'{{\"num_cycles\": 0.5}}' on the command line) or a YAML mapping, or leave it unset."
            )


def check_best_model(args: Any) -> None:
    """`load_best_model_at_end` needs an evaluation during training to pick the best checkpoint by.

    Raises:
        `ValueError`: with `eval_strategy="no"` (the Trainer would silently keep the last model).
    """
    if args.load_best_model_at_end and str(getattr(args.eval_strategy, "value", args.eval_strategy)) == "no":
        raise ValueError(
            f"{type(args).__name__}.load_best_model_at_end=True with eval_strategy='no': nothing is evaluated during "
            "training, so there is no best checkpoint to load. Set eval_strategy and save_strategy to 'steps' or "
            "'epoch' and pass an eval_dataset, or drop load_best_model_at_end."
        )
