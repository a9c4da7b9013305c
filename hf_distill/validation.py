"""Checks of numeric settings: type (an `int` field takes no `2.5`), finiteness and range, one line per error."""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass
from typing import Any

__all__ = ["SEED", "NumberRule", "TRAINING_NUMBER_RULES", "check_numbers", "field_types"]


@dataclass(frozen=True)
class NumberRule:
    """
    The values a numeric field accepts.

    Args:
        low (`float`, *optional*): Lower bound (inclusive unless `low_open`).
        high (`float`, *optional*): Upper bound (inclusive unless `high_open`).
        low_open (`bool`): The lower bound itself is refused.
        high_open (`bool`): The upper bound itself is refused.
        also (`tuple`): Values accepted outside the range (e.g. `-1` for `max_steps`).
        hint (`str`): Added to the error (what the value means, a typical value).
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple[float, ...] = ()
    hint: str = ""

    def accepts(self, value: float) -> bool:
        if value in self.also:
            return True
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        text = " and ".join(parts)
        return text + "".join(f" (or {value:g})" for value in self.also)


POSITIVE_INT = NumberRule(low=1)
SEED = NumberRule(low=0, high=2**32 - 1, hint="numpy and torch seeds are 32-bit")

# the numeric `TrainingArguments` fields the recipes expose
TRAINING_NUMBER_RULES: dict[str, NumberRule] = {
    "per_device_train_batch_size": POSITIVE_INT,
    "per_device_eval_batch_size": POSITIVE_INT,
    "gradient_accumulation_steps": POSITIVE_INT,
    "num_train_epochs": NumberRule(low=0, low_open=True),
    "max_steps": NumberRule(low=1, also=(-1,), hint="-1 trains for num_train_epochs"),
    "learning_rate": NumberRule(low=0, hint="e.g. 5e-5"),
    "warmup_steps": NumberRule(low=0, hint="a value < 1 is a ratio of the training steps"),
    "weight_decay": NumberRule(low=0),
    "adam_beta1": NumberRule(low=0, high=1, high_open=True),
    "adam_beta2": NumberRule(low=0, high=1, high_open=True),
    "adam_epsilon": NumberRule(low=0, low_open=True),
    "max_grad_norm": NumberRule(low=0, hint="0 turns clipping off"),
    "label_smoothing_factor": NumberRule(low=0, high=1, high_open=True),
    "neftune_noise_alpha": NumberRule(low=0),
    "torch_empty_cache_steps": POSITIVE_INT,
    "logging_steps": NumberRule(low=0, low_open=True, hint="a value < 1 is a ratio of the training steps"),
    "eval_steps": NumberRule(low=0, low_open=True, hint="a value < 1 is a ratio of the training steps"),
    "eval_delay": NumberRule(low=0),
    "eval_accumulation_steps": POSITIVE_INT,
    "save_steps": NumberRule(low=0, low_open=True, hint="a value < 1 is a ratio of the training steps"),
    "save_total_limit": POSITIVE_INT,
    "seed": SEED,
    "data_seed": SEED,
    "dataloader_num_workers": NumberRule(low=0),
    "dataloader_prefetch_factor": POSITIVE_INT,
    "ddp_bucket_cap_mb": POSITIVE_INT,
    "ddp_timeout": NumberRule(low=1, hint="seconds a process waits for the others before the job fails"),
}


@functools.cache
def field_types(cls: type) -> dict[str, tuple[Any, ...]]:
    """`name -> the members of its annotation` for every field of a dataclass (a union's members; a generic such
    as `list[str]` by its origin, `list`)."""
    hints = typing.get_type_hints(cls)
    return {
        field.name: tuple(
            typing.get_origin(t) or t for t in (typing.get_args(hints[field.name]) or (hints[field.name],))
        )
        for field in dataclasses.fields(cls)
    }


@functools.cache
def _numeric_fields(cls: type) -> dict[str, tuple[type, bool]]:
    """`name -> (int or float, accepts None)` for the numeric fields of a dataclass."""
    fields = {}
    for field in dataclasses.fields(cls):
        types = field_types(cls)[field.name]
        numeric = [t for t in (int, float) if t in types]
        if numeric and field.init:
            fields[field.name] = (float if float in numeric else int, type(None) in types)
    return fields


def check_numbers(obj: Any, rules: dict[str, NumberRule]) -> None:
    """
    Check every numeric field of the dataclass instance `obj`: of its type (an `int` field refuses `2.5` and
    booleans), finite, not `None` unless typed `| None`, and within `rules[name]` when there is one.

    Raises:
        `ValueError`: `"{Class}.{field}={value!r} must be ..."`, naming the field, the value and the accepted range.
    """
    owner = type(obj).__name__
    for name, (kind, accepts_none) in _numeric_fields(type(obj)).items():
        value = getattr(obj, name)
        where = f"{owner}.{name}={value!r}"
        if value is None:
            if accepts_none:
                continue
            raise ValueError(f"{where}: the field needs a number (it is not optional).")
        rule = rules.get(name, NumberRule())
        wanted = ("an integer" if kind is int else "a finite number") + (
            f" {rule.describe()}" if rule.describe() else ""
        )
        hint = f" ({rule.hint})" if rule.hint else ""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be {wanted}{hint}, not {type(value).__name__}.")
        if kind is int and not isinstance(value, int):
            raise ValueError(f"{where} must be {wanted}{hint}.")
        if not math.isfinite(value) or not rule.accepts(value):
            raise ValueError(f"{where} must be {wanted}{hint}.")
