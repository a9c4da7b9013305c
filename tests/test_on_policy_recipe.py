"""`recipes/on_policy.py` on the embedded demo: one process, and two gloo processes that must take the same on-policy
decision at every step."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import RECIPE_ENV, ROOT, launch_two

from hf_distill import DistillationConfig
from hf_distill.on_policy import STUDENT, batch_source

RECIPE = ROOT / "recipes" / "on_policy.py"


def _results(out):
    return json.loads((out / "results.json").read_text())


def _draws(tmp_path, steps):
    """The on-policy decision of each step under the recipe's defaults (lmbda=0.5, seed 0; one micro-batch)."""
    args = DistillationConfig(output_dir=str(tmp_path), lmbda=0.5, seed=0, use_cpu=True)
    return {step: float(batch_source(args, step, 0) == STUDENT) for step in steps}


def _shares(results):
    return {h["step"]: h["on_policy_share"] for h in results["log_history"] if "on_policy_share" in h}


@pytest.mark.slow
def test_the_recipe_runs_offline_prints_the_table_and_samples_and_learns_where_the_teacher_is_better(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(RECIPE), "--output_dir", str(out), "--logging_steps", "1"],
                          capture_output=True, text=True, env=RECIPE_ENV, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = _results(out)
    assert results["processes"] == 1
    perplexity = results["perplexity"]
    assert list(perplexity) == ["teacher", "student-before", "student-after"]
    assert sorted(perplexity["teacher"]) == ["arithmetic", "code", "dna", "prose"]
    for domain in ("arithmetic", "dna"):  # the demo student has never seen them; the teacher has
        assert perplexity["student-after"][domain] < 0.5 * perplexity["student-before"][domain]
    assert "per-domain perplexity of the held-out completions" in proc.stdout
    samples = results["samples"]
    assert len(samples) == 3 and all(
        repr(s["prompt"]) in proc.stdout and s["student-after"] is not None for s in samples
    )
    # lmbda=0.5: the logged share of each step is that step's draw
    shares = _shares(results)
    assert len(shares) == 40 and shares == _draws(tmp_path, range(1, 41))
    generated = [h["generated_length"] for h in results["log_history"] if "generated_length" in h]
    assert len(generated) == sum(shares.values()) and all(0 < g <= 24 for g in generated)
    assert (out / "model.safetensors").exists() and (out / "README.md").exists()


@pytest.mark.slow
def test_two_processes_take_the_same_on_policy_decision_at_every_step(tmp_path):
    """The logged share is averaged over both processes: a step where they disagreed would log 0.5."""
    out = tmp_path / "out"
    launch_two(RECIPE, "--output_dir", out, "--max_steps", 12, "--logging_steps", 1, "--num_samples", 1,
               "--per_device_train_batch_size", 4, port=29551)  # fmt: skip
    results = _results(out)
    assert results["processes"] == 2
    shares = _shares(results)
    assert shares == _draws(tmp_path, range(1, 13))
    assert 0 < sum(shares.values()) < 12


@pytest.mark.parametrize(("flags", "text"), [
    (["--max_prompt_length", "200", "--max_length", "96"], "max_prompt_length=200 >= max_length=96"),
    (["--eval_strategy", "steps"], "--eval_strategy steps: recipes/on_policy.py evaluates no eval set"),
    (["--load_best_model_at_end", "true"], "load_best_model_at_end=True with eval_strategy='no'"),
])  # fmt: skip
def test_settings_that_cannot_train_are_one_line_before_anything_is_written(tmp_path, flags, text):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(RECIPE), "--output_dir", str(out), *flags], capture_output=True,
                          text=True, env=RECIPE_ENV, timeout=300)  # fmt: skip
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ") or "Traceback" in line]
    assert proc.returncode == 2 and len(errors) == 1 and text in errors[0], proc.stderr[-2000:]
    assert not out.exists()
