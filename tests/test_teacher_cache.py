"""Teacher-output cache: the sparse top-k loss against references, the cache files, training from the cache equal to
training with the live teacher at k = vocab (with padding), and clear errors for a cache that does not match."""

import json
import pickle
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import PadCollator, launch_two, make_config
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_distill import DistillationConfig, DistillationTrainer, TeacherCache, build_teacher_cache
from hf_distill.losses import logit_distillation_loss, sparse_distillation_loss

DEMO = Path(__file__).resolve().parents[1] / "hf_distill" / "demo"
DIVERGENCES = ["forward_kl", "reverse_kl", "jsd"]


# ---- the sparse loss ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_top_k_equal_to_vocab_is_the_full_divergence_in_value_and_gradient(divergence):
    torch.manual_seed(0)
    student = torch.randn(3, 5, 40, dtype=torch.float64).float().requires_grad_(True)
    teacher = 2 * torch.randn(3, 5, 40)
    mask = torch.rand(3, 5) > 0.3
    values, indices = F.log_softmax(teacher / 2.0, -1).topk(40, -1)
    sparse = sparse_distillation_loss(student, values, indices, mask, divergence, 2.0, 0.3, chunk_size=4)
    full = logit_distillation_loss(student, teacher, mask, divergence, 2.0, 0.3, chunk_size=4)
    (g_sparse,), (g_full,) = torch.autograd.grad(sparse, student), torch.autograd.grad(full, student)
    torch.testing.assert_close(sparse, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_sparse, g_full, rtol=1e-5, atol=1e-6)


def _coarsened_reference(student_row, teacher_row, k, temperature, divergence, beta):
    """One token by hand in float64: k + 1 outcomes (the teacher's top-k and one tail outcome)."""
    s = F.log_softmax(student_row.double() / temperature, -1).exp()
    t = F.log_softmax(teacher_row.double() / temperature, -1).exp()
    top = torch.argsort(t, descending=True)[:k]
    rest = torch.ones_like(t, dtype=torch.bool)
    rest[top] = False
    p = torch.cat([t[top], t[rest].sum().clamp_min(1e-8).reshape(1)])
    q = torch.cat([s[top], s[rest].sum().reshape(1)])

    def kl(a, b):
        return sum(float(x * (torch.log(x) - torch.log(y))) for x, y in zip(a, b, strict=True) if x > 0)

    if divergence == "forward_kl":
        return kl(p, q)
    if divergence == "reverse_kl":
        return kl(q, p)
    m = beta * p + (1 - beta) * q
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_top_k_below_vocab_matches_a_hand_computed_tail_bucket_and_bounds_the_full_divergence(divergence):
    torch.manual_seed(1)
    student, teacher, k, temperature = torch.randn(6, 30), 3 * torch.randn(6, 30), 5, 1.5
    values, indices = F.log_softmax(teacher / temperature, -1).topk(k, -1)
    per_token = [
        float(
            sparse_distillation_loss(
                student[i : i + 1], values[i : i + 1], indices[i : i + 1], None, divergence, temperature, 0.4
            )
        )  # fmt: skip
        for i in range(6)
    ]
    for i in range(6):
        reference = temperature**2 * _coarsened_reference(student[i], teacher[i], k, temperature, divergence, 0.4)
        assert per_token[i] == pytest.approx(reference, rel=1e-4, abs=1e-6)
        full = float(
            logit_distillation_loss(student[i : i + 1], teacher[i : i + 1], None, divergence, temperature, 0.4)
        )
        assert per_token[i] <= full + 1e-5  # coarsening never increases a divergence
    student.requires_grad_(True)
    (grad,) = torch.autograd.grad(sparse_distillation_loss(student, values, indices, None, divergence, 1.5), student)
    assert torch.isfinite(grad).all()


# ---- building and reading a cache ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo():
    tokenizer = AutoTokenizer.from_pretrained(DEMO / "student")
    texts = [line for line in (DEMO / "corpus" / "prose.jsonl").read_text().splitlines()[:24]]
    rows = [tokenizer(json.loads(t)["text"], add_special_tokens=False)["input_ids"][: 12 + i % 9] for i, t in
            enumerate(texts)]  # fmt: skip
    return tokenizer, Dataset.from_dict({"input_ids": rows})


def _teacher():
    return AutoModelForCausalLM.from_pretrained(DEMO / "teacher").eval()


def test_cache_files_hold_the_teachers_top_k_for_every_attended_token(tmp_path, demo):
    tokenizer, data = demo
    teacher = _teacher()
    manifest = build_teacher_cache(teacher, data, str(tmp_path / "c"), tokenizer, k=7, temperature=2.0,
                                   batch_size=5, examples_per_shard=10)  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "manifest.json", "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors",
    ]  # fmt: skip
    assert manifest["k"] == 7 and manifest["temperature"] == 2.0 and manifest["vocab_size"] == len(tokenizer)
    assert manifest["teacher"].endswith("teacher") and len(manifest["tokenizer_hash"]) == 64
    assert manifest["num_tokens"] == sum(len(r) for r in data["input_ids"])
    cache = TeacherCache(str(tmp_path / "c"))
    for i in (0, 9, 10, 23):  # first/last of a shard
        ids = torch.tensor([data[i]["input_ids"]])
        with torch.no_grad():
            expected = F.log_softmax(teacher(input_ids=ids).logits[0] / 2.0, -1).topk(7, -1)
        values, indices = cache.lookup(i)
        torch.testing.assert_close(values, expected.values, rtol=1e-5, atol=1e-5)
        assert torch.equal(indices.long(), expected.indices)


def test_loading_never_unpickles(tmp_path, demo, monkeypatch):
    tokenizer, data = demo
    build_teacher_cache(_teacher(), data, str(tmp_path / "c"), tokenizer, k=4)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    cache = TeacherCache(str(tmp_path / "c"))
    assert cache.lookup(3)[0].shape == (len(data[3]["input_ids"]), 4)


@pytest.mark.slow
def test_a_two_process_build_equals_the_one_process_build_and_an_interrupted_one_is_refused(tmp_path):
    script = Path(__file__).parent / "scripts" / "cache_build.py"
    launch_two(script, tmp_path / "two", port=29521)
    sys.path.insert(0, str(script.parent))
    from cache_build import cache_rows

    tokenizer = AutoTokenizer.from_pretrained(DEMO / "student")
    single = build_teacher_cache(_teacher(), cache_rows(tokenizer), str(tmp_path / "one"), tokenizer, k=5,
                                 batch_size=4, examples_per_shard=5)  # fmt: skip
    double = json.loads((tmp_path / "two" / "cache" / "manifest.json").read_text())
    assert {k: v for k, v in double.items() if k != "shards"} == {k: v for k, v in single.items() if k != "shards"}
    # each process wrote its own shards of its contiguous share (examples 0-10 and 11-22); no record is left over
    assert [(s["file"][:10], s["first_example"]) for s in double["shards"]] == [
        ("shard-r000", 0), ("shard-r000", 5), ("shard-r000", 10), ("shard-r001", 11), ("shard-r001", 16),
        ("shard-r001", 21),
    ]  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "two" / "cache").iterdir() if not p.name.startswith("shard-")) == [
        "manifest.json"
    ]
    one, two = TeacherCache(str(tmp_path / "one")), TeacherCache(str(tmp_path / "two" / "cache"))
    for i in range(single["num_examples"]):
        (v1, i1), (v2, i2) = one.lookup(i), two.lookup(i)
        torch.testing.assert_close(v2, v1, rtol=1e-5, atol=1e-5)
        assert torch.equal(i1, i2), i

    failed = launch_two(script, tmp_path / "stopped", "fail", port=29522, check=False)
    assert failed.returncode != 0 and "process 1 stopped before writing its record" in failed.stderr
    assert any((tmp_path / "stopped" / "cache").glob("shard-r000-*.safetensors"))  # shards, but no manifest
    with pytest.raises(ValueError, match="has no manifest.json: build it with build_teacher_cache"):
        TeacherCache(str(tmp_path / "stopped" / "cache"))


def test_an_existing_directory_is_not_overwritten(tmp_path, demo):
    tokenizer, data = demo
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not empty"):
        build_teacher_cache(_teacher(), data, str(tmp_path / "c"), tokenizer, k=4)
    assert (tmp_path / "c" / "keep.txt").read_text() == "mine"


# ---- training from the cache --------------------------------------------------------------------------------------


def _train(tmp_path, name, data, tokenizer, **kwargs):
    settings = dict(max_steps=4, per_device_train_batch_size=6, learning_rate=3e-3, alpha_ce=0.5, gamma=1.0,
                    temperature=2.0, logit_loss="logits")  # fmt: skip
    args = make_config(tmp_path / name, **{**settings, **kwargs})
    student = AutoModelForCausalLM.from_pretrained(DEMO / "student")
    teacher = None if "teacher_cache" in kwargs else _teacher()
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                                  data_collator=PadCollator(), processing_class=tokenizer)  # fmt: skip
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss_kd" in h]
    return logs, {k: v.detach().clone() for k, v in student.state_dict().items()}


def test_training_from_the_cache_at_k_vocab_equals_training_with_the_live_teacher(tmp_path, demo):
    tokenizer, data = demo  # uneven lengths: the collator pads, the cache fills only the attended positions
    build_teacher_cache(_teacher(), data, str(tmp_path / "cache"), tokenizer, k=len(tokenizer), temperature=2.0)
    # plain SGD: weights differ by lr x the gradient difference (Adam's first steps amplify float noise in near-zero
    # gradients to +-lr, which no tolerance separates from a real difference)
    sgd = dict(optim="sgd", learning_rate=0.5)
    live_logs, live = _train(tmp_path, "live", data, tokenizer, **sgd)
    cached_logs, cached = _train(tmp_path, "cached", data, tokenizer, teacher_cache=str(tmp_path / "cache"), **sgd)
    assert len(live_logs) == len(cached_logs) == 4
    for a, b in zip(live_logs, cached_logs, strict=True):
        for key in ("loss", "loss_ce", "loss_kd"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (key, a, b)
    for key, value in live.items():
        torch.testing.assert_close(cached[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_training_from_a_top_k_cache_runs_and_its_loss_is_below_the_full_one(tmp_path, demo):
    tokenizer, data = demo
    build_teacher_cache(_teacher(), data, str(tmp_path / "cache"), tokenizer, k=8, temperature=2.0)
    live_logs, _ = _train(tmp_path, "live", data, tokenizer)
    cached_logs, _ = _train(tmp_path, "cached", data, tokenizer, teacher_cache=str(tmp_path / "cache"))
    assert cached_logs[0]["loss_kd"] <= live_logs[0]["loss_kd"] + 1e-6  # same first batch, coarsened divergence

    def full_kl(state):  # the full-vocabulary KL to the teacher over all the data
        student = AutoModelForCausalLM.from_pretrained(DEMO / "student")
        if state is not None:
            student.load_state_dict(state)
        teacher, total = _teacher(), 0.0
        with torch.no_grad():
            for row in data["input_ids"]:
                ids = torch.tensor([row])
                total += float(logit_distillation_loss(student(input_ids=ids).logits, teacher(input_ids=ids).logits))
        return total

    # logit KD alone (no CE pulling toward the labels; with the demo assets of 0.3, CE/2 + KD ends at 0.89)
    _, trained = _train(tmp_path, "cached-longer", data, tokenizer, teacher_cache=str(tmp_path / "cache"),
                        max_steps=16, alpha_ce=0.0)  # fmt: skip
    assert full_kl(trained) < 0.8 * full_kl(None)  # the top-8 cache moves the student toward the whole teacher


# ---- a cache that does not match is a clear error -----------------------------------------------------------------


@pytest.fixture
def built(tmp_path, demo):
    tokenizer, data = demo
    build_teacher_cache(_teacher(), data, str(tmp_path / "cache"), tokenizer, k=4, temperature=2.0)
    return str(tmp_path / "cache")


def _trainer_from_cache(tmp_path, cache, data, tokenizer, **kwargs):
    args = make_config(tmp_path / "run", gamma=1.0, temperature=kwargs.pop("temperature", 2.0), teacher_cache=cache)
    return DistillationTrainer(model=AutoModelForCausalLM.from_pretrained(DEMO / "student"), args=args,
                               train_dataset=data, data_collator=PadCollator(), **kwargs)  # fmt: skip


def test_a_cache_of_another_tokenizer_is_refused(tmp_path, demo, built):
    tokenizer, data = demo
    other = AutoTokenizer.from_pretrained(DEMO / "student")
    other.add_tokens(["<another_token>"])
    with pytest.raises(ValueError, match=r"was built with another tokenizer than processing_class .*rebuild"):
        _trainer_from_cache(tmp_path, built, data, other, processing_class=other)
    with pytest.raises(ValueError, match="pass the tokenizer as processing_class"):
        _trainer_from_cache(tmp_path, built, data, tokenizer)


def test_other_temperature_other_data_or_no_manifest_are_refused(tmp_path, demo, built):
    tokenizer, data = demo
    with pytest.raises(ValueError, match=r"at temperature 2.0, but DistillationConfig.temperature=1.0"):
        _trainer_from_cache(tmp_path, built, data, tokenizer, processing_class=tokenizer, temperature=1.0)
    with pytest.raises(ValueError, match=r"train_dataset \(23 examples\) is not the dataset teacher_cache="):
        _trainer_from_cache(tmp_path, built, data.select(range(23)), tokenizer, processing_class=tokenizer)
    (Path(built) / "manifest.json").unlink()
    with pytest.raises(ValueError, match="has no manifest.json"):
        _trainer_from_cache(tmp_path, built, data, tokenizer, processing_class=tokenizer)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_weight": 1.0}, r"hidden_weight=1.0 need a live teacher"),
        ({"gamma": 0.0, "alpha_ce": 1.0}, r"gamma=0 \(no logit KD reads it\)"),
        ({"ddk_update_steps": 10}, r"DDK measures the teacher's loss"),
        ({"logit_loss": "fused"}, r"logit_loss='fused' needs the teacher's output head"),
    ],
)
def test_config_refuses_terms_a_cache_cannot_serve(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillationConfig(output_dir=str(tmp_path), teacher_cache="some/cache", **{"gamma": 1.0, **kwargs})
