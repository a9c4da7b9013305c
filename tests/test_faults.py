"""Faults a user meets, each reproduced and checked: crashed runs resume, half-written checkpoints are skipped, NaN is
never trained on or saved, bad values are refused in one line, secrets stay secret, tampered teacher caches and
broken input files are named, a stopped process ends the job."""

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from conftest import DEMO, RECIPE, ROOT, PadCollator, lm_dataset, make_config, recipe_error_line, tiny_llama
from conftest import RECIPE_ENV as ENV
from datasets import Dataset
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from hf_distill import (
    DistillationTrainer,
    EmptyLabelsError,
    NonFiniteError,
    TeacherCache,
    build_teacher_cache,
    last_complete_checkpoint,
)
from hf_distill.teacher_cache import seal_teacher_cache
from hf_distill.teacher_cache_check import file_sha256

# a short DDK run of the demo with checkpoints: 24 steps, DDK every 8, a checkpoint every 6
SHORT = ["--max_steps", "24", "--ddk_update_steps", "8", "--ddk_eval_batches", "2", "--validation_size", "16",
         "--max_eval_batches", "2", "--block_size", "64", "--per_device_train_batch_size", "8", "--logging_steps", "2",
         "--warmup_steps", "2", "--save_strategy", "steps", "--save_steps", "6", "--plot", "false"]  # fmt: skip

sys.path.insert(0, str(ROOT / "recipes"))
import ddk  # noqa: E402


def _error_line(capsys, argv, code=2):
    """Run the recipe in-process; it must exit with `code` and one `error: ...` line on stderr."""
    return recipe_error_line(capsys, ddk.main, argv, code)


# ---- resume ---------------------------------------------------------------------------------------------------------


def _recipe(out, *extra):
    return [sys.executable, str(RECIPE), "--output_dir", str(out), *SHORT, *extra]


def _final_state(out):
    return load_file(str(out / "model.safetensors"))


@pytest.mark.slow
def test_recipe_resumes_after_sigkill_and_ends_equal_to_the_uninterrupted_run(tmp_path):
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    subprocess.run(_recipe(whole), env=ENV, cwd=ROOT, check=True, capture_output=True, timeout=600)
    run = subprocess.Popen(_recipe(crashed), env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (crashed / "checkpoint-12" / "trainer_state.json").exists():
        assert run.poll() is None and time.time() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)  # mid-step or mid-save: wherever it is
    run.wait()
    assert not (crashed / "model.safetensors").exists()
    resumed = subprocess.run(_recipe(crashed), env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "holds checkpoints: resuming from" in resumed.stderr
    for key, value in _final_state(whole).items():
        torch.testing.assert_close(_final_state(crashed)[key], value, rtol=0, atol=0, msg=key)
    logs = [
        json.loads((d / "checkpoint-24" / "trainer_state.json").read_text())["log_history"] for d in (whole, crashed)
    ]
    assert [h for h in logs[0] if "loss" in h] == [h for h in logs[1] if "loss" in h]
    results = [json.loads((d / "results.json").read_text()) for d in (whole, crashed)]
    assert results[0]["ddk_weights"] == results[1]["ddk_weights"] and results[0]["loss"] == results[1]["loss"]


def _checkpointing_trainer(out, **kwargs):
    args = make_config(out, max_steps=4, save_strategy="steps", save_steps=2, alpha_ce=0.5, gamma=1.0,
                       hidden_weight=1.0, **kwargs)  # fmt: skip
    return DistillationTrainer(model=tiny_llama(hidden=16, seed=1), teacher_model=tiny_llama(seed=2), args=args,
                               train_dataset=lm_dataset(n=32), data_collator=PadCollator())  # fmt: skip


def _params(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("damage", ["no_trainer_state", "truncated_trainer_state", "truncated_weights"])
def test_a_half_written_checkpoint_is_skipped_and_resume_continues_from_the_previous_one(tmp_path, damage, caplog):
    whole = _checkpointing_trainer(tmp_path / "whole")
    whole.train()
    resumed = _checkpointing_trainer(tmp_path / "whole")  # same output_dir: checkpoint-2 and checkpoint-4
    newest = Path(whole.args.output_dir) / "checkpoint-4"
    if damage == "no_trainer_state":
        (newest / "trainer_state.json").unlink()
    elif damage == "truncated_trainer_state":
        text = (newest / "trainer_state.json").read_text()
        (newest / "trainer_state.json").write_text(text[: len(text) // 2])
    else:
        data = (newest / "model.safetensors").read_bytes()
        (newest / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert last_complete_checkpoint(whole.args.output_dir).endswith("checkpoint-2")
    assert "checkpoint-4 is incomplete" in caplog.text
    resumed.train(resume_from_checkpoint=True)
    for key, value in _params(whole).items():
        torch.testing.assert_close(_params(resumed)[key], value, rtol=0, atol=0, msg=key)
    with pytest.raises(ValueError, match="checkpoint-2' is not a complete checkpoint: no such folder"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "elsewhere" / "checkpoint-2"))


def test_recipe_refuses_an_incomplete_checkpoint_and_honours_overwrite(capsys, tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint-6").mkdir(parents=True)
    line = _error_line(capsys, ["--output_dir", str(out), "--resume_from_checkpoint", str(out / "checkpoint-6")])
    assert "--resume_from_checkpoint" in line and "not a complete checkpoint: no trainer_state.json" in line
    line = _error_line(capsys, ["--output_dir", str(out)])
    assert "holds only incomplete checkpoints" in line and "--overwrite_output_dir" in line
    line = _error_line(capsys, ["--output_dir", str(tmp_path / "new"), "--resume_from_checkpoint", "true"])
    assert "holds no complete checkpoint" in line


STATE_DAMAGE = [  # (file, damage, the words the refusal must say)
    ("optimizer.pt", "missing", "a fresh optimizer state"), ("optimizer.pt", "truncated", "a fresh optimizer state"),
    ("scheduler.pt", "missing", "the learning-rate schedule from its start"),
    ("scheduler.pt", "truncated", "the learning-rate schedule from its start"),
    ("rng_state.pth", "missing", "random state not restored"), ("rng_state.pth", "truncated", "random state"),
]  # fmt: skip


def _damage(checkpoint, name, damage):
    """Delete `name` from `checkpoint`, or cut it to half its bytes (as a copy killed halfway)."""
    file = checkpoint / name
    if damage == "missing":
        file.unlink()
    else:
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    return "missing" if damage == "missing" else "not a whole torch file"


@pytest.fixture(scope="module")
def trained_checkpoints(tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4, and its final student."""
    trainer = _checkpointing_trainer(tmp_path_factory.mktemp("state"))
    trainer.train()
    return Path(trainer.args.output_dir), _params(trainer)


@pytest.mark.parametrize(("name", "damage", "lost"), STATE_DAMAGE, ids=[f"{n}-{d}" for n, d, _ in STATE_DAMAGE])
def test_resume_refuses_a_checkpoint_without_its_training_state_unless_told_to_go_on(
    tmp_path, trained_checkpoints, caplog, name, damage, lost
):
    """Trainer level: one error naming the file, what would be lost and the flag, before any step (nothing written);
    with `resume_without_training_state=True` one warning, and the run ends at its last step."""
    whole, final = trained_checkpoints
    out = tmp_path / "out"
    shutil.copytree(whole / "checkpoint-2", out / "checkpoint-2")
    why = _damage(out / "checkpoint-2", name, damage)
    refused = _checkpointing_trainer(tmp_path)  # output_dir: tmp_path / "out"
    with pytest.raises(ValueError) as error:
        refused.train(resume_from_checkpoint=True)
    message = str(error.value)
    assert message.startswith(f"resume_from_checkpoint={str(out / 'checkpoint-2')!r}: {name} is {why}")
    assert lost in message and "resume_without_training_state=True" in message and "\n" not in message
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2"] and refused.state.global_step == 0
    went_on = _checkpointing_trainer(tmp_path, resume_without_training_state=True)
    went_on.train(resume_from_checkpoint=True)
    assert went_on.state.global_step == 4 and (out / "checkpoint-4" / "optimizer.pt").is_file()
    warned = [r.getMessage() for r in caplog.records if "(resume_without_training_state=True)" in r.getMessage()]
    assert len(warned) == 1 and f"{name} is {why}" in warned[0]
    if name == "optimizer.pt":  # a fresh Adam state moves the weights differently from the uninterrupted run
        assert any(not torch.equal(_params(went_on)[k], v) for k, v in final.items())


def test_an_undamaged_checkpoint_still_resumes_to_the_uninterrupted_run(tmp_path, trained_checkpoints):
    whole, final = trained_checkpoints
    shutil.copytree(whole / "checkpoint-2", tmp_path / "out" / "checkpoint-2")
    resumed = _checkpointing_trainer(tmp_path)
    resumed.train(resume_from_checkpoint=True)
    for key, value in final.items():
        torch.testing.assert_close(_params(resumed)[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize(("name", "damage", "lost"), STATE_DAMAGE[::2], ids=[n for n, _, _ in STATE_DAMAGE[::2]])
def test_recipe_refuses_a_checkpoint_without_its_training_state_in_one_line(
    capsys, tmp_path, trained_checkpoints, name, damage, lost
):
    """Recipe level: exit 2, one `error:` line naming the file and `--resume_without_training_state true`, before
    any model loads; nothing in the output folder changes."""
    whole, _ = trained_checkpoints
    out = tmp_path / "out"
    shutil.copytree(whole / "checkpoint-2", out / "checkpoint-2")
    why = _damage(out / "checkpoint-2", name, damage)
    before = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*"))
    line = _error_line(capsys, ["--output_dir", str(out), "--resume_from_checkpoint", "true"])
    assert line.startswith(f"error: resume_from_checkpoint={str(out / 'checkpoint-2')!r}: {name} is {why}"), line
    assert lost in line and "pass --resume_without_training_state true to go on without it." in line
    assert sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*")) == before


# ---- NaN ------------------------------------------------------------------------------------------------------------


class _NaNFromStep(TrainerCallback):
    """Poison the teacher's output head with NaN from optimizer step `step` on."""

    def __init__(self, teacher, step):
        self.teacher, self.step = teacher, step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            with torch.no_grad():
                self.teacher.lm_head.weight[5] = float("nan")


def test_a_nan_teacher_stops_training_naming_the_term_and_step_and_nothing_of_it_is_saved(tmp_path):
    teacher = tiny_llama(seed=2)
    args = make_config(tmp_path, max_steps=6, save_strategy="steps", save_steps=1, alpha_ce=0.5, gamma=1.0)
    trainer = DistillationTrainer(model=tiny_llama(hidden=16, seed=1), teacher_model=teacher, args=args,
                                  train_dataset=lm_dataset(n=32), data_collator=PadCollator(),
                                  callbacks=[_NaNFromStep(teacher, 3)])  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"loss term loss_kd \(gamma=1.0\) is nan at optimizer step 3"):
        trainer.train()
    saved = sorted(p.name for p in Path(args.output_dir).iterdir())
    assert saved == ["checkpoint-1", "checkpoint-2"]  # the step that met the NaN wrote nothing
    after_two = load_file(str(Path(args.output_dir) / "checkpoint-2" / "model.safetensors"))
    for name, value in trainer.student.state_dict().items():
        assert torch.isfinite(value).all() and torch.equal(value, after_two[name]), name
    assert all(math.isfinite(h["loss"]) and h["loss"] > 0 for h in trainer.state.log_history if "loss" in h)
    with torch.no_grad():
        trainer.student.model.embed_tokens.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"embed_tokens.weight holds non-finite values: it is not saved"):
        trainer.save_model(str(tmp_path / "final"))
    assert not (tmp_path / "final").exists()


def _nan_teacher(tmp_path):
    teacher = tmp_path / "nan_teacher"
    shutil.copytree(DEMO / "teacher", teacher)
    state = load_file(str(teacher / "model.safetensors"))
    head = next(k for k in state if "lm_head" in k or "embed_tokens" in k)
    state[head][7] = float("nan")
    save_file(state, str(teacher / "model.safetensors"), metadata={"format": "pt"})
    return teacher


def test_recipe_with_a_nan_teacher_exits_non_zero_and_saves_no_model(capsys, tmp_path):
    out = tmp_path / "out"
    line = _error_line(capsys, ["--output_dir", str(out), "--teacher_model", str(_nan_teacher(tmp_path)), *SHORT], 1)
    assert "not finite" in line
    assert not (out / "model.safetensors").exists() and not list(out.glob("checkpoint-*"))


class _NoLabels(PadCollator):
    def __call__(self, rows):
        batch = super().__call__(rows)
        batch["labels"] = torch.full_like(batch["input_ids"], -100)
        return batch


def test_a_step_without_label_tokens_is_an_error_or_one_warning(tmp_path, caplog):
    unlabelled = lm_dataset(n=8)
    for mode in ("error", "warn"):
        args = make_config(tmp_path / mode, max_steps=3, alpha_ce=0.5, gamma=1.0, hidden_weight=1.0, empty_labels=mode)
        trainer = DistillationTrainer(model=tiny_llama(hidden=16, seed=1), teacher_model=tiny_llama(seed=2),
                                      args=args, train_dataset=unlabelled, data_collator=_NoLabels())  # fmt: skip
        if mode == "error":
            with pytest.raises(EmptyLabelsError, match=r"optimizer step 1 has no label token .*loss_ce, loss_kd"):
                trainer.train()
        else:
            trainer.train()
            assert caplog.text.count("has no label token") == 1
            assert [h["loss_ce"] for h in trainer.state.log_history if "loss_ce" in h] == [0.0, 0.0, 0.0]
            assert all(h["loss_hidden"] > 0 for h in trainer.state.log_history if "loss_hidden" in h)


# ---- configuration: every bad value is one line naming the field ----------------------------------------------------

# (field, command-line value or None, YAML value or None, text the line must hold besides the field)
BAD_VALUES = [
    ("alpha_ce", "nan", ".nan", "nan"), ("alpha_ce", "inf", ".inf", "inf"), ("alpha_ce", "-1", "-1", "negative"),
    ("alpha_ce", "abc", "abc", "abc"), ("alpha_ce", None, "null", "needs a value"),
    ("gamma", "nan", ".nan", "nan"), ("gamma", "inf", ".inf", "inf"), ("gamma", "-0.5", None, "negative"),
    ("hidden_weight", "nan", None, "nan"), ("hidden_weight", "-1", None, "negative"),
    ("attention_weight", "inf", None, "inf"), ("word_hidden_weight", "nan", None, "nan"),
    ("word_attention_weight", "-2", None, "negative"),
    ("temperature", "0", "0", ">= 0.01"), ("temperature", "-1", None, ">= 0.01"),
    ("temperature", "1e-30", "1.0e-30", ">= 0.01"), ("temperature", "nan", ".nan", "finite"),
    ("temperature", "inf", None, "finite"), ("temperature", "1e9", None, "<= 100"),
    ("temperature", None, "[1, 2]", "list"),
    ("jsd_beta", "1.5", None, "<= 1"), ("jsd_beta", "nan", None, "finite"),
    ("divergence", "kl", "kl", "kl"), ("hidden_loss", "l1", None, "l1"), ("attention_loss", "cos", "cos", "cos"),
    ("teacher_dtype", "int8", None, "int8"), ("task", "translation", None, "translation"),
    ("logit_loss", "fast", "fast", "fast"), ("empty_labels", "ignore", None, "ignore"),
    ("logit_chunk_size", "0", "0", ">= 1"), ("logit_chunk_size", "-5", None, ">= 1"),
    ("logit_chunk_size", "2.5", "2.5", "2.5"), ("logit_chunk_size", "big", None, "big"),
    ("layer_map", "1:x", None, "1:x"),
    ("ddk_update_steps", "0", "0", ">= 1"), ("ddk_update_steps", "-1", None, ">= 1"),
    ("ddk_update_steps", "2.5", "2.5", "2.5"), ("ddk_update_steps", None, "true", "boolean"),
    ("ddk_alpha", "1.5", "1.5", "<= 1"), ("ddk_alpha", "-0.1", None, ">= 0"), ("ddk_alpha", "nan", ".nan", "finite"),
    ("ddk_eval_batches", "0", "0", ">= 1"), ("ddk_eval_batches", None, "1.5", "1.5"),
    ("ddk_eval_tokens", "0", "0", ">= 2"), ("ddk_eval_tokens", None, "1.5", "1.5"),
    ("ddk_ratio_temperature", "0", "0", "> 0"), ("ddk_ratio_temperature", "nan", None, "finite"),
    ("ddk_min_weight", "-0.1", None, ">= 0"), ("ddk_max_weight", "1.5", "1.5", "<= 1"),
    ("ddk_min_weight", "0.3", None, "1/4"), ("ddk_gap", "log", "log", "log"),
    ("ddk_initial_weights", "a=0.5,b", None, "cannot parse"), ("ddk_initial_weights", "a=0.7,b=0.7", None, "sum to 1"),
    ("learning_rate", "nan", ".nan", "finite"), ("learning_rate", "-1", "-1", ">= 0"),
    ("learning_rate", "inf", None, "finite"), ("learning_rate", None, "null", "needs a value"),
    ("per_device_train_batch_size", "0", "0", ">= 1"), ("per_device_train_batch_size", "-2", None, ">= 1"),
    ("per_device_train_batch_size", "2.5", "2.5", "2.5"), ("per_device_eval_batch_size", "0", None, ">= 1"),
    ("gradient_accumulation_steps", "0", "0", ">= 1"), ("gradient_accumulation_steps", "1.5", None, "1.5"),
    ("max_steps", "0", "0", ">= 1"), ("max_steps", "-5", None, "-1"), ("max_steps", None, "2.5", "2.5"),
    ("num_train_epochs", "0", None, "> 0"), ("num_train_epochs", "nan", None, "finite"),
    ("num_train_epochs", "-1", None, "> 0"), ("warmup_steps", "-1", "-1", ">= 0"),
    ("warmup_steps", "nan", None, "finite"),
    ("weight_decay", "-0.1", None, ">= 0"), ("weight_decay", "nan", None, "finite"),
    ("adam_beta1", "1.0", None, "< 1"), ("adam_beta1", "-0.1", None, ">= 0"), ("adam_beta2", "1.5", "1.5", "< 1"),
    ("adam_epsilon", "0", None, "> 0"), ("adam_epsilon", "nan", None, "finite"),
    ("max_grad_norm", "nan", ".nan", "finite"), ("max_grad_norm", "-1", None, ">= 0"),
    ("max_grad_norm", "inf", None, "finite"), ("label_smoothing_factor", "1.0", None, "< 1"),
    ("logging_steps", "0", "0", "> 0"), ("logging_steps", "-1", None, "> 0"),
    ("save_steps", "0", None, "> 0"), ("eval_steps", "0", None, "> 0"), ("save_total_limit", "0", "0", ">= 1"),
    ("seed", "-1", "-1", ">= 0"), ("seed", str(2**33), None, "<= 4.29"), ("data_seed", "-1", None, ">= 0"),
    ("dataloader_num_workers", "-1", None, ">= 0"), ("ddp_timeout", "0", "0", ">= 1"),
    ("lr_scheduler_type", "bogus", "bogus", "bogus"), ("bf16", "maybe", "maybe", "maybe"),
    ("block_size", "0", "0", ">= 2"), ("block_size", "1", None, ">= 2"), ("block_size", "-1", None, ">= 2"),
    ("block_size", "2.5", "2.5", "2.5"), ("block_size", "100000", "100000", "positions"),
    ("block_size", None, "null", "needs a value"), ("validation_size", "0", "0", ">= 1"),
    ("validation_size", "-1", None, ">= 1"), ("max_eval_batches", "0", "0", ">= 1"), ("plot", "maybe", None, "maybe"),
    ("hidden_include_embeddings", "maybe", None, "maybe"), ("attention_average_heads", None, "3", "3"),
    ("teacher_cache_check_hashes", "maybe", None, "maybe"), ("eval_delay", "-1", None, ">= 0"),
    ("torch_empty_cache_steps", "0", None, ">= 1"), ("eval_accumulation_steps", "0", "0", ">= 1"),
    ("dataloader_prefetch_factor", "0", None, ">= 1"), ("neftune_noise_alpha", "-1", None, ">= 0"),
    ("ddp_bucket_cap_mb", "0", None, ">= 1"),
    # issue 25: a traceback, a misleading line or silence before
    ("gamma", "1e30", None, "<= 1e+06"), ("alpha_ce", "1e7", None, "too large"),
    ("lr_scheduler_kwargs", "notadict", "notadict", "not a mapping"),
    ("lr_scheduler_kwargs", "[1, 2]", None, "mapping"), ("output_dir", "", None, "is empty"),
    ("ddk_initial_weights", "", "''", "is empty"), ("load_best_model_at_end", "true", "true", "eval_strategy='no'"),
    ("eval_strategy", "steps", None, "evaluates no eval set"), ("layer_map", "-1:0", "'-1:0'", "negative layer index"),
    ("dataset_name", "", "''", "is empty"),
    ("dataset_name", "data/no-such-corpus", None, "not a local file or folder"),
    ("validation_size", "4", None, "raise validation_size"),
]  # fmt: skip
CASES = [(f, "cli", v, t) for f, v, _, t in BAD_VALUES if v is not None]
CASES += [(f, "yaml", v, t) for f, _, v, t in BAD_VALUES if v is not None]


def test_the_table_covers_at_least_the_94_values_measured():
    assert len(CASES) >= 94 and len({f for f, *_ in CASES}) >= 50


@pytest.mark.parametrize(("field", "where", "value", "text"), CASES, ids=[f"{w}-{f}={v}" for f, w, v, _ in CASES])
def test_a_bad_value_is_one_line_naming_the_field(capsys, tmp_path, field, where, value, text):
    argv = ["--output_dir", str(tmp_path / "out")]
    if where == "cli":
        argv += [f"--{field}", value]
    else:
        config = tmp_path / "bad.yaml"
        demo = (DEMO / "demo.yaml").read_text().splitlines(keepends=True)
        kept = "".join(line for line in demo if not line.startswith(f"{field}:"))  # a key given twice is refused
        config.write_text(kept + f"{field}: {value}\n")
        argv += ["--config", str(config)]
    line = _error_line(capsys, argv)
    assert field in line and text.lower() in line.lower(), line
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_an_output_dir_that_is_a_file_is_one_line_and_the_file_is_kept(capsys, tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("keep me")
    line = _error_line(capsys, ["--output_dir", str(file)])
    expected = f"DistillationConfig.output_dir={str(file)!r} is a file, not a folder: choose another output_dir."
    assert line == f"error: {expected}"
    assert file.read_text() == "keep me"


def test_ddk_update_steps_beyond_max_steps_warns(tmp_path, caplog):
    make_config(tmp_path, max_steps=10, ddk_update_steps=40)
    assert "ddk_update_steps=40 > max_steps=10: DDK never updates the domain mixture" in caplog.text


def test_help_works_and_documents_resume_and_the_timeout(capsys):
    with pytest.raises(SystemExit) as exit_info:
        ddk.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--resume_from_checkpoint",
        "--overwrite_output_dir",
        "--ddp_timeout",
        "--dataset_split",
        "--empty_labels",
    ):
        assert flag in out
    assert "train[:5%]" in out


# ---- secrets --------------------------------------------------------------------------------------------------------

TOKEN = "hf_FAKEtokenNEVERprinted0123456789abcdef"


class _FailingHub(BaseHTTPRequestHandler):
    """A Hub that creates repositories and refuses every upload, its error echoing the request's Authorization header
    (as some proxies' error pages do); records the Authorization headers it saw."""

    seen: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        self.seen.append(self.headers.get("authorization", ""))
        self.rfile.read(int(self.headers.get("content-length", 0) or 0))
        host = f"http://{self.headers['host']}"
        if self.path == "/api/repos/create":
            self._reply(200, {"url": f"{host}/someone/student", "name": "someone/student"})
        else:
            auth = self.headers.get("authorization", "")
            self._reply(403, {"error": f"uploads are closed on this test hub (request: Authorization: {auth})"})

    do_GET = do_PUT = do_POST  # noqa: N815

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def _every_file_holds(folder, text):
    return [str(p) for p in Path(folder).rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


@pytest.mark.slow
def test_a_failed_push_keeps_every_local_artefact_and_no_output_or_file_holds_the_token(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FailingHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hub = {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
    push = ["--push_to_hub", "true", "--hub_model_id", "someone/student", "--max_steps", "4", "--ddk_update_steps",
            "2", "--ddk_eval_batches", "1", "--validation_size", "8", "--max_eval_batches", "1", "--block_size", "64",
            "--per_device_train_batch_size", "4", "--save_strategy", "steps", "--save_steps", "2"]  # fmt: skip
    runs = {  # the token from the environment through the README's launcher, and (warned) on the command line
        "env": ([sys.executable, "-m", "accelerate.commands.launch", str(RECIPE)], {"HF_TOKEN": TOKEN}, []),
        "cli": ([sys.executable, str(RECIPE)], {}, ["--hub_token", TOKEN]),
    }
    try:
        for name, (command, env, extra) in runs.items():
            out = tmp_path / name
            proc = subprocess.run([*command, "--output_dir", str(out), *push, *extra], env={**ENV, **hub, **env},
                                  cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
            assert proc.returncode != 0, proc.stdout[-2000:]
            # one line (accelerate >= 1.16's launcher repeats the child's stderr in its own exception)
            errors = {line for line in proc.stderr.splitlines() if line.startswith("error: ")}
            assert len(errors) == 1 and "the push to someone/student failed" in errors.pop(), proc.stderr[-3000:]
            for artefact in ("model.safetensors", "config.json", "tokenizer.json", "results.json", "README.md"):
                assert (out / artefact).is_file(), artefact
            assert "Per-domain perplexity on the held-out texts" in proc.stdout
            assert TOKEN not in proc.stdout + proc.stderr and not _every_file_holds(tmp_path, TOKEN)
            assert ("--hub_token on the command line is visible" in proc.stderr) == (name == "cli")
        assert f"Bearer {TOKEN}" in _FailingHub.seen  # the token was used, from the environment and the command line
    finally:
        server.shutdown()


# ---- teacher cache --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_data():
    tokenizer = AutoTokenizer.from_pretrained(DEMO / "student")
    lines = (DEMO / "corpus" / "prose.jsonl").read_text().splitlines()[:12]
    rows = [tokenizer(json.loads(t)["text"])["input_ids"][:16] for t in lines]
    return tokenizer, Dataset.from_dict({"input_ids": rows})


@pytest.fixture
def cache(tmp_path, cache_data):
    tokenizer, data = cache_data
    teacher = AutoModelForCausalLM.from_pretrained(DEMO / "teacher").eval()
    build_teacher_cache(teacher, data, str(tmp_path / "cache"), tokenizer, k=4, examples_per_shard=5)
    return tmp_path / "cache"


def _manifest(cache):
    return json.loads((cache / "manifest.json").read_text())


def _rewrite_shard(cache, number, change, reseal=True):
    """Change shard `number`'s tensors; with `reseal` the manifest records the new size and hash (so only the value
    checks can tell)."""
    manifest = _manifest(cache)
    path = cache / manifest["shards"][number]["file"]
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})
    if reseal:
        manifest["shards"][number].update(size=path.stat().st_size, sha256=file_sha256(str(path)))
        (cache / "manifest.json").write_text(json.dumps(manifest))


def _edit_manifest(cache, edit):
    manifest = _manifest(cache)
    edit(manifest)
    (cache / "manifest.json").write_text(json.dumps(manifest))


def _flip_a_byte(cache):
    path = cache / "shard-00001.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # inside the log-probabilities, same size
    path.write_bytes(bytes(data))


def _swap_shards(cache):
    first, second = cache / "shard-00000.safetensors", cache / "shard-00002.safetensors"
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b), second.write_bytes(a)


def _link_outside(cache):
    shutil.copy(cache / "shard-00000.safetensors", cache.parent / "outside.safetensors")
    (cache / "shard-00000.safetensors").unlink()
    os.symlink(cache.parent / "outside.safetensors", cache / "shard-00000.safetensors")


def _outside_file(cache, name):
    shutil.copy(cache / "shard-00000.safetensors", cache.parent / "outside.safetensors")
    _edit_manifest(cache, lambda m: m["shards"][0].update(file=name))


TAMPERINGS = {
    "swapped shards": (_swap_shards, "has .* bytes, the manifest records|does not have the SHA-256"),
    "changed byte": (_flip_a_byte, "does not have the SHA-256 the manifest records"),
    "nan": (lambda c: _rewrite_shard(c, 1, lambda t: t["logprobs"].__setitem__((2, 1), float("nan"))), "non-finite"),
    "positive": (lambda c: _rewrite_shard(c, 0, lambda t: t["logprobs"].__setitem__((0, 0), 0.5)), "positive log"),
    "token id": (lambda c: _rewrite_shard(c, 0, lambda t: t["indices"].__setitem__((0, 0), 10**6)), "ids outside"),
    "offsets": (lambda c: _rewrite_shard(c, 0, lambda t: t["offsets"].__setitem__(1, 999)), "offsets that do not"),
    "parent path": (lambda c: _outside_file(c, "../outside.safetensors"), "is not a file name inside the cache"),
    "absolute path": (lambda c: _outside_file(c, str(c.parent / "outside.safetensors")), "not a file name inside"),
    "link outside": (_link_outside, "leads outside the cache folder"),
    "missing shard": (lambda c: (c / "shard-00001.safetensors").unlink(), "'shard-00001.safetensors' is missing"),
    "truncated shard": (lambda c: (c / "shard-00001.safetensors").write_bytes(b"\0" * 10), "has 10 bytes"),
    "manifest not json": (lambda c: (c / "manifest.json").write_text("{not json"), "manifest.json is not valid JSON"),
    "no size": (lambda c: _edit_manifest(c, lambda m: m["shards"][0].pop("size")), "has no valid 'size'"),
    "no tokenizer hash": (lambda c: _edit_manifest(c, lambda m: m.pop("tokenizer_hash")), "valid 'tokenizer_hash'"),
    "k as text": (lambda c: _edit_manifest(c, lambda m: m.update(k="4")), "has no valid 'k' \\(got '4'\\)"),
    "k": (lambda c: _edit_manifest(c, lambda m: m.update(k=8)), "wrong shape or dtype"),
    "examples": (lambda c: _edit_manifest(c, lambda m: m.update(num_examples=13)), "hold 12 examples"),
    "shard gap": (lambda c: _edit_manifest(c, lambda m: m["shards"][1].update(first_example=6)), "does not start at"),
}  # fmt: skip


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_a_tampered_cache_is_refused_in_one_line_before_training(tmp_path, cache, cache_data, tampering):
    tokenizer, data = cache_data
    damage, message = TAMPERINGS[tampering]
    TeacherCache(str(cache))  # intact: opens
    damage(cache)
    args = make_config(tmp_path / "run", gamma=1.0, teacher_cache=str(cache))
    with pytest.raises(ValueError, match=message) as error:
        DistillationTrainer(model=AutoModelForCausalLM.from_pretrained(DEMO / "student"), args=args,
                            train_dataset=data, data_collator=PadCollator(), processing_class=tokenizer)  # fmt: skip
    assert "\n" not in str(error.value) and str(error.value).startswith(f"teacher_cache={str(cache)!r}")


def test_skipping_hashes_still_checks_sizes_and_values_and_a_version_1_cache_can_be_sealed(cache):
    _flip_a_byte(cache)
    TeacherCache(str(cache), check_hashes=False)  # a changed byte with the same size passes without hashes...
    with pytest.raises(ValueError, match="SHA-256"):
        TeacherCache(str(cache))
    (cache / "shard-00001.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match="has 10 bytes"):  # ...a size never does
        TeacherCache(str(cache), check_hashes=False)
    _rewrite_shard(cache, 0, lambda t: t["logprobs"].__setitem__((0, 0), float("inf")), reseal=False)
    _edit_manifest(cache, lambda m: [m.update(version=1), *(s.pop("sha256") for s in m["shards"])])
    with pytest.raises(ValueError, match="without shard hashes: rebuild it, or .*seal_teacher_cache"):
        TeacherCache(str(cache))
    seal_teacher_cache(str(cache))
    with pytest.raises(ValueError, match="non-finite log-probabilities"):  # sealing trusts bytes, never values
        TeacherCache(str(cache))


# ---- input files ----------------------------------------------------------------------------------------------------


def test_empty_non_utf8_and_truncated_files_are_named(capsys, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(DEMO / "corpus", corpus)
    (corpus / "code.jsonl").write_text("")
    line = _error_line(capsys, ["--output_dir", str(tmp_path / "o"), "--dataset_name", str(corpus)])
    assert f"{str(corpus / 'code.jsonl')!r} is empty" in line
    (corpus / "code.jsonl").write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    line = _error_line(capsys, ["--output_dir", str(tmp_path / "o"), "--dataset_name", str(corpus)])
    assert f"{str(corpus / 'code.jsonl')!r} is not UTF-8 text (byte 13" in line
    (corpus / "code.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    line = _error_line(capsys, ["--output_dir", str(tmp_path / "o"), "--dataset_name", str(corpus)])
    assert f"{str(corpus / 'code.jsonl')!r} could not be read as json" in line

    teacher = tmp_path / "teacher"
    shutil.copytree(DEMO / "teacher", teacher)
    weights = (teacher / "model.safetensors").read_bytes()
    (teacher / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    line = _error_line(capsys, ["--output_dir", str(tmp_path / "o"), "--teacher_model", str(teacher)])
    assert f"teacher_model={str(teacher)!r}" in line and "model.safetensors is not a complete safetensors" in line
    with pytest.raises(ValueError, match=r"teacher_model=.*/model.safetensors is not a complete safetensors file"):
        DistillationTrainer(model=tiny_llama(), teacher_model=str(teacher), args=make_config(tmp_path),
                            train_dataset=lm_dataset(n=4), data_collator=PadCollator())  # fmt: skip

    missing = tmp_path / "missing" / "folder"  # a local path, not a Hub id: not "Repo id must be in the form ..."
    line = _error_line(capsys, ["--output_dir", str(tmp_path / "o"), "--teacher_model", str(missing)])
    expected = f"teacher_model={str(missing)!r}: no such folder (a local path; a Hub model is named 'org/name')"
    assert line == f"error: {expected}: fix the path."

    for text, message in ((b"", "is empty"), (b"# only a comment\n", "holds no settings"), (b"lr: \xff\n", "UTF-8")):
        (tmp_path / "c.yaml").write_bytes(text)
        line = _error_line(capsys, ["--config", str(tmp_path / "c.yaml")])
        assert str(tmp_path / "c.yaml") in line and message in line


# ---- two processes --------------------------------------------------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_stopped_process_ends_the_job_within_ddp_timeout_on_cpu(tmp_path):
    timeout = 10
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())]  # fmt: skip
    script = ROOT / "tests" / "scripts" / "stopped_rank.py"
    proc = subprocess.run([*launch, str(script), str(tmp_path), str(timeout)], env=ENV, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    ended = time.time()
    assert proc.returncode != 0
    assert f"Timed out waiting {timeout * 1000}ms" in proc.stderr  # rank 0 gave up after ddp_timeout
    # rank 0 fails after `timeout`; torchrun then gives the stopped process 30 s before it kills it
    assert ended - float((tmp_path / "stopped_at").read_text()) < timeout + 30 + 30
