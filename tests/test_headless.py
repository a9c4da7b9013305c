"""Headless encoders (embedding models): `AutoModel` students and teachers, hidden-state terms only, data without
labels, transformers' own `DataCollatorWithPadding`; and a masked-LM student whose head no term reads."""

from __future__ import annotations

import pytest
import torch
from conftest import _bert_config, make_config
from dsg_toy import notes, student_tokenizer
from transformers import BertForMaskedLM, BertModel, DataCollatorWithPadding

from hf_distill import DistillationTrainer


def _encoder(hidden, layers, heads, vocab, seed, cls=BertModel):
    torch.manual_seed(seed)
    return cls(_bert_config(hidden, layers, heads, vocab))


@pytest.fixture(scope="module")
def tokenizer():
    return student_tokenizer()


def _sentences(tokenizer, n, seed):
    """Tokenized sentences, no `labels` column (as an embedding data set comes)."""
    texts = notes(n, seed=seed)
    return texts.map(lambda row: tokenizer(row["text"]), remove_columns=texts.column_names)


def _trainer(tmp_path, tokenizer, student, teacher, **kwargs):
    settings = dict(alpha_ce=0.0, gamma=0.0, hidden_weight=1.0, layer_map="last", max_steps=40, learning_rate=3e-3,
                    per_device_train_batch_size=8, lr_scheduler_type="constant")  # fmt: skip
    settings.update(kwargs)
    return DistillationTrainer(
        model=student, teacher_model=teacher, args=make_config(tmp_path, **settings),
        train_dataset=_sentences(tokenizer, 64, seed=1), data_collator=DataCollatorWithPadding(tokenizer),
    )  # fmt: skip


def _reference_hidden(trainer, batch):
    """The hidden term by a loop over tokens: mean over the width of (W h_S + b - h_T)^2, over attended tokens."""
    (s, t), = trainer.layer_pairs  # fmt: skip
    proj = trainer.projector.proj[str(s)]
    student = trainer.student(**batch, output_hidden_states=True).hidden_states[s]
    teacher = trainer.teacher(**batch, output_hidden_states=True).hidden_states[t]
    tokens = batch["attention_mask"].nonzero().tolist()
    return sum(((proj(student[b, i]) - teacher[b, i]) ** 2).mean().item() for b, i in tokens) / len(tokens)


def test_a_headless_student_learns_a_headless_teachers_states_without_labels(tmp_path, tokenizer):
    vocab = len(tokenizer)
    teacher = _encoder(48, 4, 4, vocab, seed=2)
    trainer = _trainer(tmp_path, tokenizer, _encoder(32, 2, 2, vocab, seed=1), teacher)
    assert trainer.task == "feature_extraction" and "labels" not in trainer.train_dataset.column_names
    held_out = DataCollatorWithPadding(tokenizer)([dict(r) for r in _sentences(tokenizer, 16, seed=9)])

    trainer.model.eval()
    trainer.compute_loss(trainer.model, dict(held_out))
    logged = trainer._metrics["eval"].pop("loss_hidden")[-1].item()
    with torch.no_grad():
        before = _reference_hidden(trainer, held_out)
    assert logged == pytest.approx(before, rel=1e-5)  # the logged term is the independent MSE

    trainer.train()
    losses = [h["loss_hidden"] for h in trainer.state.log_history if "loss_hidden" in h]
    assert len(losses) == 40 and all(h["loss"] == pytest.approx(h["loss_hidden"]) for h in trainer.state.log_history
                                     if "loss_hidden" in h)  # fmt: skip
    with torch.no_grad():
        after = _reference_hidden(trainer, held_out)
    assert after < 0.5 * before, (before, after)  # the last layer moved toward the teacher's
    metrics = trainer.evaluate(_sentences(tokenizer, 16, seed=9))
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_loss_hidden"], rel=1e-6)

    out = tmp_path / "encoder"
    trainer.save_model(str(out))
    reloaded = BertModel.from_pretrained(str(out)).eval()
    trainer.student.eval()
    torch.testing.assert_close(reloaded(**held_out).last_hidden_state, trainer.student(**held_out).last_hidden_state)


def test_a_masked_lm_student_with_hidden_terms_only_never_runs_its_vocab_head(tmp_path, tokenizer):
    vocab = len(tokenizer)
    student = _encoder(32, 2, 2, vocab, seed=1, cls=BertForMaskedLM)
    calls = []
    student.cls.register_forward_hook(lambda module, args, output: calls.append(output.shape))
    student(input_ids=torch.tensor([[2, 5, 3]]))
    assert calls == [(1, 3, vocab)]  # the hook sees the head when it runs
    calls.clear()
    trainer = _trainer(tmp_path, tokenizer, student, _encoder(48, 4, 4, vocab, seed=2), max_steps=3)
    trainer.train()
    trainer.evaluate(_sentences(tokenizer, 8, seed=9))
    assert calls == []
    assert [h["step"] for h in trainer.state.log_history if "loss_hidden" in h] == [1, 2, 3]
    out = tmp_path / "mlm"
    trainer.save_model(str(out))
    assert set(BertForMaskedLM.from_pretrained(str(out)).state_dict()) == set(student.state_dict())


def test_logit_terms_on_a_headless_student_are_a_clear_error(tmp_path, tokenizer):
    vocab = len(tokenizer)
    with pytest.raises(ValueError, match=r"BertModel is headless .* no logits for alpha_ce=1.0, gamma=1.0; set them"):
        _trainer(tmp_path, tokenizer, _encoder(32, 2, 2, vocab, 1), _encoder(48, 4, 4, vocab, 2), alpha_ce=1.0,
                 gamma=1.0)  # fmt: skip
    domains = _sentences(tokenizer, 8, seed=1).add_column("domain", ["a", "b"] * 4)
    with pytest.raises(ValueError, match=r"ddk_update_steps=2: DDK compares .* headless BertModel has no output head"):
        DistillationTrainer(
            model=_encoder(32, 2, 2, vocab, 1), teacher_model=_encoder(48, 4, 4, vocab, 2),
            args=make_config(tmp_path, alpha_ce=0.0, gamma=0.0, hidden_weight=1.0, ddk_update_steps=2),
            train_dataset=domains, ddk_eval_dataset=domains, data_collator=DataCollatorWithPadding(tokenizer),
        )  # fmt: skip
