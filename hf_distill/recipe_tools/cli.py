"""Command-line parsing for the recipes: `HfArgumentParser` over dataclasses plus a YAML config (`--config`)."""

from __future__ import annotations

import argparse
import logging as std_logging
import os
import re
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from transformers import HfArgumentParser
from transformers.utils import logging

from ..files import checked_load, read_text_file
from ..logs import install_library_logger
from ..parallel import cpu_processes_launched
from ..validation import field_types

logger = logging.get_logger(__name__)


def with_cpu_processes(argv: Sequence[str]) -> list[str]:
    """`argv`, with `--use_cpu true` first when several processes run on a machine without an accelerator (e.g.
    `accelerate_configs/cpu.yaml`, or a DeepSpeed config with `use_cpu`): otherwise each process would train alone.
    ([`DistillationConfig`] does the same for any script; here it also reaches the recipes' other dataclasses.)"""
    if cpu_processes_launched():
        return ["--use_cpu", "true", *argv]
    return list(argv)


class RecipeError(ValueError):
    """A problem with a recipe's input, found before training; the recipes print it as one line and exit."""


def show_progress() -> None:
    """Print hf_distill's info lines (e.g. each DDK update with its duration) on stderr, on the main process of each
    machine only; idempotent."""
    if os.environ.get("LOCAL_RANK", "0") == "0":
        install_library_logger(std_logging.INFO, always=True)


def load_or_refuse(load: Any, name: str, field: str, **kwargs: Any) -> Any:
    """[`checked_load`] for the recipes: a model, config or tokenizer that cannot be loaded is a [`RecipeError`]."""
    try:
        return checked_load(load, name, field, **kwargs)
    except ValueError as error:
        raise RecipeError(str(error)) from error


def warn_command_line_token(argv: Sequence[str]) -> None:
    """Warn when `--hub_token` is on the command line (the token itself is never printed)."""
    if any(arg == "--hub_token" or arg.startswith("--hub_token=") for arg in argv):
        logger.warning(
            "--hub_token on the command line is visible to other users (process list, shell history) and "
            "`accelerate launch` prints the whole command line when a run fails: set the HF_TOKEN environment "
            "variable or run `hf auth login` instead."
        )


class RecipeArgumentParser(HfArgumentParser):
    """`HfArgumentParser` whose errors raise [`RecipeError`] (one line, no usage block) and whose `--help` works
    whatever the help strings hold (a bare `%` is escaped)."""

    def __init__(self, dataclass_types: Sequence[type], **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)  # `--learning_rat 0.1` is an error, not `--learning_rate`
        super().__init__(dataclass_types, **kwargs)
        self.field_types = types = _field_types(dataclass_types)
        for action in self._actions:
            if action.help and not _formats(action.help):
                action.help = action.help.replace("%", "%%")
            if action.type in (int, float) and type(None) in types.get(action.dest, ()):
                action.type = _or_none(action.type)  # `--ddk_update_steps none` unsets an optional number

    def error(self, message: str) -> NoReturn:
        raise RecipeError(f"{' '.join(message.split())} (see --help).")


def _or_none(convert: Any) -> Any:
    def parse(text: str) -> Any:
        return None if text.strip().lower() in ("none", "null") else convert(text)

    parse.__name__ = convert.__name__  # argparse names the type in its errors ("invalid int value")
    return parse


def _formats(text: str) -> bool:
    """Whether argparse can %-format `text`."""
    try:
        text % defaultdict(str)
    except (TypeError, ValueError):
        return False
    return True


def _field_types(dataclass_types: Sequence[type]) -> dict[str, tuple[Any, ...]]:
    """The annotation members of every field of the dataclasses ([`field_types`])."""
    return {name: types for cls in dataclass_types for name, types in field_types(cls).items()}


def _coerce(action: argparse.Action, value: Any, types: tuple[Any, ...], where: str) -> Any:
    """A YAML value converted and checked as the command line would be (`2.5` for an int field is refused)."""
    field = f"{where}: {action.dest}={value!r}"
    if value is None:
        if type(None) in types:
            return None
        raise RecipeError(
            f"{field}: the field needs a value; remove the line to keep the default ({action.default!r})."
        )
    many = action.nargs in ("+", "*")
    if isinstance(value, dict) or action.type is None or (isinstance(value, list) and list in types and not many):
        return value  # dict or list values of fields typed so (e.g. lr_scheduler_kwargs, fsdp): checked downstream
    if isinstance(value, (list, tuple)) and not many:
        raise RecipeError(f"{field} is a list, but the field takes one value.")
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    converted = []
    for item in items:
        if isinstance(item, (list, tuple, dict)) or (isinstance(item, float) and _kind(action) == "int"):
            raise RecipeError(f"{field} is not {_type_name(action)}.")
        if isinstance(item, bool) and _kind(action) in ("int", "float"):
            raise RecipeError(f"{field} is a boolean, but the field takes {_type_name(action)}.")
        try:
            item = action.type(str(item) if not isinstance(item, bool) else str(item).lower())
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise RecipeError(f"{field} is not {_type_name(action)}.") from None
        if action.choices is not None and item not in action.choices:
            raise RecipeError(f"{field} is not one of {list(action.choices)}.")
        converted.append(item)
    return converted if many else converted[0]


def _kind(action: argparse.Action) -> str:
    """The name of the action's converter (`int`, `float`, `str`, `string_to_bool`; kept by [`_or_none`])."""
    return getattr(action.type, "__name__", "")


def _type_name(action: argparse.Action) -> str:
    names = {
        "int": "an integer",
        "float": "a number",
        "str": "a string",
        "string_to_bool": "a boolean (true or false)",
    }
    return names.get(_kind(action), "a valid value")


def _pop_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """Remove `--config PATH` / `--config=PATH` from `argv`."""
    rest, path, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise RecipeError("--config needs a path to a YAML file.")
            path, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return path, rest


def read_yaml_config(path: str) -> dict[str, Any]:
    """Read a recipe config: a YAML mapping of field name -> value."""
    import yaml

    if not os.path.isfile(path):
        raise RecipeError(f"--config {path!r}: no such file.")
    try:
        text = read_text_file(path)
    except ValueError as error:
        raise RecipeError(f"--config {error}") from None
    try:
        data = yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as duplicate:
        raise RecipeError(f"--config {path!r}: {duplicate}") from None
    except yaml.YAMLError as error:
        raise RecipeError(f"--config {path!r} is not valid YAML: {' '.join(str(error).split())}") from error
    if data is None:
        raise RecipeError(f"--config {path!r} holds no settings (only comments): add field: value lines.")
    if not isinstance(data, dict):
        raise RecipeError(f"--config {path!r} must be a mapping of field: value, got {type(data).__name__}.")
    return data


class _DuplicateKey(Exception):
    """A key given twice in one YAML mapping."""


def _unique_key_loader() -> type:
    """A `yaml.SafeLoader` that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            lines: dict[Any, int] = {}
            for key_node, _ in node.value:
                key, line = self.construct_object(key_node, deep=deep), key_node.start_mark.line + 1
                try:
                    if key in lines:
                        raise _DuplicateKey(
                            f"the key {key!r} is given twice (lines {lines[key]} and {line}): keep one."
                        )
                    lines[key] = line
                except TypeError:  # an unhashable key: SafeLoader's own error follows
                    continue
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def parse_recipe_args(
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None = None,
    default_config: str | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> tuple[Any, ...]:
    """
    Parse recipe arguments. Precedence, lowest first: the dataclasses' defaults, the recipe's `defaults`, a YAML
    config (`--config PATH`, else `default_config`), the command line.

    Args:
        dataclass_types (`Sequence[type]`): The argument dataclasses (e.g. script arguments and
            [`DistillationConfig`]).
        argv (`Sequence[str]`, *optional*): The arguments; `sys.argv[1:]` by default.
        default_config (`str`, *optional*): The YAML config used when `--config` is not given.
        defaults (`Mapping[str, Any]`, *optional*): Recipe-specific defaults of some fields.

    Returns:
        `tuple`: one instance of each dataclass.

    Raises:
        [`RecipeError`]: a missing, empty or malformed config file, a YAML key that is not a field of any
            dataclass, a value of the wrong type (a YAML `2.5` or `null` for an int field, a list for a single
            value), a command-line error (argparse's, as one line; no prefix matching of flag names), or
            `--push_to_hub` while the Hub is offline.
    """
    parser = RecipeArgumentParser(dataclass_types)
    actions = {action.dest: action for action in parser._actions}
    if defaults:
        parser.set_defaults(**defaults)
    path, args = _pop_config(_dash_values(parser, list(sys.argv[1:] if argv is None else argv)))
    path = path or default_config
    if path is not None:
        config, types = read_yaml_config(path), parser.field_types
        unknown = [key for key in config if key not in actions or key == "help"]
        if unknown:
            fields = " or ".join(t.__name__ for t in dataclass_types)
            raise RecipeError(
                f"--config {path!r}: {', '.join(repr(k) for k in unknown)} is not a field of {fields}; fix the "
                "spelling or remove it (see --help for the fields)."
            )
        for key, value in config.items():
            actions[key].required = False
            config[key] = _coerce(actions[key], value, types[key], f"--config {path!r}")
        parser.set_defaults(**config)
    *parsed, remaining = parser.parse_args_into_dataclasses(
        args=args, look_for_args_file=False, return_remaining_strings=True
    )
    if remaining:  # a misspelt or abbreviated flag (no prefix matching): one line, like argparse's own errors
        raise RecipeError(f"unrecognized arguments: {' '.join(remaining)} (see --help).")
    if any(getattr(p, "push_to_hub", False) for p in parsed) and _hub_offline():
        raise RecipeError(
            "--push_to_hub true, but the Hub is offline (HF_HUB_OFFLINE=1): unset HF_HUB_OFFLINE to push, or train "
            "without --push_to_hub and upload output_dir later with `hf upload`."
        )
    return tuple(parsed)


def refuse_evaluation_during_training(args: Any, recipe: str) -> None:
    """`recipe` passes no eval set to the Trainer (it measures its table after training): an evaluation strategy,
    which the Trainer would refuse only after the models load, is a [`RecipeError`] now."""
    strategy = str(getattr(args.eval_strategy, "value", args.eval_strategy))
    if strategy != "no":
        raise RecipeError(
            f"--eval_strategy {strategy}: {recipe} evaluates no eval set during training (its per-domain table is "
            "measured before and after): drop --eval_strategy (and --load_best_model_at_end)."
        )


def _dash_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`argv` with a value that starts with a dash and a digit, dot or colon (`--layer_map -1:0`, `--seed -1`) joined
    to its flag (`--layer_map=-1:0`): argparse would read it as a flag and say the value is missing."""
    single = {flag for action in parser._actions if action.nargs is None for flag in action.option_strings}
    joined: list[str] = []
    for token in argv:
        if joined and joined[-1] in single and re.match(r"-[\d.:]", token):
            joined[-1] = f"{joined[-1]}={token}"
        else:
            joined.append(token)
    return joined


def _hub_offline() -> bool:
    """Whether `huggingface_hub` is in offline mode (`HF_HUB_OFFLINE`, read when it was imported)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)
