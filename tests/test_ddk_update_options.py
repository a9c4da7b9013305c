"""DDK's update beyond the paper: weight bounds (exact under every update), the ratio temperature (1 = the paper's
update, bit for bit), the log-perplexity gap, and no update at the last step."""

import math

import numpy as np
import pytest
from conftest import make_config
from toy_domains import domain_datasets, small_ddk_trainer, toy_trainer

from hf_distill import ddk_update
from hf_distill.ddk import bound_weights, domain_gap


def _paper_update(weights, student_losses, teacher_losses, alpha=0.5, smoothing=True, gap="perplexity"):
    """hf_distill 0.3's `ddk_update` (commit 806877f), verbatim but for names: the reference the default arguments must
    reproduce bit for bit."""

    def softmax(logits):
        top = max(logits)
        exps = [math.exp(x - top) if x != -math.inf else 0.0 for x in logits]
        total = sum(exps)
        return [e / total for e in exps]

    ratios = domain_gap(student_losses, teacher_losses, gap)
    if not smoothing:
        return softmax(ratios)
    psi = softmax([math.log(r) + q if r > 0 else -math.inf for r, q in zip(weights, ratios, strict=True)])
    return [alpha * p + (1.0 - alpha) / len(psi) for p in psi]


def _random_case(rng, domains):
    weights = rng.dirichlet(np.ones(domains)).tolist()
    teacher = rng.uniform(0.5, 5.0, domains).tolist()
    student = [t + d for t, d in zip(teacher, rng.uniform(-0.5, 6.0, domains), strict=True)]  # ratios up to e^6
    return weights, student, teacher


@pytest.mark.parametrize("gap", ["perplexity", "cross_entropy"])
@pytest.mark.parametrize("smoothing", [True, False])
def test_temperature_one_and_no_bounds_is_the_papers_update_bit_for_bit(gap, smoothing):
    rng = np.random.default_rng(0)
    for _ in range(500):
        weights, student, teacher = _random_case(rng, int(rng.integers(2, 9)))
        alpha = float(rng.uniform(0, 1))
        expected = _paper_update(weights, student, teacher, alpha, smoothing, gap)
        assert ddk_update(weights, student, teacher, alpha, smoothing, gap) == expected  # exactly, not approx
        explicit = ddk_update(weights, student, teacher, alpha, smoothing, gap, 1.0, 0.0, 1.0)
        assert explicit == expected


def test_temperature_divides_the_ratio_inside_the_softmax_and_log_gap_uses_ce_differences():
    """Against the paper's formula written out in float64 numpy with g = exp(ratio / T)."""
    rng = np.random.default_rng(1)
    for gap in ("perplexity", "log_perplexity", "cross_entropy"):
        for temperature in (0.5, 2.0, 7.0):
            weights, student, teacher = _random_case(rng, 5)
            s, t, r = np.array(student), np.array(teacher), np.array(weights)
            ratio = {"perplexity": np.exp(s - t), "log_perplexity": s - t, "cross_entropy": s / t}[gap]
            g = np.exp(ratio / temperature - np.max(ratio / temperature))  # scaled: the softmax does not change
            expected = 0.5 * (r * g) / np.sum(r * g) + 0.5 / 5
            got = ddk_update(weights, student, teacher, 0.5, True, gap, temperature)
            assert got == pytest.approx(expected.tolist(), rel=1e-10, abs=1e-15)
    # the log gap: g is the perplexity ratio itself, so psi ~ r * ppl_S / ppl_T
    r1 = ddk_update([0.5, 0.5], [3.0, 2.0], [1.0, 1.0], alpha=1.0, gap="log_perplexity")
    assert r1 == pytest.approx([math.e**2 / (math.e**2 + math.e), math.e / (math.e**2 + math.e)], rel=1e-12)


def test_bounds_hold_exactly_under_every_update_over_random_ratios():
    """Property test: 3,000 random sequences of 4 updates (random domains, alpha, temperature, gap, bounds); every
    weight of every update lies within [min, max] with no tolerance, sums to 1, and the weights the bounds did not
    touch keep the unbounded update's proportions."""
    rng = np.random.default_rng(2)
    clipped_low = clipped_high = 0
    for _ in range(3000):
        domains = int(rng.integers(2, 11))
        low = float(rng.uniform(0, 1 / domains)) if rng.random() < 0.8 else 0.0
        high = float(rng.uniform(1 / domains, 1)) if rng.random() < 0.8 else 1.0
        alpha, smoothing = float(rng.uniform(0, 1)), bool(rng.random() < 0.8)
        gap = str(rng.choice(["perplexity", "log_perplexity", "cross_entropy"]))
        temperature = float(rng.choice([0.25, 1.0, 4.0]))
        weights = bound_weights(rng.dirichlet(np.ones(domains)).tolist(), low, high)
        for _ in range(4):
            _, student, teacher = _random_case(rng, domains)
            free = ddk_update(weights, student, teacher, alpha, smoothing, gap, temperature)
            weights = ddk_update(weights, student, teacher, alpha, smoothing, gap, temperature, low, high)
            assert all(low <= w <= high for w in weights), (low, high, weights)
            assert sum(weights) == pytest.approx(1.0, abs=1e-12)
            inside = [i for i, w in enumerate(weights) if low < w < high and free[i] > 0]
            for i in inside[1:]:
                assert weights[i] / weights[inside[0]] == pytest.approx(free[i] / free[inside[0]], rel=1e-9)
            clipped_low += sum(w == low for w in weights)
            clipped_high += sum(w == high for w in weights)
    assert clipped_low > 100 and clipped_high > 100  # the bounds were exercised on both sides


def test_bound_weights_hand_cases():
    # 0.7 is cut to 0.4; the 0.3 left over is shared by the others in their proportions (here equal)
    assert bound_weights([0.7, 0.1, 0.1, 0.1], 0.0, 0.4) == pytest.approx([0.4, 0.2, 0.2, 0.2], abs=1e-15)
    # raising 0.02 to 0.1 takes 0.08 from the others, in proportion to 0.58 and 0.4
    got = bound_weights([0.58, 0.4, 0.02], 0.1, 1.0)
    assert got[2] == 0.1 and got[:2] == pytest.approx([0.58 * 0.9 / 0.98, 0.4 * 0.9 / 0.98], abs=1e-15)
    # a mixture within the bounds is returned as it is; all-but-one zero weights share what the bound leaves
    assert bound_weights([0.25, 0.25, 0.5], 0.1, 0.5) == [0.25, 0.25, 0.5]
    assert bound_weights([1.0, 0.0, 0.0, 0.0], 0.0, 0.4) == pytest.approx([0.4, 0.2, 0.2, 0.2], abs=1e-15)
    with pytest.raises(ValueError, match="cannot all lie within"):
        bound_weights([0.5, 0.5], 0.6, 1.0)


def test_bounds_are_checked_against_the_domains_and_the_initial_weights(tmp_path):
    args = make_config(tmp_path, ddk_update_steps=2, ddk_min_weight=0.4)  # 3 domains: 3 x 0.4 > 1
    with pytest.raises(ValueError, match=r"ddk_min_weight=0.4 / ddk_max_weight=1.0: 3 domain weights .* 1/3"):
        toy_trainer(args, domain_datasets(16, seed=0))
    args = make_config(tmp_path, ddk_update_steps=2, ddk_max_weight=0.5, ddk_initial_weights="a=0.6,b=0.2,c=0.2")
    with pytest.raises(ValueError, match=r"ddk_initial_weights gives \{'a': 0.6\}, outside"):
        toy_trainer(args, domain_datasets(16, seed=0))
    with pytest.raises(ValueError, match=r"ddk_min_weight=0.5 > ddk_max_weight=0.3"):
        make_config(tmp_path, ddk_min_weight=0.5, ddk_max_weight=0.3)


def test_trained_weights_respect_the_bounds(tmp_path):
    trainer = small_ddk_trainer(tmp_path, max_steps=9, ddk_update_steps=2, ddk_min_weight=0.3, ddk_max_weight=0.36)
    trainer.train()
    for update in trainer.ddk_callback.updates:
        assert all(0.3 <= w <= 0.36 for w in update["weights"]), update["weights"]
    assert [u["step"] for u in trainer.ddk_callback.updates] == [2, 4, 6, 8]


@pytest.mark.parametrize(("max_steps", "steps"), [(12, [4, 8]), (13, [4, 8, 12])])
def test_no_update_is_computed_at_the_last_step(tmp_path, monkeypatch, max_steps, steps):
    """The weights of an update at the last step would never be used: it is not computed (no evaluation runs)."""
    from hf_distill.ddk.evaluator import DomainEvaluator

    calls = []
    original = DomainEvaluator.block_losses

    def counted(self, model, batches, names, teacher=False):
        calls.append(model)
        return original(self, model, batches, names, teacher)

    monkeypatch.setattr(DomainEvaluator, "block_losses", counted)
    trainer = small_ddk_trainer(tmp_path, max_steps=max_steps, ddk_update_steps=4)
    trainer.train()
    assert [u["step"] for u in trainer.ddk_callback.updates] == steps
    assert len(calls) == 1 + len(steps)  # the teacher once, the student at each update
    assert sum(model is trainer.teacher for model in calls) == 1
    logged = [h["step"] for h in trainer.state.log_history if "ddk/weight/a" in h]
    assert logged == steps and len(trainer.domain_sampler.history) == 1 + len(steps)
