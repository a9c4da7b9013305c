"""On-policy distillation (GKD): prompt/completion batches, generated completions, the mask, TRL's reference loss."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import DEMO, make_config, tiny_llama
from datasets import Dataset
from transformers import AutoTokenizer

from hf_distill import DistillationTrainer, PromptCompletionCollator, logit_distillation_loss
from hf_distill.on_policy import STUDENT, OnPolicyBatches, completion_batch

VOCAB = 384  # the demo tokenizer's
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(DEMO / "student")


def _rows(n=24):
    return [{"prompt": f"{a} + {b} =", "completion": f" {a + b}; {a} * {b} = {a * b}"} for a in range(6)
            for b in range(n // 6)]  # fmt: skip


def _models(dropout=0.0):
    student = tiny_llama(hidden=32, vocab=VOCAB, seed=0)
    student.config.attention_dropout = dropout
    for layer in student.model.layers:
        layer.self_attn.attention_dropout = dropout
    return student, tiny_llama(hidden=64, layers=2, vocab=VOCAB, seed=1)


def _trainer(tmp_path, tokenizer, collator=None, models=None, rows=None, **kwargs):
    student, teacher = models if models is not None else _models()
    settings = dict(alpha_ce=0.0, gamma=1.0, max_new_tokens=6, learning_rate=1e-2) | kwargs
    return DistillationTrainer(
        model=student, teacher_model=teacher, args=make_config(tmp_path, **settings),
        train_dataset=Dataset.from_list(rows or _rows()),
        data_collator=collator or PromptCompletionCollator(tokenizer, max_length=40), processing_class=tokenizer,
    )  # fmt: skip


class _Recorder:
    """Records the batches `compute_loss` receives (after generation)."""

    def __init__(self, trainer):
        self.batches, original = [], trainer.compute_loss

        def compute_loss(model, inputs, *args, **kwargs):
            if model.training:
                self.batches.append({k: v.clone() for k, v in inputs.items() if torch.is_tensor(v)})
            return original(model, inputs, *args, **kwargs)

        trainer.compute_loss = compute_loss


# ---- the collator and the completion mask --------------------------------------------------------------------------


def test_collator_masks_the_prompt_and_pads_prompts_left(tokenizer):
    rows = [{"prompt": "1 + 2 =", "completion": " 3"}, {"prompt": "12 + 13 + 14 =", "completion": " 39; 12 * 2 = 24"}]
    batch = PromptCompletionCollator(tokenizer, max_length=64)(rows)
    for i, row in enumerate(rows):
        prompt = tokenizer(row["prompt"])["input_ids"]
        completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        n = len(prompt) + len(completion)
        assert batch["input_ids"][i, :n].tolist() == prompt + completion
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert batch["labels"][i].tolist() == [-100] * len(prompt) + completion + [-100] * (
            batch["input_ids"].shape[1] - n
        )
        width = batch["prompts"].shape[1]
        assert batch["prompts"][i, width - len(prompt) :].tolist() == prompt  # left padding
        assert batch["prompt_attention_mask"][i].tolist() == [0] * (width - len(prompt)) + [1] * len(prompt)


def test_collator_renders_conversations_with_the_chat_template(tokenizer):
    tok = AutoTokenizer.from_pretrained(DEMO / "student")
    tok.chat_template = CHAT_TEMPLATE
    messages = [{"role": "user", "content": "2 + 2 ="}, {"role": "assistant", "content": " 4"}]
    collator = PromptCompletionCollator(tok, max_length=64)
    as_messages = collator([{"messages": messages}])
    as_pair = collator([{"prompt": messages[:1], "completion": messages[1:]}])
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(messages, tokenize=False)
    expected = tok(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    for batch in (as_messages, as_pair):
        labels = batch["labels"][0]
        assert labels[labels != -100].tolist() == expected
        assert batch["prompts"][0].tolist() == tok(prompt, add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="chat template.*tokenizer.chat_template"):
        PromptCompletionCollator(tokenizer)([{"messages": messages}])


def test_completion_batch_masks_prompt_padding_and_what_follows_the_first_eos():
    eos, pad = 9, 0
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    sequences = torch.tensor([[pad, 5, 6, 7, eos, 8, eos], [4, 5, 6, 7, 8, 8, 8]])
    batch, lengths = completion_batch(sequences, prompt_mask, [eos], pad)
    # row 0: prompt (5, 6), completion (7, EOS); what follows the first EOS is padding; shifted left
    assert batch["input_ids"].tolist() == [[5, 6, 7, eos, pad, pad, pad], [4, 5, 6, 7, 8, 8, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0], [1] * 7]
    assert batch["labels"].tolist() == [[-100, -100, 7, eos, -100, -100, -100], [-100, -100, -100, 7, 8, 8, 8]]
    assert lengths.tolist() == [2, 4]


def test_the_decision_is_a_function_of_seed_step_and_micro_batch(tmp_path, tokenizer):
    args = make_config(tmp_path, lmbda=0.5, seed=3)
    batches = OnPolicyBatches(args, tokenizer)
    draws = [batches.source(step, micro) for step in range(1, 201) for micro in range(2)]
    assert draws == [OnPolicyBatches(args, tokenizer).source(s, m) for s in range(1, 201) for m in range(2)]
    share = draws.count(STUDENT) / len(draws)
    assert 0.4 < share < 0.6  # lmbda of the batches
    state = torch.get_rng_state()
    batches.source(1, 0)
    assert torch.equal(state, torch.get_rng_state())  # the draw leaves training's random state alone


# ---- training -------------------------------------------------------------------------------------------------------


class _NoPrompts(PromptCompletionCollator):
    """The same batches without the prompts: plain off-policy training on the completions."""

    def __call__(self, features):
        batch = super().__call__(features)
        del batch["prompts"], batch["prompt_attention_mask"]
        return batch


def test_lmbda_0_equals_off_policy_training_exactly(tmp_path, tokenizer):
    """With dropout on, any use of training's random state by the on-policy machinery would change the run."""
    params = []
    for i, (collator, lmbda) in enumerate(
        [(_NoPrompts(tokenizer, max_length=40), 0.0), (None, 0.0), (None, 1e-12)]  # never drawn, but drawn for
    ):
        trainer = _trainer(tmp_path / str(i), tokenizer, collator, models=_models(dropout=0.3), lmbda=lmbda)
        trainer.train()
        params.append([p.detach().clone() for p in trainer.student.parameters()])
        logs = [h for h in trainer.state.log_history if "loss" in h]
        assert ("on_policy_share" in logs[0]) == (lmbda > 0) and "generated_length" not in logs[0]
    for other in params[1:]:
        assert all(torch.equal(a, b) for a, b in zip(params[0], other, strict=True))
    assert not torch.equal(params[0][0], _models()[0].model.embed_tokens.weight)  # it trained


def _greedy(model, prompt_ids, max_new_tokens, eos):
    """One unpadded prompt, greedy: the reference completion (up to and including the first EOS)."""
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=eos, eos_token_id=eos)[0, len(prompt_ids):].tolist()  # fmt: skip
    return out[: out.index(eos) + 1] if eos in out else out


@pytest.mark.parametrize("who", ["student", "teacher"])
def test_generated_batches_train_on_the_completion_of_the_generating_model_only(tmp_path, tokenizer, who):
    """lmbda=1 (student) and seq_kd (teacher), greedy: every trained batch is prompt + the model's own greedy
    completion (each prompt generated alone, unpadded, as the reference); labels cover the completion only."""
    settings = dict(lmbda=1.0) if who == "student" else dict(lmbda=0.0, seq_kd=True)
    student, teacher = _models()
    generator = {"student": student, "teacher": teacher}[who]
    trainer = _trainer(tmp_path, tokenizer, models=(student, teacher), generation_temperature=0.0, max_steps=1,
                       learning_rate=1e-9, per_device_train_batch_size=6, **settings)  # fmt: skip
    recorder = _Recorder(trainer)
    eos = tokenizer.eos_token_id
    trainer.train()
    (batch,) = recorder.batches
    data = trainer.get_train_dataloader().dataset
    assert batch["input_ids"].shape[0] == 6
    for i in range(6):
        ids, mask, labels = batch["input_ids"][i].tolist(), batch["attention_mask"][i], batch["labels"][i]
        n = int(mask.sum())
        assert mask.tolist() == [1] * n + [0] * (len(ids) - n)  # right padding, prompt at position 0
        prompt = next(p for p in (tokenizer(r["prompt"])["input_ids"] for r in data) if ids[: len(p)] == p)
        completion = _greedy(generator, prompt, 6, eos)
        assert ids[:n] == prompt + completion
        expected = [-100] * len(prompt) + completion + [-100] * (len(ids) - n)
        assert labels.tolist() == expected  # prompt and padding masked
    log = next(h for h in trainer.state.log_history if "loss" in h)
    assert log["on_policy_share"] == (1.0 if who == "student" else 0.0)
    assert log.get("seq_kd_share", 0.0) == (1.0 if who == "teacher" else 0.0)
    lengths = [int((batch["labels"][i] != -100).sum()) for i in range(6)]
    assert log["generated_length"] == pytest.approx(sum(lengths) / 6)


def test_each_micro_batch_of_an_accumulated_step_draws_its_own_source(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, lmbda=0.5, max_steps=6, gradient_accumulation_steps=2,
                       per_device_train_batch_size=2)  # fmt: skip
    recorder = _Recorder(trainer)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    draws = [[trainer.on_policy.source(step, micro) == STUDENT for micro in (0, 1)] for step in range(1, 7)]
    assert [h["on_policy_share"] for h in logs] == [sum(d) / 2 for d in draws]
    assert any(d[0] != d[1] for d in draws)  # the two micro-batches of a step can differ
    generated = [b for b, drawn in zip(recorder.batches, sum(draws, []), strict=True) if drawn]
    assert all(int((b["labels"] != -100).sum()) <= 2 * 6 for b in generated)  # generated: <= max_new_tokens each


def test_a_resumed_run_takes_the_same_decisions_and_samples_as_the_uninterrupted_one(tmp_path, tokenizer):
    def run(folder, resume=None):
        trainer = _trainer(folder, tokenizer, lmbda=0.5, max_steps=6, save_strategy="steps", save_steps=2)
        trainer.train(resume_from_checkpoint=resume)
        return {h["step"]: h for h in trainer.state.log_history if "loss" in h}

    whole = run(tmp_path / "whole")
    resumed = run(tmp_path / "resumed", str(tmp_path / "whole" / "out" / "checkpoint-2"))
    for step in (3, 4, 5, 6):  # trained after the resume
        for key in ("on_policy_share", "loss_kd", "grad_norm"):
            assert resumed[step][key] == pytest.approx(whole[step][key], rel=1e-6), (step, key)
        assert resumed[step].get("generated_length") == whole[step].get("generated_length")
    assert 0 < sum(h["on_policy_share"] for h in whole.values()) < 6


def test_generation_settings_reach_generate(tmp_path, tokenizer):
    args = make_config(tmp_path, lmbda=1.0, max_new_tokens=7, generation_temperature=0.7, generation_top_k=5,
                       generation_top_p=0.9, gradient_checkpointing=True)  # fmt: skip
    config = OnPolicyBatches(args, tokenizer).generation_config(tiny_llama(vocab=VOCAB))
    assert (config.max_new_tokens, config.do_sample, config.temperature, config.top_k, config.top_p) == (
        7, True, 0.7, 5, 0.9,
    )  # fmt: skip
    assert config.use_cache is False and config.pad_token_id == tokenizer.pad_token_id


def test_lora_student_generates_and_trains_its_adapters_only(tmp_path, tokenizer):
    from peft import LoraConfig

    student, teacher = _models()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher,
        args=make_config(tmp_path, alpha_ce=0.0, lmbda=1.0, max_new_tokens=5, max_steps=2, learning_rate=1e-2),
        train_dataset=Dataset.from_list(_rows()), data_collator=PromptCompletionCollator(tokenizer, max_length=40),
        processing_class=tokenizer, peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )  # fmt: skip
    recorder = _Recorder(trainer)
    trainer.train()
    assert all((b["labels"][:, :] != -100).sum() > 0 for b in recorder.batches)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["on_policy_share"] for h in logs] == [1.0, 1.0] and all(h["generated_length"] > 0 for h in logs)
    state = trainer.student.state_dict()
    lora = [k for k in state if "lora_B" in k]
    assert lora and any(state[k].abs().sum() > 0 for k in lora)  # B starts at 0: the adapters trained
    base = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in state.items() if "lora" not in k
    }
    assert all(torch.equal(before[k], base[k]) for k in before)  # the base model did not move


def test_ddk_and_on_policy_run_together(tmp_path, tokenizer):
    pairs = [(a, b) for a in range(8) for b in range(4)]
    domains = {
        "add": Dataset.from_list([{"prompt": f"{a} + {b} =", "completion": f" {a + b}"} for a, b in pairs]),
        "mul": Dataset.from_list([{"prompt": f"{a} * {b} =", "completion": f" {a * b}"} for a, b in pairs]),
    }
    student, teacher = _models()
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher,
        args=make_config(tmp_path, alpha_ce=0.0, lmbda=0.5, max_new_tokens=4, max_steps=4, ddk_update_steps=2,
                         ddk_eval_batches=2),
        train_dataset=domains, ddk_eval_dataset=domains,
        data_collator=PromptCompletionCollator(tokenizer, max_length=32), processing_class=tokenizer,
    )  # fmt: skip
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    expected = [float(trainer.on_policy.source(step, 0) == STUDENT) for step in range(1, 5)]
    assert [h["on_policy_share"] for h in logs] == expected and 0 < sum(expected) < 4
    assert [u["step"] for u in trainer.ddk_callback.updates] == [2]  # none at the last step, 4
    assert len(trainer.domain_sampler.history) == 2  # the initial weights, then step 2's
    assert all(f"domain_share/{d}" in logs[0] for d in domains)


def test_settings_that_cannot_generate_are_refused_before_training(tmp_path, tokenizer):
    with pytest.raises(ValueError, match=r"lmbda=0.5, seq_kd=False .* no logit term .*set gamma > 0"):
        make_config(tmp_path, lmbda=0.5, gamma=0.0)
    with pytest.raises(ValueError, match=r"lmbda=0.0, seq_kd=True generates completions, which teacher_cache="):
        make_config(tmp_path, seq_kd=True, teacher_cache=str(tmp_path))
    with pytest.raises(ValueError, match=r"DistillationConfig.lmbda=1.5 .*<= 1"):
        make_config(tmp_path, lmbda=1.5)
    with pytest.raises(ValueError, match=r"generation_top_p=0"):
        make_config(tmp_path, lmbda=1.0, generation_top_p=0.0)
    from conftest import tiny_bert_mlm

    with pytest.raises(ValueError, match=r"lmbda=1.0 / seq_kd=False generate completions, which needs a causal LM"):
        DistillationTrainer(model=tiny_bert_mlm(), teacher_model=tiny_bert_mlm(seed=1),
                            args=make_config(tmp_path, lmbda=1.0), processing_class=tokenizer)  # fmt: skip
    no_pad = AutoTokenizer.from_pretrained(DEMO / "student")
    no_pad.pad_token = None
    with pytest.raises(ValueError, match=r"no pad token: set one, e.g. tokenizer.pad_token = tokenizer.eos_token"):
        PromptCompletionCollator(no_pad)
    trainer = _trainer(tmp_path, tokenizer, collator=_NoPrompts(tokenizer), lmbda=1.0)
    with pytest.raises(ValueError, match=r"need the prompts in every training batch .*PromptCompletionCollator"):
        trainer.train()
    with pytest.raises(ValueError, match=r"max_prompt_length=200 >= max_length=96 leaves no room for a completion"):
        PromptCompletionCollator(tokenizer, max_length=96, max_prompt_length=200)


def test_prompts_are_checked_on_the_first_batch_of_every_training_start(tmp_path, tokenizer):
    """With a small lmbda the first generated batch may come many steps in: the prompts are checked on the first
    batch of each `train()` instead, before any optimizer step (the seed draws no generation in the first steps)."""
    trainer = _trainer(tmp_path, tokenizer, collator=_NoPrompts(tokenizer), lmbda=1e-9, max_steps=4)
    assert all(trainer.on_policy.source(step, 0) is None for step in range(1, 5))  # nothing would be generated
    for _ in range(2):  # every training start
        with pytest.raises(ValueError, match=r"need the prompts in every training batch"):
            trainer.train()
        assert trainer.state.global_step == 0


# ---- TRL's reference loss -------------------------------------------------------------------------------------------

trl_missing = importlib.util.find_spec("trl") is None


@pytest.mark.skipif(trl_missing, reason="TRL is not installed: pip install -e '.[bench]' (CI installs it)")
@pytest.mark.parametrize(
    ("divergence", "beta"), [("forward_kl", 0.0), ("reverse_kl", 1.0), ("jsd", 0.5)], ids=["fkl", "rkl", "jsd"]
)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_on_policy_loss_equals_trl_generalized_jsd(tmp_path, tokenizer, divergence, beta, temperature):
    """On a batch the student generated, the trainer's `loss_kd` / T^2 equals TRL's `generalized_jsd_loss` with
    `beta` (TRL: beta=0 forward KL, 1 reverse KL; hf_distill's jsd_beta is TRL's beta; TRL applies no T^2)."""
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gkd import GKDTrainer

    trainer = _trainer(tmp_path, tokenizer, lmbda=1.0, divergence=divergence, jsd_beta=beta if beta else 0.5,
                       temperature=temperature, max_steps=1, per_device_train_batch_size=6)  # fmt: skip
    recorder = _Recorder(trainer)
    trainer.train()
    (batch,) = recorder.batches
    loss_kd = next(h for h in trainer.state.log_history if "loss" in h)["loss_kd"]
    with torch.no_grad():
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        # the logits the step saw: the student before its update (rebuilt from the same seed), the teacher
        student, teacher = _models()
        s, t = student(**inputs).logits[:, :-1], teacher(**inputs).logits[:, :-1]
    reference = GKDTrainer.generalized_jsd_loss(s, t, batch["labels"][:, 1:], beta=beta, temperature=temperature)
    assert loss_kd / temperature**2 == pytest.approx(reference.item(), rel=1e-5)
    # gradients with respect to the student's logits, too
    s = s.clone().requires_grad_(True)
    GKDTrainer.generalized_jsd_loss(s, t, batch["labels"][:, 1:], beta=beta, temperature=temperature).backward()
    ours = s.detach().clone().requires_grad_(True)
    mask = batch["labels"][:, 1:] != -100
    value = logit_distillation_loss(ours, t, mask, divergence, temperature, beta if beta else 0.5)
    (value / temperature**2 / mask.sum()).backward()
    torch.testing.assert_close(ours.grad, s.grad, rtol=1e-5, atol=1e-8)
