"""The README's main command, with fewer steps: it runs offline and the student improves."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from hf_distill import PROJECTOR_NAME

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_distill_recipe_runs_offline_and_student_improves(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "recipes" / "distill.py"),
           "--output_dir", str(out), "--max_steps", "80",
           "--teacher_steps", "80", "--disable_tqdm", "true"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "student-after" in proc.stdout and f"Student saved to {out}" in proc.stdout
    results = json.loads((out / "demo_results.json").read_text())
    assert results["student-after"] < results["student-before"]
    assert "lm_head.weight" in load_file(str(out / "model.safetensors"))
    assert not (out / PROJECTOR_NAME).exists()
