"""`DistillationTrainer.compute_loss` on tiny random models against an independent computation of every term."""

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    PadCollator,
    cls_dataset,
    lm_dataset,
    tiny_bert_cls,
    tiny_bert_mlm,
    tiny_gpt2,
    tiny_llama,
    tiny_qwen2,
)
from transformers import PreTrainedTokenizerFast

from hf_distill import DistillationTrainer


def reference_loss(trainer, batch):
    """Each term recomputed from the raw model outputs with torch.nn.functional and explicit loops."""
    args, student, teacher = trainer.args, trainer.model, trainer.teacher
    labels = batch["labels"]
    mask = batch["attention_mask"]
    model_inputs = {"input_ids": batch["input_ids"], "attention_mask": mask}
    with torch.no_grad():
        s_out = student(**model_inputs, output_hidden_states=True, output_attentions=True)
        t_out = teacher(**model_inputs, output_hidden_states=True, output_attentions=True)
    s_logits, t_logits = s_out.logits, t_out.logits
    if trainer.task == "causal_lm":
        s_logits, t_logits, labels = s_logits[:, :-1], t_logits[:, :-1], labels[:, 1:]
    valid = labels != -100
    terms = {"loss_ce": F.cross_entropy(s_logits[valid], labels[valid])}

    vocab = trainer.vocab_size
    temp, beta = args.temperature, args.jsd_beta
    s_log = F.log_softmax(s_logits[valid][:, :vocab].double() / temp, -1)
    t_log = F.log_softmax(t_logits[valid][:, :vocab].double() / temp, -1)
    if args.divergence == "forward_kl":
        kd = F.kl_div(s_log, t_log, reduction="batchmean", log_target=True)
    elif args.divergence == "reverse_kl":
        kd = F.kl_div(t_log, s_log, reduction="batchmean", log_target=True)
    else:
        m = torch.log(beta * t_log.exp() + (1 - beta) * s_log.exp())
        kd = beta * F.kl_div(m, t_log, reduction="batchmean", log_target=True) + (1 - beta) * F.kl_div(
            m, s_log, reduction="batchmean", log_target=True
        )
    terms["loss_kd"] = kd * temp**2

    hidden = []
    for s, t in trainer.layer_pairs:
        proj = trainer.projector.proj[str(s)]
        with torch.no_grad():
            hs = proj(s_out.hidden_states[s])[mask.bool()]
        ht = t_out.hidden_states[t][mask.bool()]
        if args.hidden_loss == "mse":
            hidden.append(((hs - ht) ** 2).mean())
        else:
            hidden.append((1 - F.cosine_similarity(hs, ht, dim=-1)).mean())
    terms["loss_hidden"] = sum(hidden) / len(hidden)

    attn = []
    for s, t in trainer.attention_pairs:
        a_s, a_t = s_out.attentions[s - 1].double(), t_out.attentions[t - 1].double()
        if a_s.shape[1] != a_t.shape[1]:
            a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
        rows = []
        for b in range(a_s.shape[0]):
            keys = mask[b].bool()
            for q in range(a_s.shape[2]):
                if mask[b, q]:
                    x, y = a_s[b, :, q, keys], a_t[b, :, q, keys]
                    if args.attention_loss == "mse":
                        rows.append(((x - y) ** 2).mean(-1).mean())
                    else:
                        rows.append(torch.where(y > 0, y * (y / x).log(), 0.0).sum(-1).mean())
        attn.append(torch.stack(rows).mean())
    terms["loss_attn"] = sum(attn) / len(attn)
    total = (
        args.alpha_ce * terms["loss_ce"]
        + args.gamma * terms["loss_kd"]
        + args.hidden_weight * terms["loss_hidden"]
        + args.attention_weight * terms["loss_attn"]
    )
    return total, terms


def _check_against_reference(trainer, dataset, collator):
    batch = collator([dataset[i] for i in range(4)])
    trainer.model.train()
    got = trainer.compute_loss(trainer.model, dict(batch))
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    want, terms = reference_loss(trainer, batch)
    assert got.item() == pytest.approx(want.item(), rel=1e-4, abs=1e-6)
    for key, value in terms.items():
        assert logged[key] == pytest.approx(value.item(), rel=1e-4, abs=1e-6), key


WEIGHTS = dict(alpha_ce=0.7, gamma=1.3, hidden_weight=0.9, attention_weight=50.0)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("hidden_loss", ["mse", "cosine"])
@pytest.mark.parametrize("attention_loss", ["mse", "kl"])
def test_every_term_matches_reference(config_factory, divergence, hidden_loss, attention_loss):
    args = config_factory(
        **WEIGHTS,
        divergence=divergence,
        jsd_beta=0.3,
        temperature=2.0,
        hidden_loss=hidden_loss,
        attention_loss=attention_loss,
        logit_chunk_size=7,
        layer_map="1:2,2:4",
        hidden_include_embeddings=True,
    )
    student, teacher = tiny_llama(hidden=16, heads=2, seed=1), tiny_llama(hidden=32, layers=4, heads=4, seed=2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    assert trainer.layer_pairs == [(0, 0), (1, 2), (2, 4)]
    _check_against_reference(trainer, lm_dataset(), PadCollator())


FAMILIES = {
    "llama": (lambda: tiny_llama(hidden=16, seed=1), lambda: tiny_llama(hidden=32, layers=4, seed=2), "causal_lm"),
    "qwen2": (lambda: tiny_qwen2(hidden=16, seed=1), lambda: tiny_qwen2(hidden=32, layers=3, seed=2), "causal_lm"),
    "gpt2": (lambda: tiny_gpt2(hidden=16, seed=1), lambda: tiny_gpt2(hidden=32, layers=4, seed=2), "causal_lm"),
    "bert_mlm": (lambda: tiny_bert_mlm(16, seed=1), lambda: tiny_bert_mlm(32, 4, seed=2), "masked_lm"),
    "bert_cls": (lambda: tiny_bert_cls(16, seed=1), lambda: tiny_bert_cls(32, 4, seed=2), "sequence_classification"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_model_families(config_factory, family):
    make_student, make_teacher, task = FAMILIES[family]
    args = config_factory(**WEIGHTS, temperature=1.5, max_steps=3)
    dataset = cls_dataset() if task == "sequence_classification" else lm_dataset()
    collator = PadCollator(task)
    trainer = DistillationTrainer(
        model=make_student(), teacher_model=make_teacher(), args=args, train_dataset=dataset, data_collator=collator
    )
    assert trainer.task == task
    _check_against_reference(trainer, dataset, collator)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3
    assert all(
        torch.isfinite(torch.tensor([h[k] for k in ("loss_ce", "loss_kd", "loss_hidden", "loss_attn")])).all()
        for h in logs
    )


def _word_tokenizer(size):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    vocab = {f"w{i}": i for i in range(size)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="w0")))


def test_vocab_padding_rows_compare_on_real_vocab(config_factory):
    """Teacher 128 rows, student 96 rows, real vocabulary 90: logits compared on the first 90 only."""
    args = config_factory(gamma=1.0, alpha_ce=0.5)
    tokenizer = _word_tokenizer(90)
    student, teacher = tiny_llama(hidden=16, seed=1), tiny_llama(hidden=32, vocab=128, seed=2)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, processing_class=tokenizer, data_collator=PadCollator()
    )
    assert trainer.vocab_size == 90
    dataset = lm_dataset(vocab=90)
    batch = PadCollator()([dataset[i] for i in range(4)])
    trainer.model.train()
    got = trainer.compute_loss(trainer.model, dict(batch))
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    valid = labels != -100
    ce = F.cross_entropy(s[valid], labels[valid])
    kd = F.kl_div(
        F.log_softmax(s[valid][:, :90], -1),
        F.log_softmax(t[valid][:, :90], -1),
        reduction="batchmean",
        log_target=True,
    )
    assert got.item() == pytest.approx((0.5 * ce + kd).item(), rel=1e-4)
