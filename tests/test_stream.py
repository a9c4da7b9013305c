"""The streaming path: `DomainStream` over per-domain sources, against naive references (packing, the weighted
draw, the split among processes), its exact resume, and the trainer reading it (resume equality, static mixture,
errors). The 2-process run is in test_distributed.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import make_config
from datasets import Dataset, IterableDataset
from toy_domains import DOMAINS, domain_datasets, domain_rows, toy_trainer

from hf_distill import DomainMixture, DomainStream
from hf_distill.training.trainer import STREAM_STATE

EOS = 0


def _rows(domain: str, n: int, seed: int = 0) -> list[list[int]]:
    """`n` token rows of varied length (3 to 11), tokens of the domain's own range (so blocks show their domain)."""
    rng = random.Random(f"{domain}-{seed}")
    base = 1 + 30 * DOMAINS.index(domain)
    return [[base + rng.randrange(30) for _ in range(rng.randrange(3, 12))] for _ in range(n)]


def _naive_blocks(rows: list[list[int]], block: int, count: int) -> list[list[int]]:
    """The first `count` blocks of the domain's endless token stream: its rows, EOS after each, again and again (a
    one-shard source keeps its order from pass to pass; datasets reorders the shards of a larger one each pass)."""
    tokens: list[int] = []
    while len(tokens) < block * count:
        for row in rows:
            tokens += [*row, EOS]
    return [tokens[i * block : (i + 1) * block] for i in range(count)]


def _counted(rows: list[list[int]], reads: dict[str, int], name: str, shards: int = 1) -> IterableDataset:
    """A streaming source of `rows` that counts the examples it yields (reads after any resume skip)."""

    def count(example):
        reads[name] = reads.get(name, 0) + 1
        return example

    return Dataset.from_dict({"input_ids": rows}).to_iterable_dataset(num_shards=shards).map(count)


def test_each_domain_is_its_rows_packed_in_order_and_the_domains_follow_the_mixture():
    rows = {d: _rows(d, 9) for d in DOMAINS}
    weights = [0.5, 0.3, 0.2]
    stream = DomainStream(
        {"b": Dataset.from_dict({"input_ids": rows["b"]}),  # map-style and streaming sources mix
         "a": Dataset.from_dict({"input_ids": rows["a"]}).to_iterable_dataset(),
         "c": Dataset.from_dict({"input_ids": rows["c"]}).to_iterable_dataset(num_shards=1)},
        block_size=8, eos_token_id=EOS, group_size=2,
    )  # fmt: skip
    stream.start(seed=5, weights=weights)
    drawn = [example for _, example in zip(range(300), stream, strict=False)]
    assert [DOMAINS.index(e["domain"]) for e in drawn] == DomainMixture(DOMAINS, weights, seed=5).draw_domains(0, 300)
    for domain in DOMAINS:
        blocks = [e["input_ids"] for e in drawn if e["domain"] == domain]
        assert len(blocks) > 40  # several passes over the 9 rows: the unfinished block carries into the next pass
        assert blocks == _naive_blocks(rows[domain], 8, len(blocks))
    assert all(e["labels"] == e["input_ids"] and e["attention_mask"] == [1] * 8 for e in drawn)


@pytest.mark.parametrize("shards", [4, 3])  # whole shards per process, or every other example
def test_processes_share_the_draws_and_each_reads_its_own_part(shards):
    rows = {d: [[uid] * 4 for uid in range(100 * i, 100 * i + 12)] for i, d in enumerate(DOMAINS)}
    sources = {d: Dataset.from_dict({"input_ids": r}).to_iterable_dataset(num_shards=shards) for d, r in rows.items()}
    mixture = DomainMixture(DOMAINS, [0.4, 0.4, 0.2], seed=1)
    parts = []
    for rank in (0, 1):
        stream = DomainStream(sources, block_size=4)
        stream.start(seed=1, weights=[0.4, 0.4, 0.2], rank=rank, processes=2, batch_size=3)
        parts.append([example for _, example in zip(range(12), stream, strict=False)])
    # global order: micro-batch 0 of rank 0, micro-batch 0 of rank 1, micro-batch 1 of rank 0, ...
    merged = [e for k in range(4) for rank in (0, 1) for e in parts[rank][3 * k : 3 * k + 3]]
    assert [DOMAINS.index(e["domain"]) for e in merged] == mixture.draw_domains(0, 24)
    for domain in DOMAINS:  # each row of a domain is read by one process only, until that process's part runs out
        firsts = []
        for part in parts:
            uids = [e["input_ids"][0] for e in part if e["domain"] == domain]
            firsts.append(uids[: len(set(uids))])
        assert not set(firsts[0]) & set(firsts[1])
        assert set(firsts[0]) | set(firsts[1]) <= {r[0] for r in rows[domain]}


def test_a_restored_stream_continues_exactly_and_rereads_at_most_one_group_per_domain():
    rows = {d: _rows(d, 40, seed=2) for d in DOMAINS}
    reference = DomainStream({d: Dataset.from_dict({"input_ids": r}) for d, r in rows.items()}, 8, eos_token_id=EOS)
    reference.start(seed=3, rank=1, processes=2, batch_size=4)
    expected = [e for _, e in zip(range(200), reference, strict=False)]

    def counted_stream(reads):
        sources = {d: _counted(r, reads, d, shards=2) for d, r in rows.items()}
        return DomainStream(sources, 8, eos_token_id=EOS, group_size=5)

    reads: dict[str, int] = {}
    stream = counted_stream(reads)
    mixture = stream.start(seed=3, rank=1, processes=2, batch_size=4)
    first = [e for _, e in zip(range(90), stream, strict=False)]
    reads_before = sum(reads.values())
    mixture.set_weights([0.8, 0.1, 0.1])  # a DDK update: the rest of the stream follows the new weights
    state = json.loads(json.dumps(mixture.process_state()))  # as written to the checkpoint
    rest = [e for _, e in zip(range(110), stream, strict=False)]
    reads_after = sum(reads.values()) - reads_before

    reads.clear()
    resumed = counted_stream(reads)
    resumed.start(seed=3, rank=1, processes=2, batch_size=4).load_process_state(state)
    assert [e for _, e in zip(range(110), resumed, strict=False)] == rest
    assert first == expected[:90] and first + rest != expected  # the weight change took effect
    # no replay of the 90 examples: the current group (5 rows) of each domain is re-read, then only what is drawn
    assert reads_before > 3 * 5 and sum(reads.values()) <= reads_after + 3 * 5


def test_a_restored_stream_refuses_another_process_layout():
    stream = DomainStream({d: Dataset.from_dict({"input_ids": domain_rows(d, 8)}) for d in DOMAINS}, 16)
    state = stream.start(rank=0, processes=2, batch_size=4).process_state()
    with pytest.raises(
        ValueError, match="process 0 of 2 with per_device_train_batch_size=4.*same number of processes"
    ):
        stream.start(rank=0, processes=1, batch_size=4).load_process_state(state)


def _stream_trainer(tmp_path, name, reads=None, **kwargs):
    """6 steps of 4 blocks (one 16-token row each) on a stream of the toy domains; DDK every 2 steps."""
    sources = {d: _counted(domain_rows(d, 40, seed=0), {} if reads is None else reads, d) for d in DOMAINS}
    settings = dict(
        max_steps=6, ddk_update_steps=2, ddk_eval_batches=2, per_device_eval_batch_size=4,
        output_dir=str(tmp_path / name),
    )  # fmt: skip
    args = make_config(tmp_path, **{**settings, **kwargs})
    return toy_trainer(args, DomainStream(sources, block_size=16, group_size=2))


def _train_logs(trainer, after=0):
    return [h for h in trainer.state.log_history if "loss" in h and h["step"] > after]


def test_a_resumed_streaming_ddk_run_equals_the_uninterrupted_one_without_rereading_the_data(tmp_path):
    full_reads: dict[str, int] = {}
    full = _stream_trainer(tmp_path, "full", reads=full_reads, save_strategy="steps", save_steps=3)
    full.train()
    assert sum(full_reads.values()) >= 6 * 4
    checkpoint = tmp_path / "full" / "checkpoint-3"
    saved = json.loads((checkpoint / STREAM_STATE.format(0)).read_text())
    assert saved["produced"] == 3 * 4 and len(saved["mixture"]["history"]) == 2  # 3 steps of 4; one DDK update
    reads: dict[str, int] = {}
    resumed = _stream_trainer(tmp_path, "resumed", reads=reads)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.args.ignore_data_skip is False  # set only while training
    assert resumed.domain_sampler.history == full.domain_sampler.history and len(full.domain_sampler.history) == 3
    assert [u["weights"] for u in resumed.ddk_callback.updates] == [u["weights"] for u in full.ddk_callback.updates]
    full_logs, resumed_logs = _train_logs(full, 3), _train_logs(resumed, 3)
    assert [h["step"] for h in resumed_logs] == [4, 5, 6]
    for a, b in zip(full_logs, resumed_logs, strict=True):
        for key in ("loss", "loss_ce", "loss_kd", *(f"domain_share/{d}" for d in DOMAINS)):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)
    # 12 blocks (one row each) trained after the resume, plus the current group (2 rows) of each domain re-read
    assert sum(reads.values()) <= 3 * 4 + 3 * 2


def test_resuming_a_stream_with_another_batch_size_is_refused_before_any_step(tmp_path):
    """The draws are laid out by processes x batch size: a resume with another batch size cannot continue them."""
    full = _stream_trainer(tmp_path, "full", save_strategy="steps", save_steps=3)
    full.train()
    checkpoint = str(tmp_path / "full" / "checkpoint-3")
    other = _stream_trainer(tmp_path, "other", per_device_train_batch_size=2)
    expected = (
        f"resume_from_checkpoint={checkpoint!r}: the checkpoint's training stream was read as process 0 of 1 with "
        "per_device_train_batch_size=4; this run is process 0 of 1 with 2: resume with the same number of processes "
        "and batch size."
    )
    with pytest.raises(ValueError) as error:
        other.check_resume(checkpoint)
    assert str(error.value) == expected
    with pytest.raises(ValueError, match="per_device_train_batch_size=4; this run is process 0 of 1 with 2"):
        other.train(resume_from_checkpoint=checkpoint)
    assert other.state.global_step == 0 and not any((tmp_path / "other").iterdir())  # nothing written


def test_a_static_stream_mixture_follows_the_initial_weights_without_evaluation(tmp_path):
    trainer = _stream_trainer(
        tmp_path, "static", ddk_update_steps=None, ddk_initial_weights={"a": 0.0, "b": 1.0, "c": 0.0}
    )
    trainer.train()
    assert trainer.ddk_callback is None
    assert all(h["domain_share/b"] == 1.0 for h in _train_logs(trainer))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_steps": -1, "num_train_epochs": 1}, "max_steps=-1: a DomainStream training set has no length"),
        ({"dataloader_num_workers": 2}, "dataloader_num_workers=2: a DomainStream is read in the training process"),
    ],
)
def test_stream_settings_are_checked_before_training(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        _stream_trainer(tmp_path, "bad", **settings)


def test_resuming_a_stream_from_a_checkpoint_without_its_position_is_refused(tmp_path):
    checkpoint = tmp_path / "plain" / "checkpoint-2"
    args = make_config(tmp_path, max_steps=2, output_dir=str(checkpoint.parent), save_strategy="steps", save_steps=2)
    toy_trainer(args, domain_datasets(8, seed=0)).train()  # a map-style run
    stream = _stream_trainer(tmp_path, "stream", ddk_update_steps=None)
    with pytest.raises(ValueError, match=r"has no domain_stream_0\.json"):
        stream.train(resume_from_checkpoint=str(checkpoint))
    assert Path(checkpoint).is_dir()
