"""A three-domain toy corpus (disjoint token ranges, a different affine rule per domain) and a teacher/student pair
where the student has never seen domain "c"."""

from __future__ import annotations

import random

import torch
from conftest import PadCollator, make_config, tiny_llama
from datasets import Dataset

DOMAINS = ("a", "b", "c")
_RULES = {"a": (7, 3), "b": (11, 5), "c": (13, 17)}  # x' = (m * x + k) mod 30
_SPAN = 30


def domain_rows(domain: str, n: int, length: int = 16, seed: int = 0, noise: float = 0.1) -> list[list[int]]:
    """`n` sequences of domain `domain`: tokens `1 + 30 * index + x`, `x` following the domain's rule."""
    rng = random.Random(f"{domain}-{seed}")
    index, (m, k) = DOMAINS.index(domain), _RULES[domain]
    rows = []
    for _ in range(n):
        x, row = rng.randrange(_SPAN), []
        for _ in range(length):
            row.append(1 + _SPAN * index + x)
            x = rng.randrange(_SPAN) if rng.random() < noise else (m * x + k) % _SPAN
        rows.append(row)
    return rows


def domain_datasets(n: int, seed: int, domains=DOMAINS) -> dict[str, Dataset]:
    return {d: Dataset.from_dict({"input_ids": domain_rows(d, n, seed=seed)}) for d in domains}


def pretrain(model: torch.nn.Module, domains, steps: int, seed: int, lr: float = 3e-3, batch: int = 16):
    """Plain next-token training on `domains` (equal shares), in place."""
    rows = [r for d in domains for r in domain_rows(d, 256, seed=100 + seed)]
    g = torch.Generator().manual_seed(seed)
    collate = PadCollator()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        pick = torch.randint(len(rows), (batch,), generator=g).tolist()
        loss = model(**collate([{"input_ids": rows[i]} for i in pick])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def toy_pair() -> tuple[dict, dict]:
    """State dicts of a teacher trained on a, b and c and a student trained on a and b only."""
    teacher = pretrain(tiny_llama(hidden=64, layers=4, heads=4, seed=2), DOMAINS, steps=300, seed=0)
    student = pretrain(tiny_llama(hidden=32, layers=2, heads=4, seed=1), ("a", "b"), steps=150, seed=1)
    return teacher.state_dict(), student.state_dict()


def make_teacher(state: dict) -> torch.nn.Module:
    model = tiny_llama(hidden=64, layers=4, heads=4, seed=2)
    model.load_state_dict(state)
    return model


def make_student(state: dict) -> torch.nn.Module:
    model = tiny_llama(hidden=32, layers=2, heads=4, seed=1)
    model.load_state_dict(state)
    return model


def toy_trainer(args, train_dataset, data_collator=None, ddk_eval_dataset=None):
    """A `DistillationTrainer` of the untrained tiny pair (student 2 x 16, teacher 4 x 32) on `train_dataset`, with
    DDK's held-out data of the three toy domains when `args` turns DDK on."""
    from hf_distill import DistillationTrainer

    if ddk_eval_dataset is None and args.ddk_update_steps is not None:
        ddk_eval_dataset = domain_datasets(12, seed=1)
    return DistillationTrainer(
        model=tiny_llama(hidden=16, seed=1), teacher_model=tiny_llama(hidden=32, layers=4, seed=2), args=args,
        train_dataset=train_dataset, ddk_eval_dataset=ddk_eval_dataset, data_collator=data_collator or PadCollator(),
    )  # fmt: skip


def small_ddk_trainer(tmp_path, **settings):
    """DDK on the three toy domains with untrained tiny models: an update every 2 of 6 steps (`settings` override)."""
    args = make_config(tmp_path, **{
        "max_steps": 6, "per_device_train_batch_size": 8, "learning_rate": 3e-3, "ddk_update_steps": 2,
        "ddk_eval_batches": 2, "per_device_eval_batch_size": 8, "gamma": 0.5, "temperature": 2.0, **settings,
    })  # fmt: skip
    return toy_trainer(args, domain_datasets(64, seed=0), ddk_eval_dataset=domain_datasets(16, seed=1))
