"""Pushing the student: the upload is intercepted at the huggingface_hub API boundary (`HfApi.create_repo`,
`HfApi.upload_folder`); what would be uploaded is recorded with huggingface_hub's own pattern filter."""

import json
import math
import os
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard, constants
from huggingface_hub.hf_api import RepoUrl
from huggingface_hub.utils import filter_repo_objects

from hf_distill import PROJECTOR_NAME

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import ddk  # noqa: E402

TOKEN = "hf_TESTtokenThatMustNeverBeWritten0123"


@pytest.fixture
def recorded(monkeypatch):
    calls = {"create_repo": [], "uploads": []}

    def create_repo(self, repo_id, *args, token=None, **kwargs):
        calls["create_repo"].append({"repo_id": repo_id, "token": token or self.token})
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **kwargs):
        from huggingface_hub.hf_api import DEFAULT_IGNORE_PATTERNS

        root = Path(folder_path)
        paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        ignore = list(ignore_patterns or []) + list(DEFAULT_IGNORE_PATTERNS)
        kept = list(filter_repo_objects(paths, allow_patterns=allow_patterns, ignore_patterns=ignore))
        files = {path: (root / path).read_bytes() for path in kept}
        calls["uploads"].append({"repo_id": repo_id, "files": files, "token": self.token, **kwargs})
        return "https://huggingface.co/fake/commit"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    # the recipe refuses --push_to_hub offline: this mocked Hub is "online" (HF_HUB_OFFLINE=1 stays in the environment)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return calls


def test_push_uploads_student_tokenizer_and_card_only(recorded, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    summary = ddk.main(["--output_dir", str(out), "--max_steps", "4", "--ddk_update_steps", "2", "--hidden_weight",
                        "1.0", "--save_strategy", "steps", "--save_steps", "2", "--disable_tqdm", "true",
                        "--push_to_hub", "true", "--hub_model_id", "someone/demo-student",
                        "--hub_token", TOKEN])  # fmt: skip
    assert [c["repo_id"] for c in recorded["create_repo"]] == ["someone/demo-student"]
    assert all(c["token"] == TOKEN for c in recorded["create_repo"])
    (upload,) = recorded["uploads"]  # one push, at the end (checkpoints are never pushed)
    assert upload["repo_id"] == "someone/demo-student" and upload["token"] == TOKEN
    files = upload["files"]
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "README.md"} <= set(files)
    assert not [f for f in files if "/" in f or f.endswith((".bin", ".pt", ".pth", ".pkl"))], sorted(files)
    assert PROJECTOR_NAME not in files and (out / "checkpoint-2" / PROJECTOR_NAME).is_file()  # it exists, not pushed
    assert files["model.safetensors"][:8] != b"PK\x03\x04"  # safetensors, not a zipped pickle
    # the card
    card = ModelCard(files["README.md"].decode())
    assert {"distillation", "hf_distill"} <= set(card.data.tags)
    text = card.text
    assert "Teacher:** `hf_distill/demo/teacher`" in text and "`gamma=1.0`" in text
    assert "`alpha_ce=0.5`" in text and "`hidden_weight=1.0`" in text and "`ddk_update_steps=2`" in text
    assert "Layer map (student:teacher):** 1:2, 2:4" in text
    final = {d: values[-1] for d, values in summary["ddk_weights"].items()}
    assert "Final DDK domain weights:** " + ", ".join(f"{d}={w:.3f}" for d, w in final.items()) in text
    after = summary["loss"]["student-after"]
    for domain, loss in after.items():
        row = f"| {domain} | {math.exp(summary['loss']['teacher'][domain]):.3f} | "
        assert row in text and f"{math.exp(loss):.3f} | {final[domain]:.3f} |" in text
    # the token is in no output, no log and no file written
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err + caplog.text
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert not (out / "_hub_upload").exists()
    assert json.loads((out / "results.json").read_text())["ddk_weights"] == summary["ddk_weights"]
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # nothing could have left the machine
