"""The DSG-KD recipe, offline on tiny models (the DDK recipe is tested in test_ddk_recipe.py)."""

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
def test_dsg_kd_recipe_compares_fine_tuning_and_dsg_kd_offline(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import tiny_bert_cls
    from dsg_toy import notes, student_tokenizer, teacher_tokenizer

    student_dir, teacher_dir, data_dir, out = (tmp_path / n for n in ("student", "teacher", "data", "out"))
    student_tok, teacher_tok = student_tokenizer(), teacher_tokenizer()
    tiny_bert_cls(hidden=32, layers=2, heads=2, vocab=len(student_tok), seed=1, num_labels=2).save_pretrained(
        student_dir
    )
    student_tok.save_pretrained(student_dir)
    tiny_bert_cls(hidden=32, layers=4, heads=4, vocab=len(teacher_tok), seed=2, num_labels=2).bert.save_pretrained(
        teacher_dir
    )
    teacher_tok.save_pretrained(teacher_dir)
    data_dir.mkdir()
    notes(64, seed=1).to_json(str(data_dir / "train.jsonl"))
    notes(40, seed=2).to_json(str(data_dir / "test.jsonl"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / "recipes" / "dsg_kd.py"), "--student", str(student_dir),
           "--teacher", str(teacher_dir), "--dataset", str(data_dir), "--output_dir", str(out), "--max_steps", "8",
           "--per_device_train_batch_size", "8", "--max_length", "40", "--use_cpu", "true", "--disable_tqdm",
           "true", "--layer_map", "1:2,2:4", "--save_strategy", "steps", "--save_steps", "4"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"fine-tuning", "DSG-KD"}
    for row in results.values():
        assert set(row) == {"auroc", "auprc", "f1"} and all(0.0 <= v <= 1.0 for v in row.values())
    assert "AUROC" in proc.stdout and f"DSG-KD student saved to {out}" in proc.stdout
    assert "classifier.weight" in load_file(str(out / "model.safetensors"))
    assert not (out / PROJECTOR_NAME).exists()
    assert (out / "fine-tuning" / "checkpoint-8").is_dir() and (out / "dsg-kd" / "checkpoint-8").is_dir()

    # started again: each run resumes from its own newest checkpoint (nothing left to train) and ends the same
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("holds checkpoints: resuming from") == 2
    assert json.loads((out / "results.json").read_text()) == results

    bad = subprocess.run([*cmd[:7], str(tmp_path / "missing"), *cmd[8:]], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "does not exist" in bad.stderr
