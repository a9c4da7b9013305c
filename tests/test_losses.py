"""Pure loss functions against independent references (torch.nn.functional and hand-written loops)."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_distill.losses import (
    attention_map_loss,
    cross_entropy_loss,
    hidden_state_loss,
    logit_distillation_loss,
    token_divergence,
)


def reference_divergence(s_logits, t_logits, divergence, temperature, beta=0.5):
    """float64 per-token divergence built from probabilities (no shared code with the implementation)."""
    s = F.log_softmax(s_logits.double() / temperature, -1)
    t = F.log_softmax(t_logits.double() / temperature, -1)
    if divergence == "forward_kl":
        return F.kl_div(s, t, reduction="none", log_target=True).sum(-1)
    if divergence == "reverse_kl":
        return F.kl_div(t, s, reduction="none", log_target=True).sum(-1)
    m = torch.log(beta * t.exp() + (1 - beta) * s.exp())
    kl_t = (t.exp() * (t - m)).sum(-1)
    kl_s = (s.exp() * (s - m)).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_token_divergence_matches_reference(divergence, temperature):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(7, 11, generator=g) * 3, torch.randn(7, 11, generator=g) * 3
    got = token_divergence(s, t, divergence, temperature, jsd_beta=0.3)
    want = reference_divergence(s, t, divergence, temperature, beta=0.3)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_jsd_is_symmetric_at_half_and_zero_for_equal_inputs():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 9, generator=g), torch.randn(5, 9, generator=g)
    torch.testing.assert_close(token_divergence(s, t, "jsd"), token_divergence(t, s, "jsd"))
    assert token_divergence(s, s, "jsd").abs().max() < 1e-6


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_chunked_logit_loss_value_and_grad_match_naive(divergence, chunk_size):
    g = torch.Generator().manual_seed(2)
    s = (torch.randn(2, 5, 13, generator=g) * 2).requires_grad_(True)
    t = torch.randn(2, 5, 13, generator=g) * 2
    mask = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 0, 1, 1]], dtype=torch.bool)
    temperature = 2.0
    got = logit_distillation_loss(s, t, mask, divergence, temperature, chunk_size=chunk_size)
    (got_grad,) = torch.autograd.grad(got, s)

    s64 = s.detach().double().requires_grad_(True)
    want = reference_divergence(s64[mask], t[mask], divergence, temperature).sum() * temperature**2
    (want_grad,) = torch.autograd.grad(want, s64)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_grad.double(), want_grad, atol=1e-6, rtol=1e-5)
    assert got_grad[~mask].abs().max() == 0


def test_logit_loss_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        logit_distillation_loss(torch.zeros(2, 5), torch.zeros(2, 6))


@pytest.mark.parametrize("loss_type", ["mse", "cosine"])
def test_hidden_state_loss_matches_hand_written_loop(loss_type):
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    want = 0.0
    for b in range(2):
        for i in range(4):
            if mask[b, i]:
                x, y = s[b, i].tolist(), t[b, i].tolist()
                if loss_type == "mse":
                    want += sum((a - c) ** 2 for a, c in zip(x, y, strict=True)) / len(x)
                else:
                    dot = sum(a * c for a, c in zip(x, y, strict=True))
                    want += 1 - dot / (sum(a * a for a in x) ** 0.5 * sum(c * c for c in y) ** 0.5)
    got = hidden_state_loss(s, t, mask, loss_type)
    assert got.item() == pytest.approx(want, rel=1e-5)


def _random_attention(batch, heads, length, mask, generator, causal=False):
    scores = torch.randn(batch, heads, length, length, generator=generator)
    keys = mask[:, None, None, :].bool()
    if causal:
        keys = keys & torch.ones(length, length, dtype=torch.bool).tril()
    return scores.masked_fill(~keys, float("-inf")).softmax(-1)


def reference_attention(s, t, mask, loss_type):
    """Loop over batch, query and head: MSE over the valid keys or KL(t || s), averaged over heads."""
    total = 0.0
    for b in range(s.shape[0]):
        keys = mask[b].bool()
        for q in range(s.shape[2]):
            if not mask[b, q]:
                continue
            per_head = []
            for h in range(s.shape[1]):
                a, c = s[b, h, q, keys].double(), t[b, h, q, keys].double()
                if loss_type == "mse":
                    per_head.append(((a - c) ** 2).mean().item())
                else:
                    per_head.append(
                        sum(y * math.log(y / x) for x, y in zip(a.tolist(), c.tolist(), strict=True) if y > 0)
                    )
            total += sum(per_head) / len(per_head)
    return total


@pytest.mark.parametrize("loss_type", ["mse", "kl"])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_loss_matches_loop(loss_type, causal):
    g = torch.Generator().manual_seed(4)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    s = _random_attention(2, 3, 5, mask, g, causal)
    t = _random_attention(2, 3, 5, mask, g, causal)
    got = attention_map_loss(s, t, mask, loss_type)
    assert got.item() == pytest.approx(reference_attention(s, t, mask, loss_type), rel=1e-5)


def test_attention_loss_averages_heads_when_counts_differ():
    g = torch.Generator().manual_seed(5)
    mask = torch.ones(2, 4, dtype=torch.long)
    s = _random_attention(2, 2, 4, mask, g)
    t = _random_attention(2, 6, 4, mask, g)
    got = attention_map_loss(s, t, mask, "mse")
    want = reference_attention(s.mean(1, keepdim=True), t.mean(1, keepdim=True), mask, "mse")
    assert got.item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("loss_type", ["mse", "kl"])
def test_attention_loss_does_not_depend_on_padding_length(loss_type):
    g = torch.Generator().manual_seed(6)
    mask = torch.ones(1, 4, dtype=torch.long)
    s, t = _random_attention(1, 2, 4, mask, g), _random_attention(1, 2, 4, mask, g)
    padded_mask = torch.tensor([[1, 1, 1, 1, 0, 0]])

    def pad(a):
        out = torch.zeros(1, 2, 6, 6)
        out[..., :4, :4] = a
        out[..., 4:, 0] = 1.0  # padded query rows attend somewhere; they must not count
        return out

    torch.testing.assert_close(
        attention_map_loss(pad(s), pad(t), padded_mask, loss_type), attention_map_loss(s, t, mask, loss_type)
    )


@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
def test_chunked_cross_entropy_matches_torch(chunk_size):
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 6, 10, generator=g).requires_grad_(True)
    labels = torch.randint(0, 10, (3, 6), generator=g)
    labels[0, :2] = -100
    labels[2, 4:] = -100
    got = cross_entropy_loss(logits, labels, chunk_size)
    want = F.cross_entropy(logits.reshape(-1, 10), labels.reshape(-1), ignore_index=-100, reduction="sum")
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, logits)[0], torch.autograd.grad(want, logits)[0])
