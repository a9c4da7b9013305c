"""The student and its learned projections as one module: one optimizer, plain `from_pretrained` output, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import PadCollator, lm_dataset, tiny_llama
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from hf_distill import PROJECTOR_NAME, DistillationStudent, DistillationTrainer, convert_checkpoint


def _run(config_factory, tmp_path, name, max_steps, resume=None):
    args = config_factory(
        output_dir=str(tmp_path / name), max_steps=max_steps, save_strategy="steps", save_steps=3,
        learning_rate=3e-3, hidden_weight=1.0, gamma=1.0, max_grad_norm=0.5,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=tiny_llama(hidden=16, seed=1), teacher_model=tiny_llama(hidden=32, layers=4, seed=2), args=args,
        train_dataset=lm_dataset(n=64), data_collator=PadCollator(),
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_one_module_one_optimizer_plain_output_and_exact_resume(config_factory, tmp_path):
    full = _run(config_factory, tmp_path, "full", 6)
    module = full.model
    assert isinstance(module, DistillationStudent) and module.student is full.student
    projections = {id(p) for p in full.projector.parameters()}
    assert projections and projections <= {id(p) for p in module.parameters()}
    # one optimizer parameter-group set (the Trainer's decay / no-decay split) covering student and projections
    groups = [{id(p) for p in g["params"]} for g in full.optimizer.param_groups]
    assert len(groups) == 2 and set().union(*groups) == {id(p) for p in module.parameters()}
    assert all(p.grad is None or not p.grad.abs().sum() for p in module.parameters())  # zeroed together

    out = tmp_path / "student"
    full.save_model(str(out))
    keys = set(load_file(str(out / "model.safetensors")))
    assert keys == set(full.student.state_dict()) and not [
        k for k in keys if k.startswith(("projections.", "student."))
    ]
    assert not (out / PROJECTOR_NAME).exists()
    reloaded = LlamaForCausalLM.from_pretrained(str(out)).eval()
    ids = torch.randint(1, 90, (2, 9))
    full.student.eval()
    torch.testing.assert_close(reloaded(input_ids=ids).logits, full.student(input_ids=ids).logits)

    checkpoint = tmp_path / "full" / "checkpoint-3"
    assert set(load_file(str(checkpoint / "model.safetensors"))) == keys  # a checkpoint's student is plain too
    resumed = _run(config_factory, tmp_path, "resumed", 6, resume=str(checkpoint))
    steps = [[h for h in run.state.log_history if "loss" in h and h["step"] > 3] for run in (full, resumed)]
    assert [h["step"] for h in steps[1]] == [4, 5, 6]
    for a, b in zip(*steps, strict=True):
        for key in ("loss", "loss_ce", "loss_kd", "loss_hidden", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, msg=key)


OLD_CHECKPOINT = Path(__file__).parent / "data" / "checkpoint-0.1"  # checkpoint-3 of `_run(..., 6)`, written by 0.1


def _trainer(config_factory, tmp_path, name):
    args = config_factory(
        output_dir=str(tmp_path / name), max_steps=6, save_strategy="steps", save_steps=3, learning_rate=3e-3,
        hidden_weight=1.0, gamma=1.0, max_grad_norm=0.5,
    )  # fmt: skip
    return DistillationTrainer(
        model=tiny_llama(hidden=16, seed=1), teacher_model=tiny_llama(hidden=32, layers=4, seed=2), args=args,
        train_dataset=lm_dataset(n=64), data_collator=PadCollator(),
    )  # fmt: skip


def test_a_checkpoint_of_the_previous_release_is_refused_then_converted_and_continues_exactly(
    config_factory, tmp_path
):
    source = {f.name: f.read_bytes() for f in OLD_CHECKPOINT.iterdir()}
    with pytest.raises(ValueError, match=r"written by hf_distill 0.1 .*hf_distill.convert_checkpoint\(trainer, "):
        _trainer(config_factory, tmp_path, "refused").train(resume_from_checkpoint=str(OLD_CHECKPOINT))

    trainer = _trainer(config_factory, tmp_path, "converted")
    converted = convert_checkpoint(trainer, str(OLD_CHECKPOINT), str(tmp_path / "checkpoint-3"))
    with safe_open(str(Path(converted) / PROJECTOR_NAME), framework="pt") as f:
        assert f.metadata()["layout"] == "student_module"
    trainer.train(resume_from_checkpoint=converted)
    logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h and h["step"] > 3]
    expected = json.loads((OLD_CHECKPOINT / "hf_distill_0.1_continuation.json").read_text())  # 0.1's steps 4-6
    assert [h["step"] for h in logs] == [e["step"] for e in expected] == [4, 5, 6]
    for got, want in zip(logs, expected, strict=True):
        for key in ("loss", "loss_ce", "loss_kd", "loss_hidden", "grad_norm"):
            assert got[key] == pytest.approx(want[key], rel=1e-5), (want["step"], key)
    assert {f.name: f.read_bytes() for f in OLD_CHECKPOINT.iterdir()} == source  # the source is untouched

    with pytest.raises(FileExistsError, match="exists: choose a new folder"):
        convert_checkpoint(trainer, str(OLD_CHECKPOINT), converted)
    with pytest.raises(ValueError, match="is not an hf_distill 0.1 checkpoint"):
        convert_checkpoint(trainer, converted, str(tmp_path / "again"))


def test_the_module_behaves_as_the_student_for_the_trainer(config_factory, tmp_path):
    args = config_factory(hidden_weight=1.0, max_steps=2, gradient_checkpointing=True)
    trainer = DistillationTrainer(
        model=tiny_llama(hidden=16, seed=1), teacher_model=tiny_llama(hidden=32, layers=4, seed=2), args=args,
        train_dataset=lm_dataset(), data_collator=PadCollator(),
    )  # fmt: skip
    assert trainer.model.config is trainer.student.config
    trainer.train()
    assert trainer.student.is_gradient_checkpointing  # the Trainer's call reached the student
    assert trainer.state.total_flos > 0  # floating_point_ops too
    with pytest.raises(AttributeError, match="no_such_attribute"):
        trainer.model.no_such_attribute  # noqa: B018


def _lora_run(config_factory, tmp_path, name, resume=None):
    from peft import LoraConfig

    args = config_factory(output_dir=str(tmp_path / name), max_steps=4, save_strategy="steps", save_steps=2,
                          learning_rate=1e-2, hidden_weight=1.0, gamma=1.0)  # fmt: skip
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    trainer = DistillationTrainer(
        model=tiny_llama(hidden=16, seed=1), teacher_model=tiny_llama(hidden=32, layers=4, seed=2), args=args,
        peft_config=lora, train_dataset=lm_dataset(n=64), data_collator=PadCollator(),
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_a_lora_student_with_projections_resumes_exactly(config_factory, tmp_path):
    full = _lora_run(config_factory, tmp_path, "full")
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / PROJECTOR_NAME).is_file()
    assert not (checkpoint / "model.safetensors").exists()  # adapters only, as PEFT saves them
    resumed = _lora_run(config_factory, tmp_path, "resumed", resume=str(checkpoint))
    steps = [[h for h in run.state.log_history if "loss" in h and h["step"] > 2] for run in (full, resumed)]
    assert [h["step"] for h in steps[1]] == [3, 4]
    for a, b in zip(*steps, strict=True):
        for key in ("loss", "loss_ce", "loss_kd", "loss_hidden"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, msg=key)


def test_load_best_model_at_end_restores_the_best_student(config_factory, tmp_path):
    # "best" = the highest eval loss, i.e. the first checkpoint: the student must be taken back from the last one
    args = config_factory(
        max_steps=4, learning_rate=5e-2, hidden_weight=1.0, eval_strategy="steps", eval_steps=1,
        save_strategy="steps", save_steps=1, load_best_model_at_end=True, metric_for_best_model="loss",
        greater_is_better=True, per_device_eval_batch_size=8,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=tiny_llama(hidden=16, seed=1), teacher_model=tiny_llama(hidden=32, layers=4, seed=2), args=args,
        train_dataset=lm_dataset(n=64), eval_dataset=lm_dataset(n=8, seed=5), data_collator=PadCollator(),
    )  # fmt: skip
    trainer.train()
    best = Path(trainer.state.best_model_checkpoint)
    assert best.name == "checkpoint-1"
    saved, last = (load_file(str(folder / "model.safetensors")) for folder in (best, best.parent / "checkpoint-4"))
    for key, value in trainer.student.state_dict().items():
        torch.testing.assert_close(value, saved[key], msg=key)  # the student holds the best checkpoint's weights
    assert any(not torch.equal(saved[k], last[k]) for k in saved)


def test_the_module_copies_and_pickles(config_factory):
    import copy
    import pickle

    from hf_distill.losses import HiddenProjector

    module = DistillationStudent(tiny_llama(hidden=16, seed=1), HiddenProjector([1, 2], 16, 32))
    for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert clone.config.hidden_size == 16
        for key, value in module.state_dict().items():
            assert torch.equal(clone.state_dict()[key], value), key


def test_projections_start_from_the_seed_whatever_the_global_generator_drew(config_factory):
    # engines load models differently (DeepSpeed's loading draws other random numbers than DDP's): the projections
    # must not depend on it, or the processes and engines would train from different starting points
    def projections(draws, seed=0):
        student, teacher = tiny_llama(hidden=16), tiny_llama(hidden=32)
        torch.rand(draws)  # what loading drew after the models were built
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, args=config_factory(hidden_weight=1.0, seed=seed),
            train_dataset=lm_dataset(), data_collator=PadCollator(),
        )  # fmt: skip
        return {k: v.clone() for k, v in trainer.model.projections.state_dict().items()}

    first, second, other_seed = projections(0), projections(1000), projections(0, seed=1)
    assert first and first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other_seed[k]) for k in first)
