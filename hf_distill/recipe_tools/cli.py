"""Command-line parsing for the recipes: `HfArgumentParser` over dataclasses plus a YAML config (`--config`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from transformers import HfArgumentParser


class RecipeError(ValueError):
    """A problem with a recipe's input, found before training; the recipes print it as one line and exit."""


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
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as error:
            raise RecipeError(f"--config {path!r} is not valid YAML: {' '.join(str(error).split())}") from error
    if not isinstance(data, dict):
        raise RecipeError(f"--config {path!r} must be a mapping of field: value, got {type(data).__name__}.")
    return data


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
        [`RecipeError`]: a missing or malformed config file, or a YAML key that is not a field of any dataclass.
    """
    parser = HfArgumentParser(dataclass_types)
    actions = {action.dest: action for action in parser._actions}
    if defaults:
        parser.set_defaults(**defaults)
    path, args = _pop_config(list(sys.argv[1:] if argv is None else argv))
    path = path or default_config
    if path is not None:
        config = read_yaml_config(path)
        unknown = [key for key in config if key not in actions or key == "help"]
        if unknown:
            fields = " or ".join(t.__name__ for t in dataclass_types)
            raise RecipeError(
                f"--config {path!r}: {', '.join(repr(k) for k in unknown)} is not a field of {fields}; fix the "
                "spelling or remove it (see --help for the fields)."
            )
        for key in config:
            actions[key].required = False
        parser.set_defaults(**config)
    return parser.parse_args_into_dataclasses(args=args, look_for_args_file=False)
