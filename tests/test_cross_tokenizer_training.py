"""Cross-tokenizer distillation composed with the rest: the span terms in training, DDK on bits per byte with a teacher
on its own tokenization, and on-policy batches the teacher re-tokenizes. The teacher is the demo's pretrained Llama
(GPT-2-style byte-level BPE, no BOS); the student a small Llama on the shipped Llama-style tokenizer (with BOS)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from conftest import DEMO, make_config, tiny_llama
from datasets import Dataset
from test_cross_tokenizer_alignment import TEXTS, corpus_texts, gpt2_style, llama_style
from transformers import AutoModelForCausalLM

from hf_distill import CrossTokenizerCollator, DistillationTrainer
from hf_distill.ddk.update import ddk_update


@pytest.fixture(scope="module")
def tokenizers():
    return llama_style(), gpt2_style()


def _teacher():
    return AutoModelForCausalLM.from_pretrained(DEMO / "teacher")


def _student(tokenizer, seed=0):
    return tiny_llama(hidden=48, vocab=len(tokenizer), seed=seed)


def test_span_terms_train_a_student_on_another_tokenizer(tmp_path, tokenizers):
    student_tok, teacher_tok = tokenizers
    data = Dataset.from_list([{"text": t} for t in corpus_texts(per_domain=24, chars=160)])
    trainer = DistillationTrainer(
        model=_student(student_tok), teacher_model=_teacher(),
        args=make_config(tmp_path, alpha_ce=0.0, gamma=0.0, span_kd_weight=1.0, span_uld_weight=1.0, max_steps=30,
                         learning_rate=5e-3, per_device_train_batch_size=8, logging_steps=10),
        train_dataset=data, eval_dataset=data.select(range(0, len(data), 6)),
        data_collator=CrossTokenizerCollator(student_tok, teacher_tok, max_length=48), processing_class=student_tok,
    )  # fmt: skip
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss_span_kd"] < 0.8 * before["eval_loss_span_kd"], (before, after)
    assert after["eval_loss"] < before["eval_loss"]
    assert {"loss_span_kd", "loss_span_uld"} <= set(trainer.state.log_history[0])


def test_one_vocabulary_on_both_sides_is_a_warning(tmp_path, tokenizers, caplog):
    _, teacher_tok = tokenizers
    with caplog.at_level(logging.WARNING):
        DistillationTrainer(
            model=tiny_llama(vocab=len(teacher_tok)), teacher_model=tiny_llama(vocab=len(teacher_tok), seed=1),
            args=make_config(tmp_path, gamma=0.0, uld_weight=1.0), train_dataset=Dataset.from_list([{"text": "a b"}]),
            data_collator=CrossTokenizerCollator(teacher_tok, teacher_tok), processing_class=teacher_tok,
        )  # fmt: skip
    assert "uld_weight=1.0 with a teacher whose tokenizer has the student's vocabulary" in caplog.text


# ---- DDK ------------------------------------------------------------------------------------------------------------


def _domains(per_domain, offset):
    rows = []
    for domain in ("prose", "arithmetic"):
        texts = corpus_texts(per_domain=offset + per_domain, chars=160)
        start = {"prose": 0, "arithmetic": 2 * (offset + per_domain)}[domain]  # corpus_texts: prose, code, arithmetic
        rows += [{"text": t, "domain": domain} for t in texts[start + offset : start + offset + per_domain]]
    return Dataset.from_list(rows)


def test_ddk_with_a_teacher_on_its_own_tokenization_updates_on_bits_per_byte(tmp_path, tokenizers):
    student_tok, teacher_tok = tokenizers
    train, held_out = _domains(48, 0), _domains(16, 48)
    assert sorted(set(train["domain"])) == ["arithmetic", "prose"]
    trainer = DistillationTrainer(
        model=_student(student_tok), teacher_model=_teacher(), ddk_eval_dataset=held_out,
        args=make_config(tmp_path, alpha_ce=1.0, gamma=0.0, span_kd_weight=1.0, max_steps=9, ddk_update_steps=3,
                         domain_column="domain", per_device_train_batch_size=8, per_device_eval_batch_size=8,
                         learning_rate=3e-3),
        train_dataset=train, data_collator=CrossTokenizerCollator(student_tok, teacher_tok, max_length=48),
        processing_class=student_tok,
    )  # fmt: skip
    trainer.train()
    callback = trainer.ddk_callback
    assert len(callback.updates) == 2
    # the teacher's nats per byte on each domain: its summed cross-entropy over the aligned spans / their bytes
    evaluator = callback.parts.evaluator
    teacher = trainer.teacher.eval()
    for name in ["arithmetic", "prose"]:
        rows = held_out.filter(lambda r, name=name: r["domain"] == name)
        batch = CrossTokenizerCollator(student_tok, teacher_tok, max_length=48)([{"text": t} for t in rows["text"]])
        sums, counts = evaluator.row_cross_entropy(teacher, batch, teacher=True)
        names = trainer.domains.names
        assert callback.teacher_losses[names.index(name)] == pytest.approx(sums.sum().item() / counts.sum().item(),
                                                                           rel=1e-5)  # fmt: skip
    first = callback.updates[0]
    assert first["weights"] == pytest.approx(
        ddk_update(
            [0.5, 0.5],
            first["student_losses"],
            callback.teacher_losses,
            trainer.args.ddk_alpha,
            gap=trainer.args.ddk_gap,
            temperature=trainer.args.ddk_ratio_temperature,
        )  # fmt: skip
    )
    assert all(0 < t < s for s, t in zip(first["student_losses"], callback.teacher_losses, strict=True))
    logged = [h for h in trainer.state.log_history if "ddk/weight/prose" in h]
    assert len(logged) == 2 and all(h["ddk/bytes/prose"] > 0 and "ddk/tokens/prose" not in h for h in logged)
    assert logged[0]["ddk/bpb_T/prose"] == pytest.approx(logged[0]["ddk/l_T/prose"] / math.log(2))


# ---- on-policy ------------------------------------------------------------------------------------------------------


def _prompts():
    texts = [t for t in TEXTS[:90] if len(t) > 90]
    return Dataset.from_list([{"prompt": t[:50], "completion": t[50:90]} for t in texts])


def test_on_policy_rows_are_the_students_greedy_completions_and_the_teacher_reads_their_text(tmp_path, tokenizers):
    student_tok, teacher_tok = tokenizers
    data = _prompts()
    collator = CrossTokenizerCollator(student_tok, teacher_tok, max_length=64)
    trainer = DistillationTrainer(
        model=_student(student_tok, seed=3), teacher_model=_teacher(),
        args=make_config(tmp_path, alpha_ce=0.0, gamma=0.0, span_kd_weight=1.0, uld_weight=0.5, lmbda=1.0,
                         generation_temperature=0.0, max_new_tokens=10, max_steps=3,
                         per_device_train_batch_size=4),
        train_dataset=data, data_collator=collator, processing_class=student_tok,
    )  # fmt: skip
    batch = collator([data[i] for i in range(4)])
    generated = trainer._generated_batch(dict(batch), micro=0)
    student = trainer.student.eval()
    with torch.no_grad():
        greedy = student.generate(
            input_ids=batch["prompts"], attention_mask=batch["prompt_attention_mask"], max_new_tokens=10,
            do_sample=False, pad_token_id=student_tok.pad_token_id,
        )  # fmt: skip
    width = batch["prompts"].shape[1]
    for b in range(4):
        prompt = batch["prompts"][b][batch["prompt_attention_mask"][b].bool()].tolist()
        completion = greedy[b, width:].tolist()
        if student_tok.eos_token_id in completion:
            completion = completion[: completion.index(student_tok.eos_token_id) + 1]
        row = generated["input_ids"][b][generated["attention_mask"][b].bool()].tolist()
        assert row == prompt + completion
        labels = generated["labels"][b]
        assert labels[labels != -100].tolist() == completion
        text = student_tok.decode(row, skip_special_tokens=True)
        teacher_ids = teacher_tok(text, truncation=True, max_length=64)["input_ids"]
        t_row = generated["teacher_input_ids"][b][generated["teacher_attention_mask"][b].bool()].tolist()
        assert t_row == teacher_ids
        prompt_chars = len(student_tok.decode(prompt, skip_special_tokens=True))
        offsets = teacher_tok(text, return_offsets_mapping=True)["offset_mapping"]
        t_labels = generated["teacher_labels"][b][: len(t_row)]
        assert (t_labels != -100).tolist() == [start >= prompt_chars for start, _ in offsets[: len(t_row)]]
        assert generated["uld_student_mask"][b].sum() == generated["uld_teacher_mask"][b].sum() > 0
    assert "prompts" not in generated
    trainer.train()
    shares = [h["on_policy_share"] for h in trainer.state.log_history if "on_policy_share" in h]
    assert shares and all(s == 1.0 for s in shares)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)
