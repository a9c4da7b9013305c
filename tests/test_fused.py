"""The fused logit loss (hidden states x heads, in chunks) equals the loss on materialised logits."""

import pytest
import torch
import torch.nn.functional as F
from conftest import PadCollator, lm_dataset, tiny_llama
from transformers import CohereConfig, CohereForCausalLM, Gemma2Config, Gemma2ForCausalLM, LlamaForCausalLM

from hf_distill import DistillationTrainer
from hf_distill.losses import LogitTransform, OutputHead, fused_logit_terms, token_divergence

TRANSFORMS = [LogitTransform(), LogitTransform(scale=0.7, softcap=3.0), LogitTransform(divisor=2.0)]


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("transform", TRANSFORMS, ids=["plain", "scale+softcap", "divisor"])
@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
@pytest.mark.parametrize("weights", [None, (0.3, 1.7)], ids=["recomputed", "in-forward"])
def test_fused_terms_equal_naive_in_value_and_gradient(divergence, transform, chunk_size, weights):
    torch.manual_seed(0)
    n, v = 37, 50
    hidden = torch.randn(n, 8, requires_grad=True)
    weight, bias = torch.randn(v, 8, requires_grad=True), torch.randn(v, requires_grad=True)
    t_hidden, t_weight = torch.randn(n, 12), torch.randn(v + 6, 12)  # teacher vocabulary padded by 6 rows
    labels = torch.randint(0, v, (n,))
    labels[::5] = -100  # ignored positions
    student, teacher = OutputHead(weight, bias, transform), OutputHead(t_weight, None, LogitTransform(softcap=5.0))
    ce, kd = fused_logit_terms(
        hidden, student, t_hidden, teacher, labels, divergence, 2.0, 0.3, vocab=v, chunk_size=chunk_size,
        weights=weights,
    )  # fmt: skip
    (0.3 * ce + 1.7 * kd).backward()
    fused_grads = [x.grad.clone() for x in (hidden, weight, bias)]
    for x in (hidden, weight, bias):
        x.grad = None

    s_logits = transform(F.linear(hidden, weight, bias))  # naive: all logits at once
    t_logits = LogitTransform(softcap=5.0)(F.linear(t_hidden, t_weight))[:, :v]
    ce_ref = F.cross_entropy(s_logits, labels, reduction="sum", ignore_index=-100)
    kd_ref = token_divergence(s_logits, t_logits, divergence, 2.0, 0.3).sum() * 4.0
    (0.3 * ce_ref + 1.7 * kd_ref).backward()
    assert ce.item() == pytest.approx(ce_ref.item(), rel=1e-5)
    assert kd.item() == pytest.approx(kd_ref.item(), rel=1e-5)
    for got, x in zip(fused_grads, (hidden, weight, bias), strict=True):
        torch.testing.assert_close(got, x.grad, rtol=1e-5, atol=1e-5)


def test_fused_terms_without_ce_or_kd():
    torch.manual_seed(1)
    hidden, weight = torch.randn(5, 4, requires_grad=True), torch.randn(9, 4)
    head = OutputHead(weight, None, LogitTransform())
    ce, kd = fused_logit_terms(hidden, head, labels=torch.tensor([1, 2, -100, 3, 4]))
    assert kd.item() == 0.0
    assert ce.item() == pytest.approx(F.cross_entropy(hidden @ weight.T, torch.tensor([1, 2, -100, 3, 4]),
                                                      reduction="sum").item(), rel=1e-6)  # fmt: skip


def _step(config_factory, logit_loss, divergence, student, teacher, **extra):
    args = config_factory(
        max_steps=1, optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", max_grad_norm=0.0,
        per_device_train_batch_size=8, alpha_ce=0.5, gamma=1.0, temperature=2.0, divergence=divergence,
        logit_loss=logit_loss, logit_chunk_size=16, **extra,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=lm_dataset(n=8, min_len=3, max_len=20),
        data_collator=PadCollator(),
    )  # fmt: skip
    lengths = []
    hook = student.get_output_embeddings().register_forward_hook(lambda m, i, o: lengths.append(i[0].shape[1]))
    trainer.train()
    hook.remove()
    log = trainer.state.log_history[0]
    return trainer, lengths, {k: log[k] for k in ("loss", "loss_ce", "loss_kd")}, dict(student.state_dict())


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_trainer_step_fused_equals_materialised_logits(config_factory, divergence):
    fused = _step(config_factory, "fused", divergence, tiny_llama(hidden=16, seed=1), tiny_llama(32, 4, seed=2))
    plain = _step(config_factory, "logits", divergence, tiny_llama(hidden=16, seed=1), tiny_llama(32, 4, seed=2))
    assert fused[0].teacher_setup.fused_logits and not plain[0].teacher_setup.fused_logits
    assert fused[1] == [1] and plain[1][0] > 1  # the fused run never computed the logits of the whole batch
    for key, value in plain[2].items():
        assert fused[2][key] == pytest.approx(value, rel=1e-5), key
    for key, value in plain[3].items():
        torch.testing.assert_close(fused[3][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_fused_step_with_learned_projections_equals_materialised_logits(config_factory):
    # the student runs inside the student module (projections of widths 16 -> 32): the fused loss reads its head
    fused = _step(config_factory, "fused", "forward_kl", tiny_llama(hidden=16, seed=1), tiny_llama(32, 4, seed=2),
                  hidden_weight=1.0)  # fmt: skip
    plain = _step(config_factory, "logits", "forward_kl", tiny_llama(hidden=16, seed=1), tiny_llama(32, 4, seed=2),
                  hidden_weight=1.0)  # fmt: skip
    assert fused[0].projector is not None and fused[1] == [1]
    for key, value in plain[2].items():
        assert fused[2][key] == pytest.approx(value, rel=1e-5), key
    for key, value in plain[3].items():
        torch.testing.assert_close(fused[3][key], value, rtol=1e-5, atol=1e-6, msg=key)


def _gemma2(seed):
    torch.manual_seed(seed)
    config = Gemma2Config(
        vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, final_logit_softcapping=2.0, max_position_embeddings=64,
        attn_implementation="eager", initializer_range=0.2,
    )  # fmt: skip
    return Gemma2ForCausalLM(config)


def _cohere(seed):
    torch.manual_seed(seed)
    config = CohereConfig(
        vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, logit_scale=0.5, max_position_embeddings=64, attn_implementation="eager",
        tie_word_embeddings=False,
    )  # fmt: skip
    return CohereForCausalLM(config)


@pytest.mark.parametrize("make", [_gemma2, _cohere], ids=["gemma2-softcap", "cohere-logit-scale"])
def test_softcapping_and_logit_scale_models(config_factory, make):
    fused = _step(config_factory, "fused", "forward_kl", make(1), make(2))
    plain = _step(config_factory, "logits", "forward_kl", make(1), make(2))
    for key, value in plain[2].items():
        assert fused[2][key] == pytest.approx(value, rel=1e-5), key
    for key, value in plain[3].items():
        torch.testing.assert_close(fused[3][key], value, rtol=1e-5, atol=1e-6, msg=key)


class _OddHead(LlamaForCausalLM):
    """Changes its logits after the head in a way the fused loss does not know."""

    def forward(self, input_ids=None, attention_mask=None, labels=None, logits_to_keep=0, **kwargs):
        out = super().forward(input_ids, attention_mask, labels=labels, logits_to_keep=logits_to_keep, **kwargs)
        out.logits = out.logits * 3.0 + 1.0
        return out


def test_unknown_head_transform_and_impossible_fused_are_clear_errors(config_factory):
    odd = _OddHead(tiny_llama(hidden=16, seed=1).config)
    with pytest.raises(ValueError, match="logits are not its output head.*logit_loss='logits'"):
        _step(config_factory, "fused", "forward_kl", odd, tiny_llama(32, 4, seed=2), task="causal_lm")
    from conftest import tiny_bert_mlm

    with pytest.raises(ValueError, match="logit_loss='fused' works for causal LMs only"):
        DistillationTrainer(model=tiny_bert_mlm(seed=1), teacher_model=tiny_bert_mlm(seed=2),
                            args=config_factory(logit_loss="fused"))  # fmt: skip


@pytest.mark.parametrize("weights", [None, (1.0, 1.0)], ids=["recomputed", "in-forward"])
def test_fused_terms_under_bf16_autocast_recompute_as_in_forward(weights):
    torch.manual_seed(0)
    hidden, weight = torch.randn(20, 8, requires_grad=True), torch.randn(30, 8, requires_grad=True)
    t_hidden, t_weight, labels = torch.randn(20, 8), torch.randn(30, 8), torch.randint(0, 30, (20,))
    plain = LogitTransform()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ce, kd = fused_logit_terms(
            hidden, OutputHead(weight, None, plain), t_hidden, OutputHead(t_weight, None, plain), labels, chunk_size=7,
            weights=weights,
        )  # fmt: skip
    (ce + kd).backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s_logits, t_logits = F.linear(hidden, weight).float(), F.linear(t_hidden, t_weight).float()
        reference = F.cross_entropy(s_logits, labels, reduction="sum") + token_divergence(s_logits, t_logits).sum()
    reference.backward()
    assert (ce + kd).item() == pytest.approx(reference.item(), rel=1e-6)  # same bf16 logits in forward
    for got, expected in zip(grads, (hidden.grad, weight.grad), strict=True):  # ours chains in float32
        torch.testing.assert_close(got, expected, rtol=0.02, atol=0.05)


def test_auto_fuses_only_the_batches_whose_logits_are_large(config_factory, monkeypatch):
    small = _step(config_factory, "auto", "forward_kl", tiny_llama(hidden=16, seed=1), tiny_llama(32, 4, seed=2))
    # fusion is possible, but 8 x 20 x 96 logits are materialised
    assert small[0].teacher_setup.fused_logits and small[1][0] > 1
    # now every batch counts as large
    monkeypatch.setattr("hf_distill.training.computer.FUSED_AUTO_MIN_LOGITS", 8 * 3 * 96)
    large = _step(config_factory, "auto", "forward_kl", tiny_llama(hidden=16, seed=1), tiny_llama(32, 4, seed=2))
    assert large[1] == [1]
    for key, value in small[2].items():
        assert large[2][key] == pytest.approx(value, rel=1e-5), key
