"""DDK's gap estimates: standard errors against numpy / bootstrap / jackknife references, the token-sized random sample
of held-out blocks, identical blocks for student and teacher, the logged errors and the warnings."""

import logging
import math

import numpy as np
import pytest
import torch
from toy_domains import DOMAINS, domain_datasets, small_ddk_trainer

from hf_distill.ddk import DomainEstimate, gap_standard_error, mean_standard_error, overlapping
from hf_distill.ddk.evaluator import SELECTION_SEED

# ---- the formulas --------------------------------------------------------------------------------------------


def test_standard_error_of_equal_blocks_is_the_sd_of_block_means_over_sqrt_b():
    rng = np.random.default_rng(0)
    means = rng.normal(3.0, 0.7, 40)
    counts = np.full(40, 63)
    expected = np.std(means, ddof=1) / math.sqrt(40)
    assert mean_standard_error(means * counts, counts) == pytest.approx(expected, rel=1e-12)


def test_standard_error_hand_case_with_unequal_blocks():
    # blocks (sum, tokens): (6, 2), (3, 1), (9, 3): mean = 18 / 6 = 3, every residual L_b - 3 n_b is 0
    assert mean_standard_error([6.0, 3.0, 9.0], [2, 1, 3]) == 0.0
    # (2, 1), (4, 1), (9, 2): mean 15 / 4 = 3.75; residuals -1.75, 0.25, 1.5; sum of squares 5.375
    expected = math.sqrt(3 / 2 * 5.375) / 4
    assert mean_standard_error([2.0, 4.0, 9.0], [1, 1, 2]) == pytest.approx(expected, rel=1e-15)
    assert math.isnan(mean_standard_error([2.0], [1]))


def test_standard_error_of_unequal_blocks_agrees_with_a_bootstrap():
    rng = np.random.default_rng(1)
    counts = rng.integers(10, 64, 60)
    sums = counts * rng.normal(4.0, 1.0, 60) + rng.normal(0, 3, 60)
    picks = rng.integers(0, 60, (20_000, 60))  # resample blocks with replacement
    bootstrap = np.std(sums[picks].sum(1) / counts[picks].sum(1))
    assert mean_standard_error(sums, counts) == pytest.approx(bootstrap * math.sqrt(60 / 59), rel=0.03)


def _jackknife(statistic, student, teacher, counts):
    """Leave-one-block-out standard error of `statistic(student mean, teacher mean)`: an independent reference."""
    n = len(counts)
    values = []
    for k in range(n):
        keep = np.arange(n) != k
        values.append(statistic(student[keep].sum() / counts[keep].sum(), teacher[keep].sum() / counts[keep].sum()))
    values = np.array(values)
    return math.sqrt((n - 1) / n * np.sum((values - values.mean()) ** 2))


@pytest.mark.parametrize(
    ("gap", "statistic"),
    [("perplexity", lambda s, t: math.exp(s - t)), ("log_perplexity", lambda s, t: s - t),
     ("cross_entropy", lambda s, t: s / t)],
)  # fmt: skip
def test_gap_standard_error_pairs_the_blocks_and_agrees_with_a_jackknife(gap, statistic):
    rng = np.random.default_rng(2)
    counts = rng.integers(40, 64, 80)
    teacher = counts * rng.normal(3.5, 0.8, 80)
    student = teacher + counts * rng.normal(1.2, 0.3, 80)  # correlated with the teacher, as on shared blocks
    estimate = gap_standard_error(
        DomainEstimate(tuple(student), tuple(counts)), DomainEstimate(tuple(teacher), tuple(counts)), gap
    )
    assert estimate == pytest.approx(_jackknife(statistic, student, teacher, counts), rel=0.02)
    # pairing matters: the errors of the two means added in quadrature would be far larger
    unpaired = math.hypot(mean_standard_error(student, counts), mean_standard_error(teacher, counts))
    assert (
        gap_standard_error(
            DomainEstimate(tuple(student), tuple(counts)),
            DomainEstimate(tuple(teacher), tuple(counts)),
            "log_perplexity",
        )
        < unpaired / 2
    )


def test_gap_standard_error_refuses_estimates_on_different_blocks():
    with pytest.raises(ValueError, match="same held-out blocks"):
        gap_standard_error(DomainEstimate((1.0, 2.0), (1, 1)), DomainEstimate((1.0, 2.0), (1, 2)))


def test_overlapping_pairs():
    assert overlapping([1.0, 1.5, 3.0], [0.2, 0.3, 0.1]) == [(0, 1)]  # 0.5 <= 0.5; 1.5 > 0.4
    assert overlapping([1.0, 1.6, 3.0], [0.2, 0.3, 0.1]) == []
    assert overlapping([1.0, 1.1], [math.nan, 0.3]) == []


# ---- the evaluator and the callback --------------------------------------------------------------------------


def _row_losses(model, rows):
    """Per example: the summed token cross-entropy from the model's own loss (mean x tokens), one example at a time."""
    out = []
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row])
            out.append(float(model(input_ids=ids, labels=ids).loss) * (len(row) - 1))
    return np.array(out)


def test_a_token_budget_takes_a_fixed_random_sample_of_whole_blocks(tmp_path):
    trainer = small_ddk_trainer(tmp_path, ddk_eval_batches=None, ddk_eval_tokens=100)
    evaluator, data = trainer.domain_evaluator, domain_datasets(16, seed=1)
    rows = evaluator.select(data["a"], max_tokens=100)  # 15 label tokens per row: 7 rows reach 100
    order = np.random.default_rng(SELECTION_SEED).permutation(16).tolist()
    assert rows == order[:7]
    assert evaluator.select(data["a"], max_batches=1, max_tokens=10_000) == order[:8]  # one batch of 8 per process
    assert evaluator.select(data["a"]) == list(range(16))  # no budget: every row, in order

    batches = evaluator.collate(data, max_tokens=100)
    estimates = evaluator.block_losses(trainer.teacher, batches, list(DOMAINS))
    for name, estimate in zip(DOMAINS, estimates, strict=True):
        picked = [data[name]["input_ids"][r] for r in rows]
        reference = _row_losses(trainer.teacher, picked)
        assert estimate.counts == (15,) * 7 and estimate.tokens == 105
        np.testing.assert_allclose(estimate.sums, reference, rtol=1e-5)
        assert estimate.mean == pytest.approx(reference.sum() / 105, rel=1e-6)
        assert estimate.standard_error == pytest.approx(np.std(reference / 15, ddof=1) / math.sqrt(7), rel=1e-5)


@pytest.mark.parametrize("gap", ["log_perplexity", "perplexity"])
def test_logged_errors_are_those_of_the_shared_blocks(tmp_path, gap):
    """Student and teacher are measured on the same blocks; the logged standard errors equal numpy's on per-example
    losses computed independently, and the ratio's error is that of the paired per-block difference (times the
    ratio for the paper's perplexity ratio)."""
    trainer = small_ddk_trainer(tmp_path, max_steps=3, ddk_update_steps=2, ddk_eval_batches=None, ddk_eval_tokens=100,
                                save_strategy="steps", save_steps=2, ddk_gap=gap)  # fmt: skip
    trainer.train()
    log = next(h for h in trainer.state.log_history if "ddk/weight/a" in h)
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "checkpoint-2").eval()
    rows = np.random.default_rng(SELECTION_SEED).permutation(16)[:7].tolist()
    for name in DOMAINS:
        picked = [domain_datasets(16, seed=1)[name]["input_ids"][r] for r in rows]
        s, t = _row_losses(student, picked) / 15, _row_losses(trainer.teacher, picked) / 15
        assert log[f"ddk/tokens/{name}"] == 105
        assert log[f"ddk/se_S/{name}"] == pytest.approx(np.std(s, ddof=1) / math.sqrt(7), rel=1e-4)
        assert log[f"ddk/se_T/{name}"] == pytest.approx(np.std(t, ddof=1) / math.sqrt(7), rel=1e-4)
        paired = np.std(s - t, ddof=1) / math.sqrt(7)
        ratio = math.exp(s.mean() - t.mean()) if gap == "perplexity" else s.mean() - t.mean()
        assert log[f"ddk/ratio/{name}"] == pytest.approx(ratio, rel=1e-4, abs=1e-6)
        expected = ratio * paired if gap == "perplexity" else paired
        assert log[f"ddk/ratio_se/{name}"] == pytest.approx(expected, rel=1e-4)
    assert trainer.ddk_callback.teacher_blocks[0][1] == [15] * 7


def test_warnings_are_given_once_per_run(tmp_path, caplog):
    """Untrained tiny models: every domain's ratio is near 1, so the domains are not separable at their errors; and
    16 held-out examples hold 240 tokens, fewer than asked."""
    trainer = small_ddk_trainer(tmp_path, max_steps=7, ddk_update_steps=2, ddk_eval_batches=None, ddk_eval_tokens=4096)
    with caplog.at_level(logging.WARNING, logger="hf_distill.ddk.callback"):
        trainer.train()
    lines = [r.getMessage() for r in caplog.records if r.name == "hf_distill.ddk.callback"]
    assert len(trainer.ddk_callback.updates) == 3
    inseparable = [line for line in lines if "within their standard errors" in line]
    short = [line for line in lines if "fewer label tokens" in line]
    assert len(inseparable) == 1 and "ddk_eval_tokens=4096" in inseparable[0]
    assert "(ddk_ratio_temperature)" in inseparable[0]  # the default log gap: not advised to switch to it
    assert len(short) == 1 and "a 240, b 240, c 240" in short[0]


def test_resume_keeps_the_teachers_blocks_and_does_not_measure_the_teacher_again(tmp_path, monkeypatch):
    full = small_ddk_trainer(tmp_path, max_steps=6, ddk_update_steps=2, save_strategy="steps", save_steps=3)
    full.train()
    from hf_distill.ddk.evaluator import DomainEvaluator

    calls = []
    original = DomainEvaluator.block_losses
    monkeypatch.setattr(
        DomainEvaluator, "block_losses", lambda self, model, *a: calls.append(model) or original(self, model, *a)
    )
    resumed = small_ddk_trainer(tmp_path, max_steps=6, ddk_update_steps=2, output_dir=str(tmp_path / "resumed"))
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    assert resumed.ddk_callback.teacher_blocks == full.ddk_callback.teacher_blocks
    assert not any(model is resumed.teacher for model in calls) and len(calls) == 1  # the student at step 4
    assert resumed.ddk_callback.updates[-1]["ratio_se"] == pytest.approx(full.ddk_callback.updates[-1]["ratio_se"])


def test_a_single_block_has_no_standard_error_and_the_update_line_says_so():
    from hf_distill.ddk.callback import _with_error

    one = DomainEstimate((3.0,), (4.0,))
    assert math.isnan(one.standard_error)
    assert _with_error(6.883, one.standard_error) == "6.883, one block: no error"
    assert _with_error(6.175, 0.1913) == "6.175 ± 0.19"
