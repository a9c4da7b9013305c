"""The one-pass chunk kernel: closed forms against autograd, compiled against eager, the joint CE + KD loss against
separate references, and the trainer with either kernel."""

import gc

import pytest
import torch
import torch.nn.functional as F
from conftest import PadCollator, lm_dataset, tiny_llama

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.losses import ChunkSpec, logit_chunk, logit_terms, token_divergence
from hf_distill.losses import chunk as chunk_module

DIVERGENCES = ["forward_kl", "reverse_kl", "jsd"]


def _inputs(seed=0, n=23, width=41, teacher_width=44, dtype=torch.float32):
    torch.manual_seed(seed)
    x = (torch.randn(n, width) * 3).to(dtype)
    y = (torch.randn(n, teacher_width) * 3).to(dtype)
    labels = torch.randint(0, width, (n,))
    labels[::4] = -100  # ignored labels
    return x, y, labels


def _reference(x, y, labels, a, b, divergence, temperature, beta, vocab):
    """CE and T^2 * D by the textbook formulas in float64, gradient by autograd."""
    x = x.double().requires_grad_()
    ce = F.cross_entropy(x, labels, reduction="sum", ignore_index=-100) if labels is not None else x.new_zeros(())
    kd = x.new_zeros(())
    if y is not None:
        s = F.log_softmax(x[:, :vocab] / temperature, -1)
        t = F.log_softmax(y[:, :vocab].double() / temperature, -1)
        if divergence == "forward_kl":
            rows = (t.exp() * (t - s)).sum(-1)
        elif divergence == "reverse_kl":
            rows = (s.exp() * (s - t)).sum(-1)
        else:
            m = torch.log(beta * t.exp() + (1 - beta) * s.exp())
            rows = beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)
        kd = rows.sum() * temperature**2
    (grad,) = torch.autograd.grad(a * ce + b * kd, x)
    return ce.item(), kd.item(), grad


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("terms", ["ce+kd", "kd", "ce"])
@pytest.mark.parametrize("vocab", [41, 37], ids=["same-vocab", "padded-vocab"])
def test_eager_kernel_equals_textbook_formulas_and_autograd(divergence, temperature, terms, vocab):
    x, y, labels = _inputs()
    y = y if "kd" in terms else None
    labels = labels if "ce" in terms else None
    a, b = torch.tensor(0.3), torch.tensor(1.7)
    ce, kd, grad = logit_chunk(x, y, labels, a, b, divergence, temperature, 0.3, vocab)
    ce_ref, kd_ref, grad_ref = _reference(x, y, labels, 0.3, 1.7, divergence, temperature, 0.3, vocab)
    assert ce.item() == pytest.approx(ce_ref, rel=1e-5, abs=1e-6)
    assert kd.item() == pytest.approx(kd_ref, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-5, atol=1e-6)
    if labels is not None:  # an ignored label takes no part in CE: its row's gradient is KD's alone
        ignored = labels.eq(-100)
        _, _, kd_only = logit_chunk(x[ignored], None if y is None else y[ignored], None, a, b, divergence,
                                    temperature, 0.3, vocab)  # fmt: skip
        expected = kd_only if kd_only is not None else torch.zeros_like(grad[ignored])
        torch.testing.assert_close(grad[ignored], expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize(
    "terms, vocab, temperature",
    [("ce+kd", 41, 1.0), ("ce+kd", 37, 2.0), ("kd", 41, 1.0)],
    ids=["ce+kd-shared-log-softmax", "ce+kd-padded-vocab-T2", "kd"],
)
def test_compiled_kernel_equals_eager(divergence, terms, vocab, temperature):
    x, y, labels = _inputs(seed=1)
    labels = labels if "ce" in terms else None
    spec = ChunkSpec(divergence, temperature, 0.3, vocab, kernel="compiled")
    eager = ChunkSpec(divergence, temperature, 0.3, vocab, kernel="eager")
    coefs = torch.tensor([0.3, 1.7])
    for rows in (slice(0, 23), slice(3, 10), slice(5, 6)):  # other shapes: dynamic, one row
        got = spec(x[rows], y[rows], None if labels is None else labels[rows], coefs, True)
        expected = eager(x[rows], y[rows], None if labels is None else labels[rows], coefs, True)
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    values, expected = spec(x, y, labels, coefs, False), eager(x, y, labels, coefs, False)  # values only
    assert values[2] is None and values[1].item() == pytest.approx(expected[1].item(), rel=1e-5)
    assert (divergence, temperature, 0.3, vocab) not in chunk_module._COMPILE_FAILED  # it really compiled


def test_compiled_kernel_in_bfloat16_equals_eager():
    x, y, labels = _inputs(seed=2, dtype=torch.bfloat16)
    coefs = torch.tensor([1.0, 1.0])
    got = ChunkSpec(kernel="compiled")(x, y[:, :41], labels, coefs, True)
    expected = ChunkSpec(kernel="eager")(x, y[:, :41], labels, coefs, True)
    for g, e in zip(got, expected, strict=True):  # both upcast the chunk to float32 first
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_compiled_kernels_of_several_settings_in_one_process_each_equal_eager():
    """As in a test suite or a notebook: settings compiled one after the other (seen with torch 2.13: a CE gradient
    written by `scatter_add_` came out wrong at the label positions for the second setting, in training only)."""
    coefs = torch.tensor([0.0057, 0.0114])
    for dtype, temperature, width, rows in [(torch.bfloat16, 1.0, 41, 23), (torch.float32, 2.0, 384, 88)]:
        x, y, labels = _inputs(seed=5, n=rows, width=width, teacher_width=width, dtype=dtype)
        got = ChunkSpec(temperature=temperature, vocab=width, kernel="compiled")(x, y, labels, coefs, True)
        expected = ChunkSpec(temperature=temperature, vocab=width)(x, y, labels, coefs, True)
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
        assert ("forward_kl", temperature, 0.5, width) not in chunk_module._COMPILE_FAILED


def test_a_kernel_that_cannot_compile_falls_back_to_eager_with_a_warning(monkeypatch, caplog):
    def broken(setting):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(chunk_module, "_compiled", broken)
    monkeypatch.setattr(chunk_module, "_COMPILE_FAILED", {})
    x, y, labels = _inputs(seed=3)
    coefs = torch.tensor([1.0, 1.0])
    with caplog.at_level("WARNING"):
        got = ChunkSpec(vocab=41, kernel="compiled")(x, y, labels, coefs, True)
    expected = ChunkSpec(vocab=41)(x, y, labels, coefs, True)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
    assert "logit_kernel='compiled' could not compile" in caplog.text and "no C++ compiler" in caplog.text
    assert list(chunk_module._COMPILE_FAILED) == [("forward_kl", 1.0, 0.5, 41)]  # this setting is eager from now on


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("kernel", ["eager", "compiled"])
def test_joint_logit_terms_equal_separate_references(divergence, kernel):
    torch.manual_seed(4)
    logits = torch.randn(3, 9, 30, requires_grad=True)
    teacher = torch.randn(3, 9, 34)
    labels = torch.randint(0, 30, (3, 9))
    labels[0, 5:] = -100  # padding
    labels[2, :2] = -100
    ce, kd = logit_terms(logits, teacher, labels, weights=(0.4, 1.5), divergence=divergence, temperature=2.0,
                         jsd_beta=0.3, vocab=27, chunk_size=4, kernel=kernel)  # fmt: skip
    loss = (0.4 * ce + 1.5 * kd) / 7.0  # a mean over tokens: a common factor
    loss.backward()
    mask = labels.ne(-100)
    reference_logits = logits.detach().clone().requires_grad_()
    ce_ref = F.cross_entropy(reference_logits[mask], labels[mask], reduction="sum")
    kd_ref = token_divergence(reference_logits[mask][:, :27], teacher[mask][:, :27], divergence, 2.0, 0.3).sum() * 4
    ((0.4 * ce_ref + 1.5 * kd_ref) / 7.0).backward()
    assert ce.item() == pytest.approx(ce_ref.item(), rel=1e-5)
    assert kd.item() == pytest.approx(kd_ref.item(), rel=1e-5)
    torch.testing.assert_close(logits.grad, reference_logits.grad, rtol=1e-5, atol=1e-6)
    assert logits.grad[~mask].abs().max() == 0  # positions that do not count get exactly no gradient


def test_joint_logit_terms_refuse_a_combination_they_did_not_compute_the_gradient_for():
    logits, teacher = torch.randn(6, 10, requires_grad=True), torch.randn(6, 10)
    ce, kd = logit_terms(logits, teacher, torch.arange(6), weights=(1.0, 1.0))
    with pytest.raises(RuntimeError, match="weights"):
        (ce + 2.0 * kd).backward()


def test_a_term_that_is_not_computed_does_not_count_in_the_weights():
    """Default weights (1, 1) without labels: CE is a constant 0, so a loss of KD alone is a valid combination."""
    logits, teacher = torch.randn(6, 10, requires_grad=True), torch.randn(6, 10)
    ce, kd = logit_terms(logits, teacher)
    kd.backward()
    reference = logits.detach().clone().requires_grad_()
    token_divergence(reference, teacher).sum().backward()
    assert ce.item() == 0.0
    torch.testing.assert_close(logits.grad, reference.grad, rtol=1e-5, atol=1e-7)


def test_cpu_chunks_are_cache_sized_and_fused_blocks_are_not():
    spec = ChunkSpec(chunk_size=256)

    def sizes(spans, rows):
        return [len(range(rows)[s]) for s in spans]

    assert sizes(spec.spans(100, 32000, torch.device("cpu")), 100) == [16] * 6 + [4]  # 2 MiB of float32 each
    assert sizes(spec.spans(300, 32000, torch.device("meta")), 300) == [256, 44]  # other devices: chunk_size
    assert sizes(spec.spans(5, 10, torch.device("cpu")), 5) == [5]
    assert sizes(spec.blocks(300), 300) == [256, 44]


def _train(config_factory, kernel, **extra):
    student, teacher = tiny_llama(hidden=32, layers=2, seed=1), tiny_llama(hidden=48, layers=2, seed=2)
    args = config_factory(
        max_steps=2, optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", max_grad_norm=0.0,
        per_device_train_batch_size=4, alpha_ce=0.5, gamma=1.0, temperature=2.0, logit_kernel=kernel,
        logit_chunk_size=8, **extra,
    )  # fmt: skip
    data = lm_dataset(n=8, min_len=3, max_len=20)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=data, data_collator=PadCollator()
    )
    trainer.train()
    return trainer.state.log_history[0], student.state_dict()


@pytest.mark.parametrize("logit_loss", ["logits", "fused"])
def test_trainer_with_the_compiled_kernel_equals_eager(config_factory, logit_loss):
    log_eager, weights_eager = _train(config_factory, "eager", logit_loss=logit_loss, divergence="jsd")
    log_compiled, weights_compiled = _train(config_factory, "compiled", logit_loss=logit_loss, divergence="jsd")
    for key in ("loss", "loss_ce", "loss_kd"):
        assert log_compiled[key] == pytest.approx(log_eager[key], rel=1e-5)
    for name, value in weights_eager.items():
        torch.testing.assert_close(weights_compiled[name], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("logit_loss", ["logits", "fused"])
def test_a_training_step_leaves_no_reference_cycle_holding_the_logits(config_factory, logit_loss):
    """The step's outputs must be freed when the step ends, not when the garbage collector next runs (a cycle kept
    both models' [tokens, vocab] logits of every step alive: 2x the step time and memory in benchmark (b))."""
    gc.collect()
    gc.disable()
    try:
        gc.set_debug(gc.DEBUG_SAVEALL)
        _train(config_factory, "eager", logit_loss=logit_loss)
        gc.collect()
        cyclic = [o for o in gc.garbage if isinstance(o, torch.Tensor) and o.dim() == 3 and o.shape[-1] >= 96]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert cyclic == [], [tuple(t.shape) for t in cyclic]


def test_logit_kernel_is_checked(tmp_path):
    with pytest.raises(ValueError, match="logit_kernel"):
        DistillationConfig(output_dir=str(tmp_path), logit_kernel="triton")
