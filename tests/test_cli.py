"""Recipe argument parsing: YAML config values are defaults, the command line overrides them; bad keys are errors;
the shipped configs parse."""

import os
import sys
from pathlib import Path

import pytest

from hf_distill import DistillationConfig
from hf_distill.recipe_tools.cli import RecipeError, parse_recipe_args

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import ddk  # noqa: E402
import dsg_kd  # noqa: E402


def _write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_precedence_dataclass_then_recipe_defaults_then_yaml_then_command_line(tmp_path):
    config = _write(tmp_path, "output_dir: from-yaml\nlearning_rate: 3.0e-3\ntemperature: 4.0\nblock_size: 64\n")
    script, args = parse_recipe_args(
        (ddk.ScriptArguments, DistillationConfig),
        ["--config", config, "--temperature", "2.5"],
        defaults={"gamma": 0.25, "temperature": 9.0},
    )
    assert args.output_dir == "from-yaml" and args.learning_rate == pytest.approx(3e-3)  # YAML over dataclass
    assert args.temperature == 2.5  # command line over YAML over recipe default
    assert args.gamma == 0.25  # recipe default over dataclass default
    assert script.block_size == 64 and script.text_column == "text"
    assert args.alpha_ce == DistillationConfig(output_dir="x").alpha_ce


def test_yaml_scientific_notation_strings_are_converted(tmp_path):
    # PyYAML reads `3e-3` (no dot) as a string: argparse converts string defaults with the field's type
    config = _write(tmp_path, "output_dir: o\nlearning_rate: 3e-3\n")
    (args,) = parse_recipe_args((DistillationConfig,), [f"--config={config}"])
    assert args.learning_rate == pytest.approx(3e-3) and isinstance(args.learning_rate, float)


def test_required_field_may_come_from_yaml(tmp_path):
    config = _write(tmp_path, "student: s\nteacher: t\ndataset: d\noutput_dir: o\n")
    script, _ = parse_recipe_args((dsg_kd.DSGKDArguments, DistillationConfig), ["--config", config])
    assert (script.student, script.teacher, script.dataset) == ("s", "t", "d")


@pytest.mark.parametrize(
    "text, message",
    [
        ("output_dir: o\nlearning_rat: 0.1\n", "'learning_rat' is not a field of DistillationConfig"),
        ("- a\n- b\n", "must be a mapping"),
        ("output_dir: [unclosed\n", "is not valid YAML"),
        (
            "output_dir: o\nlearning_rate: 0.1\nlearning_rate: 0.2\n",
            r"the key 'learning_rate' is given twice \(lines 2 and 3\)",
        ),
        ("output_dir: o\nlr_scheduler_kwargs: {min_lr: 1, min_lr: 2}\n", "the key 'min_lr' is given twice"),
    ],
)
def test_bad_config_files_are_errors(tmp_path, text, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe_args((DistillationConfig,), ["--config", _write(tmp_path, text)])


def test_a_prefix_of_a_field_name_is_not_taken_for_it():
    with pytest.raises(RecipeError, match="unrecognized arguments: --learning_rat 0.1"):
        parse_recipe_args((DistillationConfig,), ["--output_dir", "o", "--learning_rat", "0.1"])
    (args,) = parse_recipe_args((DistillationConfig,), ["--output_dir", "o", "--learning_rate", "0.1"])
    assert args.learning_rate == 0.1


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(RecipeError, match="no such file"):
        parse_recipe_args((DistillationConfig,), ["--config", str(tmp_path / "none.yaml")])


@pytest.mark.parametrize(
    "name, types",
    [
        ("../../hf_distill/demo/demo.yaml", (ddk.ScriptArguments, DistillationConfig)),
        ("qwen2.5-1.5b-to-0.5b-ddk.yaml", (ddk.ScriptArguments, DistillationConfig)),
        ("ddk-paper-qwen1.5.yaml", (ddk.ScriptArguments, DistillationConfig)),
        ("smollm2-ddk.yaml", (ddk.ScriptArguments, DistillationConfig)),
        ("bert-dsg-kd.yaml", (dsg_kd.DSGKDArguments, DistillationConfig)),
    ],
)
def test_shipped_configs_parse_into_valid_arguments(name, types, tmp_path):
    config = str(ROOT / "recipes" / "configs" / name)
    script, args = parse_recipe_args(types, ["--config", config, "--output_dir", str(tmp_path), "--use_cpu", "true"])
    assert args.output_dir == str(tmp_path)
    assert os.path.isfile(config)
    if name != "bert-dsg-kd.yaml":
        assert args.ddk_update_steps and args.domain_column and script.teacher_model and script.student_model
    else:
        assert args.dsg_kd and args.gamma == 0.0
    if name == "ddk-paper-qwen1.5.yaml":  # the paper's values (DDK section 4)
        assert (args.gamma, args.temperature, args.ddk_alpha, args.ddk_update_steps) == (0.2, 1.0, 0.5, 1000)
        assert (args.learning_rate, args.lr_scheduler_kwargs, args.warmup_steps) == (3e-5, {"min_lr": 3e-6}, 1000)
        assert args.lr_scheduler_type == "cosine_with_min_lr" and args.ddk_gap == "perplexity"
        assert script.validation_size == 500 and args.max_steps == 30000
