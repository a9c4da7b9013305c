"""The recipe under the engines users scale to, on 2 CPU processes: DDP, DeepSpeed ZeRO-2 and ZeRO-3 (the shipped
`cpu.yaml`, `zero2_cpu.yaml`, `zero3_cpu.yaml`), on the demo models with logit KD + hidden states through projections
of another width + DDK. The runs must agree; ZeRO-3 must partition the teacher, resume exactly and save one
consolidated student."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import RECIPE_ENV, ROOT
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hf_distill import PROJECTOR_NAME
from hf_distill.parallel import check_engine_saves

if os.environ.get("CI", "").lower() != "true":  # CI installs the `deepspeed` extra: there these tests must run
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed: pip install -e '.[deepspeed]'")

SCRIPT = Path(__file__).parent / "scripts" / "engine_recipe.py"
CONFIGS = ROOT / "recipes" / "accelerate_configs"
STEPS, SAVE, K = 12, 6, 4  # DDK updates at steps 4 and 8 (none at the last step), around the checkpoint
RECIPE_ARGS = ["--max_steps", STEPS, "--ddk_update_steps", K, "--hidden_weight", 1.0, "--logging_steps", 1,
               "--save_strategy", "steps", "--save_steps", SAVE, "--disable_tqdm", "true"]  # fmt: skip
# DeepSpeed JIT-compiles a communication op on first use: keep it between runs in the checkout (git-ignored)
ENV = {**RECIPE_ENV, "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch"))}
TOLERANCE = 1e-5  # relative, on losses and DDK weights (float32; the engines reduce gradients in other orders)
PORTS = {"ddp": 29541, "zero2": 29542, "zero3": 29543, "zero3-resumed": 29544}


@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_the_shipped_cpu_deepspeed_configs_are_the_gpu_ones_with_the_three_cpu_settings(name):
    """`<name>_cpu.yaml` (what the engine runs below train with) = `<name>.yaml` + use_cpu, 2 processes, fp32."""
    gpu, cpu = (yaml.safe_load((CONFIGS / f"{name}{suffix}.yaml").read_text()) for suffix in ("", "_cpu"))
    assert cpu == {**gpu, "use_cpu": True, "num_processes": 2, "mixed_precision": "no"}


def launch(engine: str, config: Path, out: Path, *extra) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--main_process_port", str(PORTS[engine]), str(SCRIPT), "--output_dir", str(out),
               *map(str, RECIPE_ARGS), *map(str, extra)]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def records(out: Path) -> list[dict]:
    return [json.loads((out / f"engine-rank{rank}.json").read_text()) for rank in range(2)]


def ddk_weights(record: dict) -> list[str]:
    """The logged DDK weight keys (one per domain)."""
    return sorted({k for h in record["log_history"] for k in h if k.startswith("ddk/weight/")})


def logged(record: dict, key: str) -> dict[int, float]:
    """`key` at each logged step (training losses or DDK weights)."""
    return {h["step"]: h[key] for h in record["log_history"] if key in h}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same short run under DDP, ZeRO-2 and ZeRO-3 (shipped CPU configs): {engine: (out, log, config)}."""
    folder = tmp_path_factory.mktemp("engines")
    configs = {
        engine: CONFIGS / f"{name}.yaml"
        for engine, name in (("ddp", "cpu"), ("zero2", "zero2_cpu"), ("zero3", "zero3_cpu"))
    }
    result = {}
    for engine, config in configs.items():
        out = folder / engine
        proc = launch(engine, config, out)
        result[engine] = SimpleNamespace(out=out, log=proc.stdout + proc.stderr, config=config)
    return result


@pytest.mark.slow
def test_zero3_partitions_the_teacher_and_trains_the_student_with_its_projections_only(runs):
    for engine, run in runs.items():
        ranks = records(run.out)
        for record in ranks:
            assert record["world_size"] == 2
            teacher = record["teacher"]
            if engine == "zero3":  # each process holds about half of the teacher's parameters
                assert 0.45 < teacher["held"] / teacher["total"] < 0.55, teacher
                # the teacher's engine only manages partitioned parameters: no optimizer, nothing trained
                assert record["teacher_optimizer"] == "DeepSpeedZeRoOffload"
            else:  # DDP / ZeRO-2: one full copy per process
                assert teacher["held"] == teacher["total"] and record["teacher_optimizer"] == "NoneType"
            assert record["engine"] == ("DistributedDataParallel" if engine == "ddp" else "DeepSpeedEngine")
            assert record["trained_modules"] == ["projections", "student"]  # widths 64 -> 128: learned projections
            assert not record["trained_shares_teacher"] and not record["teacher_requires_grad"]
        for key in ["loss", "grad_norm", *ddk_weights(ranks[0])]:  # both processes log the same (not timings)
            assert logged(ranks[0], key) == logged(ranks[1], key), (engine, key)
    total = records(runs["zero3"].out)[0]["teacher"]["total"]
    teacher = AutoModelForCausalLM.from_pretrained(ROOT / "hf_distill" / "demo" / "teacher")
    assert total == sum(p.numel() for p in teacher.parameters())


@pytest.mark.slow
def test_ddp_zero2_and_zero3_log_the_same_losses_and_ddk_weights_and_train_the_same_student(runs):
    reference = records(runs["ddp"].out)[0]
    losses = ["loss", "loss_ce", "loss_kd", "loss_hidden"]
    weights = ddk_weights(reference)
    assert len(weights) == 4 and sorted(logged(reference, weights[0])) == [K, 2 * K]
    assert sorted(logged(reference, "loss")) == list(range(1, STEPS + 1))
    student = load_file(str(runs["ddp"].out / "model.safetensors"))
    for engine in ("zero2", "zero3"):
        record = records(runs[engine].out)[0]
        for key in losses + weights:
            expected = logged(reference, key)
            assert logged(record, key) == pytest.approx(expected, rel=TOLERANCE), (engine, key)
        trained = load_file(str(runs[engine].out / "model.safetensors"))
        assert trained.keys() == student.keys()
        for name, value in student.items():
            torch.testing.assert_close(trained[name], value, rtol=TOLERANCE, atol=TOLERANCE, msg=f"{engine} {name}")
    # and the run did learn: the last loss is well below the first
    assert logged(reference, "loss")[STEPS] < 0.8 * logged(reference, "loss")[1]


@pytest.mark.slow
def test_zero3_saves_one_consolidated_student_equal_to_the_engines_gathered_parameters(runs):
    out = runs["zero3"].out
    gathered = load_file(str(out / "gathered.safetensors"))
    student = AutoModelForCausalLM.from_pretrained(out)
    saved = student.state_dict()
    assert saved.keys() == gathered.keys()
    for name, value in gathered.items():
        assert torch.equal(saved[name], value), name
    stored = load_file(str(out / "model.safetensors"))  # the student alone: no teacher, no projections
    fresh = AutoModelForCausalLM.from_pretrained(ROOT / "hf_distill" / "demo" / "student").state_dict()
    assert stored.keys() <= fresh.keys() and not (out / PROJECTOR_NAME).exists()
    # checkpoints also hold the projections (for resume), outside the student's weights
    assert (out / f"checkpoint-{SAVE}" / PROJECTOR_NAME).is_file()


@pytest.mark.slow
def test_zero3_resumed_from_a_checkpoint_continues_as_the_uninterrupted_run(runs, tmp_path):
    full = runs["zero3"]
    out = tmp_path / "resumed"
    shutil.copytree(full.out / f"checkpoint-{SAVE}", out / f"checkpoint-{SAVE}")
    launch("zero3-resumed", full.config, out, "--resume_from_checkpoint", "true")
    resumed, uninterrupted = records(out)[0], records(full.out)[0]
    weights = ddk_weights(uninterrupted)
    for key in ["loss", "loss_kd", "loss_hidden", "grad_norm", *weights]:
        after = {s: v for s, v in logged(uninterrupted, key).items() if s > SAVE}
        assert after, key
        assert {s: v for s, v in logged(resumed, key).items() if s > SAVE} == pytest.approx(after, rel=TOLERANCE)
    first, again = load_file(str(full.out / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for name, value in first.items():
        torch.testing.assert_close(again[name], value, rtol=TOLERANCE, atol=TOLERANCE, msg=name)


@pytest.mark.slow
def test_under_zero3_the_fused_logit_loss_falls_back_with_one_line(runs):
    line = "logit_loss='auto': the output heads are sharded, so CE and logit KD use the logits."
    assert runs["zero3"].log.count(line) == 1
    assert line not in runs["zero2"].log and line not in runs["ddp"].log


def _zero3_accelerator(zero: dict) -> SimpleNamespace:
    plugin = SimpleNamespace(deepspeed_config={"zero_optimization": {"stage": 3, **zero}})
    return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin))


def test_zero3_without_a_consolidated_save_is_refused_before_training():
    with pytest.raises(ValueError, match=r"stage3_gather_16bit_weights_on_model_save=False.*zero3_save_16bit_model"):
        check_engine_saves(_zero3_accelerator({}))
    check_engine_saves(_zero3_accelerator({"stage3_gather_16bit_weights_on_model_save": True}))
    shipped = yaml.safe_load((CONFIGS / "zero3.yaml").read_text())["deepspeed_config"]
    assert shipped["zero3_save_16bit_model"] is True


def _on_policy_run(engine: str, config: Path, out: Path, port: int) -> dict:
    """`recipes/on_policy.py` with lmbda=1 (every batch generated by the student) for 6 steps; its results.json."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--main_process_port", str(port), str(ROOT / "recipes" / "on_policy.py"), "--output_dir", str(out),
               "--max_steps", "6", "--lmbda", "1.0", "--logging_steps", "1", "--num_samples", "2",
               "--per_device_train_batch_size", "4", "--max_new_tokens", "12"]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, engine + proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_on_policy_generation_under_zero3_equals_ddp(tmp_path):
    """`recipes/on_policy.py` with lmbda=1 under DDP and under ZeRO-3, where the partitioned student is gathered whole
    for generation (ZeRO's hooks removed, then restored): the same samples (generated lengths), the same losses, and
    one consolidated student."""
    runs = {
        engine: _on_policy_run(engine, config, tmp_path / engine, port)
        for engine, config, port in (
            ("ddp", CONFIGS / "cpu.yaml", 29545),
            ("zero3", CONFIGS / "zero3_cpu.yaml", 29546),
        )
    }
    logs = {engine: [h for h in r["log_history"] if "loss" in h] for engine, r in runs.items()}
    for engine, log in logs.items():
        assert runs[engine]["processes"] == 2
        assert [h["on_policy_share"] for h in log] == [1.0] * 6, engine
        assert all(0 < h["generated_length"] <= 12 and h["loss_kd"] > 0 for h in log), engine
    assert [h["generated_length"] for h in logs["zero3"]] == [h["generated_length"] for h in logs["ddp"]]
    for key in ("loss_kd", "grad_norm"):
        assert [h[key] for h in logs["zero3"]] == pytest.approx([h[key] for h in logs["ddp"]], rel=TOLERANCE), key
    assert list(runs["zero3"]["perplexity"]) == ["teacher", "student-after"]  # student-before: not under ZeRO-3
    assert [s["student-after"] for s in runs["zero3"]["samples"]] == [
        s["student-after"] for s in runs["ddp"]["samples"]
    ]
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "zero3")
    assert all(torch.isfinite(p).all() for p in student.parameters())
