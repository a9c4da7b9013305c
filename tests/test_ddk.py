"""DDK: the update math against hand-computed values, the domain sampler, and DDK inside DistillationTrainer."""

import collections
import json
import math

import numpy as np
import pytest
import torch
from conftest import PadCollator, make_config
from datasets import Dataset
from torch.utils.data import DataLoader
from toy_domains import DOMAINS, domain_datasets, make_student, make_teacher, small_ddk_trainer, toy_pair
from transformers import AutoModelForCausalLM

from hf_distill import DistillationTrainer, DomainWeightedSampler, ddk_update, discrepancy_factor, domain_gap

E = math.e
L_T = [2.0, 1.0, 4.0]
L_S1 = [2.0, 2.0, 4.0]  # ratios 1, 2, 1
L_S2 = [3.0, 1.5, 4.0]  # ratios 1.5, 1.5, 1


# ---- the math ------------------------------------------------------------------------------------------------


def test_discrepancy_factor_is_exp_of_the_perplexity_ratio_or_of_the_ce_ratio():
    # perplexities exp(L): ratios exp(L_S - L_T) = (1, e, 1) and (e, e^0.5, 1)
    assert discrepancy_factor(L_S1, L_T) == pytest.approx([E, E**E, E], rel=1e-12)
    assert discrepancy_factor(L_S2, L_T) == pytest.approx([E**E, E ** (E**0.5), E], rel=1e-12)
    assert domain_gap(L_S2, L_T) == pytest.approx([E, E**0.5, 1.0], rel=1e-12)
    assert discrepancy_factor(L_S1, L_T, gap="cross_entropy") == pytest.approx([E, E**2, E], rel=1e-12)
    assert discrepancy_factor(L_S2, L_T, gap="cross_entropy") == pytest.approx([E**1.5, E**1.5, E], rel=1e-12)
    assert discrepancy_factor([800.0], [1.0]) == [math.inf]  # e^(e^799) is not a float; the update never forms it


def test_two_smoothed_updates_on_perplexity_ratios_match_hand_computation():
    r1 = ddk_update([1 / 3] * 3, L_S1, L_T, alpha=0.5)
    # g = (e, e^e, e); psi = g / (2e + e^e); r1 = psi / 2 + 1/6
    z = 2 * E + E**E
    assert r1 == pytest.approx([0.5 * E / z + 1 / 6, 0.5 * E**E / z + 1 / 6, 0.5 * E / z + 1 / 6], abs=1e-12)
    assert r1 == pytest.approx([0.23267378, 0.53465245, 0.23267378], abs=1e-8)  # by hand
    r2 = ddk_update(r1, L_S2, L_T, alpha=0.5)
    # r1 * g = (0.23267378 e^e, 0.53465245 e^(e^0.5), 0.23267378 e) = (3.52600, 2.78037, 0.63247), sum 6.93884
    assert r2 == pytest.approx([0.42074, 0.36701, 0.21224], abs=1e-5)  # by hand
    assert sum(r2) == pytest.approx(1.0, abs=1e-12)


def test_two_smoothed_updates_on_cross_entropy_ratios_match_hand_computation():
    r1 = ddk_update([1 / 3] * 3, L_S1, L_T, alpha=0.5, gap="cross_entropy")
    # psi = (e, e^2, e) / (2e + e^2) = (1, e, 1) / (2 + e);  r1 = psi / 2 + 1/6
    a, b = 0.5 / (2 + E) + 1 / 6, 0.5 * E / (2 + E) + 1 / 6
    assert r1 == pytest.approx([a, b, a], abs=1e-12)
    assert r1 == pytest.approx([0.27263745, 0.45472511, 0.27263745], abs=1e-8)  # by hand
    r2 = ddk_update(r1, L_S2, L_T, alpha=0.5, gap="cross_entropy")
    # r1 * g = (a e^1.5, b e^1.5, a e) = (1.22187627, 2.03793663, 0.74110545), sum 4.00091835
    assert r2 == pytest.approx([0.31936615, 0.42135027, 0.25928358], abs=1e-8)  # by hand
    assert sum(r2) == pytest.approx(1.0, abs=1e-12)


def test_alpha_zero_keeps_the_mixture_uniform():
    r1 = ddk_update([1 / 3] * 3, L_S1, L_T, alpha=0.0)
    r2 = ddk_update(r1, L_S2, L_T, alpha=0.0)
    assert r1 == pytest.approx([1 / 3] * 3, abs=1e-15) and r2 == pytest.approx([1 / 3] * 3, abs=1e-15)


def test_no_smoothing_is_softmax_of_the_ratios_and_ignores_history():
    r1 = ddk_update([1 / 3] * 3, L_S1, L_T, smoothing=False)
    assert r1 == pytest.approx([E / (2 * E + E**E), E**E / (2 * E + E**E), E / (2 * E + E**E)], abs=1e-12)
    r1 = ddk_update([1 / 3] * 3, L_S1, L_T, smoothing=False, gap="cross_entropy")
    assert r1 == pytest.approx([1 / (2 + E), E / (2 + E), 1 / (2 + E)], abs=1e-12)
    r2 = ddk_update(r1, L_S2, L_T, smoothing=False, gap="cross_entropy")
    z = 2 * E**1.5 + E
    assert r2 == pytest.approx([E**1.5 / z, E**1.5 / z, E / z], abs=1e-12)
    assert r2 == pytest.approx([0.38365173, 0.38365173, 0.23269654], abs=1e-8)  # by hand


def test_update_edge_cases():
    assert ddk_update([0.0, 0.5, 0.5], L_S1, L_T, alpha=1.0)[0] == 0.0  # a zero weight stays zero at alpha 1
    big = ddk_update([0.5, 0.5], [2000.0, 1.0], [1.0, 1.0], alpha=1.0, gap="cross_entropy")  # exp(2000) overflows
    assert big == pytest.approx([1.0, 0.0])
    big = ddk_update([0.5, 0.5], [9.0, 1.0], [1.0, 1.0], alpha=1.0)  # perplexity ratio e^8 ~ 2981: g = e^2981
    assert big == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError, match="gap='kl' is not supported"):
        ddk_update([0.5, 0.5], [1.0, 1.0], [1.0, 1.0], gap="kl")
    with pytest.raises(ValueError, match="alpha"):
        ddk_update([0.5, 0.5], [1.0, 1.0], [1.0, 1.0], alpha=1.5)
    with pytest.raises(ValueError, match="teacher losses > 0"):
        ddk_update([0.5, 0.5], [1.0, 1.0], [1.0, 0.0])


# ---- the sampler ---------------------------------------------------------------------------------------------

LABELS = ["a"] * 500 + ["b"] * 300 + ["c"] * 200


def _domains_of(indices):
    return [LABELS[i] for i in indices]


def _frequencies(names):
    counts = collections.Counter(names)
    return [counts[d] / len(names) for d in DOMAINS]


def test_sampler_frequencies_match_the_weights_over_20k_draws():
    for weights in ([0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.2, 0.3, 0.5]):
        sampler = DomainWeightedSampler(LABELS, weights, seed=3, num_samples=20_000)
        observed = _frequencies(_domains_of(list(sampler)))
        assert observed == pytest.approx(weights, abs=0.02), (weights, observed)


def _stream_with_change(sampler, after, weights):
    """Iterate `sampler` to the end, calling `set_weights(weights)` once `after` draws are made."""
    stream = []
    for index in sampler:
        stream.append(index)
        if len(stream) == after:
            sampler.set_weights(weights)
    return stream


def test_sampler_weight_change_applies_from_the_next_draw():
    reference = list(DomainWeightedSampler(LABELS, [0.5, 0.3, 0.2], seed=3, num_samples=20_000))
    changed = DomainWeightedSampler(LABELS, [0.5, 0.3, 0.2], seed=3, num_samples=20_000)
    stream = _stream_with_change(changed, 10_000, [0.0, 0.0, 1.0])
    assert stream[:10_000] == reference[:10_000]
    assert set(_domains_of(stream[10_000:])) == {"c"}  # every draw after the change, the very next one included
    assert changed.history == [(0, [0.5, 0.3, 0.2]), (10_000, [0.0, 0.0, 1.0])]

    mixed = DomainWeightedSampler(LABELS, [0.5, 0.3, 0.2], seed=3, num_samples=20_000)
    stream = _stream_with_change(mixed, 10_000, [0.2, 0.2, 0.6])
    assert _frequencies(_domains_of(stream[:10_000])) == pytest.approx([0.5, 0.3, 0.2], abs=0.02)
    assert _frequencies(_domains_of(stream[10_000:])) == pytest.approx([0.2, 0.2, 0.6], abs=0.02)


def test_sampler_same_seed_same_stream_and_per_domain_shuffle_cycles():
    first = list(DomainWeightedSampler(LABELS, [0.5, 0.3, 0.2], seed=7, num_samples=3000))
    assert first == list(DomainWeightedSampler(LABELS, [0.5, 0.3, 0.2], seed=7, num_samples=3000))
    assert first != list(DomainWeightedSampler(LABELS, [0.5, 0.3, 0.2], seed=8, num_samples=3000))
    c_draws = [i for i in first if LABELS[i] == "c"]
    assert len(c_draws) > 400
    assert sorted(c_draws[:200]) == list(range(800, 1000))  # each example once per pass over the domain
    assert sorted(c_draws[200:400]) == list(range(800, 1000))
    assert c_draws[:200] != c_draws[200:400]  # reshuffled when the domain runs out


def test_sampler_epochs_continue_the_stream_and_state_dict_round_trips():
    long = DomainWeightedSampler(LABELS, [0.5, 0.3, 0.2], seed=1, num_samples=2000)
    long_stream = _stream_with_change(long, 1500, [0.1, 0.1, 0.8])
    epochs = DomainWeightedSampler(LABELS, [0.5, 0.3, 0.2], seed=1, num_samples=1000)
    epochs.load_state_dict({**long.state_dict(), "num_samples": 1000})
    epoch0 = list(epochs)
    epochs.set_epoch(1)
    assert epoch0 + list(epochs) == long_stream
    with pytest.raises(ValueError, match="same training data"):
        DomainWeightedSampler(LABELS[:800], seed=1).load_state_dict(long.state_dict())


def test_sampler_stream_is_the_same_with_dataloader_workers():
    sampler = DomainWeightedSampler(LABELS, [0.5, 0.3, 0.2], seed=5, num_samples=400)
    dataset = list(range(len(LABELS)))
    single = [int(i) for batch in DataLoader(dataset, batch_size=8, sampler=sampler) for i in batch]
    workers = DataLoader(dataset, batch_size=8, sampler=sampler, num_workers=2, multiprocessing_context="fork")
    assert [int(i) for batch in workers for i in batch] == single == list(sampler)


def test_sampler_refuses_bad_weights_and_rewriting_the_past():
    with pytest.raises(ValueError, match="sum to 1"):
        DomainWeightedSampler(LABELS, [0.5, 0.3, 0.3])
    with pytest.raises(ValueError, match="Expected 3 weights"):
        DomainWeightedSampler(LABELS, [0.5, 0.5])
    sampler = DomainWeightedSampler(LABELS, seed=0)
    iterator = iter(sampler)
    for _ in range(10):
        next(iterator)
    with pytest.raises(ValueError, match="10 draws were made"):
        sampler.set_weights([0.2, 0.2, 0.6], position=5)


# ---- inside the trainer --------------------------------------------------------------------------------------


class _Recorder(DistillationTrainer):
    """Records the domain ids and input ids that reach compute_loss in training."""

    def compute_loss(self, model, inputs, *args, **kwargs):
        if model.training:
            self.seen.append((inputs["domain_ids"].tolist(), inputs["input_ids"][:, 0].tolist()))
        return super().compute_loss(model, inputs, *args, **kwargs)


@pytest.mark.parametrize("as_column", [False, True])
def test_domain_ids_reach_compute_loss_and_initial_weights_steer_the_mix(tmp_path, as_column):
    from conftest import tiny_llama

    train = domain_datasets(64, seed=0)
    if as_column:  # one dataset with a string column named by domain_column
        rows = [{"input_ids": r["input_ids"], "source": d} for d in DOMAINS for r in train[d]]
        train = Dataset.from_list(rows)
    args = make_config(tmp_path, max_steps=6, domain_column="source" if as_column else "domain")
    trainer = _Recorder(
        model=tiny_llama(seed=1), teacher_model=tiny_llama(seed=2), args=args, train_dataset=train,
        data_collator=PadCollator(),
    )  # fmt: skip
    trainer.seen = []
    trainer.train()
    assert trainer.domain_names == list(DOMAINS)
    for ids, first_tokens in trainer.seen:
        assert [(t - 1) // 30 for t in first_tokens] == ids  # domain k owns tokens 1 + 30k .. 30 + 30k
    shares = [h for h in trainer.state.log_history if "domain_share/a" in h]
    assert len(shares) == 6 and all(sum(h[f"domain_share/{d}"] for d in DOMAINS) == pytest.approx(1) for h in shares)

    args = make_config(tmp_path, max_steps=3, ddk_initial_weights="a=0,b=0.25,c=0.75")
    trainer = _Recorder(
        model=tiny_llama(seed=1), teacher_model=tiny_llama(seed=2), args=args, train_dataset=domain_datasets(64, 0),
        data_collator=PadCollator(),
    )  # fmt: skip
    trainer.seen = []
    trainer.train()
    ids = [i for batch, _ in trainer.seen for i in batch]
    assert 0 not in ids and ids.count(2) > ids.count(1)


@pytest.fixture(scope="module")
def pair():
    return toy_pair()


def _ddk_run(pair, tmp_path, name, **kwargs):
    teacher_state, student_state = pair
    settings = dict(
        max_steps=40, per_device_train_batch_size=8, learning_rate=3e-3, lr_scheduler_type="constant",
        ddk_update_steps=10, ddk_eval_batches=2, per_device_eval_batch_size=16, output_dir=str(tmp_path / name),
    )  # fmt: skip
    settings.update(kwargs)
    resume = settings.pop("resume", None)
    trainer = settings.pop("trainer_class", DistillationTrainer)(
        model=make_student(student_state),
        teacher_model=make_teacher(teacher_state),
        args=make_config(tmp_path, **settings),
        train_dataset=domain_datasets(256, seed=0),
        ddk_eval_dataset=domain_datasets(32, seed=1),
        data_collator=PadCollator(),
    )
    trainer.seen = []
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.mark.parametrize("gap", ["log_perplexity", "perplexity"])
def test_ddk_favours_the_lagging_domain_and_closes_its_gap_faster_than_uniform(pair, tmp_path, gap):
    ddk = _ddk_run(pair, tmp_path, "ddk", **({} if gap == "log_perplexity" else {"ddk_gap": gap}))
    assert ddk.args.ddk_gap == gap  # log_perplexity: the config's default
    first = ddk.ddk_callback.updates[0]
    # the paper's perplexity ratio, exp(CE_S) / exp(CE_T), or its log
    pairs = zip(first["student_losses"], ddk.ddk_callback.teacher_losses, strict=True)
    ratios = [math.exp(s - t) if gap == "perplexity" else s - t for s, t in pairs]
    assert max(range(3), key=ratios.__getitem__) == 2 and ratios[2] > (3 if gap == "perplexity" else math.log(3))
    assert max(range(3), key=first["weights"].__getitem__) == 2  # the student has never seen "c"
    teacher = ddk.ddk_callback.teacher_losses
    assert first["weights"] == pytest.approx(ddk_update([1 / 3] * 3, first["student_losses"], teacher, gap=gap))
    logged = [h for h in ddk.state.log_history if "ddk/weight/c" in h]
    assert [h["step"] for h in logged] == [10, 20, 30]  # not at the last step (40): its weights would not be used
    assert logged[0]["ddk/ratio/c"] == pytest.approx(ratios[2])

    uniform = _ddk_run(
        pair, tmp_path, "uniform", ddk_alpha=0.0, ddk_gap=gap
    )  # alpha 0: same evaluations, mixture stays uniform
    assert uniform.domain_sampler.weights == pytest.approx([1 / 3] * 3)
    final_ddk = ddk.ddk_callback.domain_losses(ddk.model)[2] / ddk.ddk_callback.teacher_losses[2]
    final_uniform = uniform.ddk_callback.domain_losses(uniform.model)[2] / uniform.ddk_callback.teacher_losses[2]
    assert final_ddk < final_uniform, (final_ddk, final_uniform)


def test_resume_after_a_ddk_update_reproduces_weights_and_losses(pair, tmp_path):
    full = _ddk_run(pair, tmp_path, "full", max_steps=12, ddk_update_steps=4, save_strategy="steps", save_steps=6)
    assert len(full.domain_sampler.history) == 3 and full.domain_sampler.weights[2] > 0.5  # updates at 4 and 8
    resumed = _ddk_run(
        pair, tmp_path, "resumed", max_steps=12, ddk_update_steps=4, resume=str(tmp_path / "full" / "checkpoint-6")
    )
    assert resumed.domain_sampler.history == full.domain_sampler.history
    assert resumed.ddk_callback.teacher_losses == full.ddk_callback.teacher_losses
    for a, b in zip(full.ddk_callback.updates, resumed.ddk_callback.updates, strict=True):
        assert (a["step"], a["position"]) == (b["step"], b["position"])
        assert a["student_losses"] == pytest.approx(b["student_losses"], rel=1e-6)
    full_logs = [h for h in full.state.log_history if "loss" in h and h["step"] > 6]
    resumed_logs = [h for h in resumed.state.log_history if "loss" in h and h["step"] > 6]
    assert [h["step"] for h in resumed_logs] == [7, 8, 9, 10, 11, 12]
    for a, b in zip(full_logs, resumed_logs, strict=True):
        for key in ("loss", "loss_ce", "loss_kd"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)
        assert [a[f"domain_share/{d}"] for d in DOMAINS] == [b[f"domain_share/{d}"] for d in DOMAINS]


def test_with_dataloader_workers_the_recorded_history_is_the_stream_that_was_trained_on(pair, tmp_path):
    trainer = _ddk_run(
        pair, tmp_path, "workers", max_steps=12, ddk_update_steps=4, dataloader_num_workers=2,
        trainer_class=_Recorder,
    )  # fmt: skip
    history = trainer.domain_sampler.history
    assert len(history) == 3 and history[1][1][2] > 0.5
    # prefetching workers drew ahead of training; the changes were placed after every draw already made
    assert all(u["position"] >= 8 * u["step"] + 8 for u in trainer.ddk_callback.updates)
    seen = [ids for ids, _ in trainer.seen]
    assert seen == [trainer.domain_sampler.draw_domains(8 * k, 8 * k + 8) for k in range(12)]


def test_a_ddk_checkpoint_of_the_previous_release_resumes_exactly(tmp_path):
    """checkpoint-3 of a 6-step DDK run written by hf_distill 0.1 (its trainer held the DDK state itself): this
    release restores that state through the ExportableState path and continues as 0.1 did (0.1's DDK compared
    cross-entropies: `ddk_gap="cross_entropy"`; the perplexities are logged in addition)."""
    from pathlib import Path

    checkpoint = Path(__file__).parent / "data" / "checkpoint-0.1-ddk"
    expected = json.loads((checkpoint / "hf_distill_0.1_continuation.json").read_text())
    # 0.1 also updated at the last step (6), whose weights were never used; this release skips that update
    expected["updates"] = [u for u in expected["updates"] if u["step"] < 6]
    expected["history"] = expected["history"][:-1]
    expected["logs"] = [h for h in expected["logs"] if not (h["step"] == 6 and "ddk/weight/a" in h)]
    trainer = small_ddk_trainer(  # eager: 0.1 computed op by op (see test_regression.py on the compiled kernel)
        tmp_path, save_strategy="steps", save_steps=3, ddk_gap="cross_entropy", logit_kernel="eager"
    )
    trainer.train(resume_from_checkpoint=str(checkpoint))
    history = json.loads(json.dumps(trainer.domain_sampler.history))
    assert [position for position, _ in history] == [position for position, _ in expected["history"]]
    for (_, got), (_, want) in zip(history, expected["history"], strict=True):  # float rounding of the loss kernel
        assert got == pytest.approx(want, rel=1e-6)
    updates = trainer.ddk_callback.updates
    assert [(u["step"], u["position"]) for u in updates] == [(u["step"], u["position"]) for u in expected["updates"]]
    for got, want in zip(updates, expected["updates"], strict=True):
        assert got["weights"] == pytest.approx(want["weights"], rel=1e-6)
    logs = [h for h in trainer.state.log_history if h.get("step", 0) > 3 and "train_runtime" not in h]
    new = ("/ppl_", "ddk/seconds", "/se_", "/ratio_se/", "/tokens/")  # logged since 0.3
    assert [sorted(k for k in h if not any(n in k for n in new)) for h in logs] == [
        sorted(h) for h in expected["logs"]
    ]
    for got, want in zip(logs, expected["logs"], strict=True):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-5), (want["step"], key)


def _perplexity(model, dataset):
    """exp of the mean token cross-entropy over every example, one example at a time with the model's own loss (an
    independent reference for the evaluator: no padding, no batching)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for row in dataset["input_ids"]:
            ids = torch.tensor([row])
            total += float(model(input_ids=ids, labels=ids).loss) * (len(row) - 1)
            count += len(row) - 1
    return math.exp(total / count)


@pytest.mark.parametrize("gap", ["perplexity", "cross_entropy"])
def test_logged_weights_are_the_papers_update_on_independently_measured_perplexities(pair, tmp_path, gap):
    """Two updates (alpha 0.5): the students of checkpoint-10 and checkpoint-20 (saved right after each update) and
    the teacher are measured by hand on the whole validation sets (ddk_eval_batches x eval batch = 32 examples), and
    the update is recomputed from those perplexities, with numpy in float64, exactly as the paper writes it."""
    trainer = _ddk_run(pair, tmp_path, gap, max_steps=21, ddk_update_steps=10, save_strategy="steps", save_steps=10,
                       ddk_gap=gap)  # fmt: skip
    validation = domain_datasets(32, seed=1)
    teacher = make_teacher(pair[0]).eval()
    ppl_t = np.array([_perplexity(teacher, validation[d]) for d in DOMAINS], dtype=np.float64)
    weights = np.full(3, 1 / 3)
    logged = [h for h in trainer.state.log_history if "ddk/weight/a" in h]
    assert [h["step"] for h in logged] == [10, 20]
    for log in logged:
        student = AutoModelForCausalLM.from_pretrained(tmp_path / gap / f"checkpoint-{log['step']}").eval()
        ppl_s = np.array([_perplexity(student, validation[d]) for d in DOMAINS], dtype=np.float64)
        ratio = ppl_s / ppl_t if gap == "perplexity" else np.log(ppl_s) / np.log(ppl_t)
        g = np.exp(ratio)  # DDK eq. 4: the domain discrepancy factor
        psi = weights * g / np.sum(weights * g)
        weights = 0.5 * psi + 0.5 / 3  # eq. 5, alpha = 0.5
        for i, name in enumerate(DOMAINS):
            assert log[f"ddk/ppl_S/{name}"] == pytest.approx(ppl_s[i], rel=1e-4)
            assert log[f"ddk/ppl_T/{name}"] == pytest.approx(ppl_t[i], rel=1e-4)
            assert log[f"ddk/ratio/{name}"] == pytest.approx(ratio[i], rel=1e-4)
            assert log[f"ddk/weight/{name}"] == pytest.approx(weights[i], rel=1e-4)
    assert trainer.domain_sampler.weights == pytest.approx(list(weights), rel=1e-4)


def test_under_sharded_parameters_every_process_runs_as_many_evaluation_batches_and_fillers_count_nothing(
    tmp_path, monkeypatch
):
    # ZeRO-3 / FSDP gather parameters in every forward: a process that ran fewer batches would leave the others waiting
    import copy
    from types import SimpleNamespace

    trainer = small_ddk_trainer(tmp_path)
    evaluator = trainer.domain_evaluator
    data = {name: domain_datasets(40, seed=2)[name] for name in DOMAINS}  # 40 rows, batch 8: 5 batches, 3 + 2

    def collated(rank, sharded):
        monkeypatch.setattr("hf_distill.ddk.evaluator.shards_parameters", lambda accelerator: sharded)
        shard = copy.copy(evaluator)
        shard.accelerator = SimpleNamespace(num_processes=2, process_index=rank, device=torch.device("cpu"))
        return shard.collate(data)

    assert [len(b) for b in collated(0, False)] == [3] * 3 and [len(b) for b in collated(1, False)] == [2] * 3
    own, padded = collated(1, False), collated(1, True)
    assert [len(b) for b in padded] == [len(b) for b in collated(0, True)] == [3] * 3
    for kept, batches in zip((d.batches for d in own), (d.batches for d in padded), strict=True):
        for a, b in zip(kept, batches[: len(kept)], strict=True):  # this process's own batches first, unchanged
            assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
        filler = batches[-1]
        assert filler["input_ids"].shape[0] == 8 and (filler["labels"] == -100).all()
        loss, count = evaluator.token_cross_entropy(trainer.model, filler)
        assert loss.item() == 0.0 and count.item() == 0
