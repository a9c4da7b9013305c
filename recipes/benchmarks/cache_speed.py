"""Benchmark (d): training step time from the teacher-output cache vs with the live teacher.

    python recipes/benchmarks/cache_speed.py                    # CPU defaults: teacher ~4x the student, k = 64
    python recipes/benchmarks/cache_speed.py --device cuda --vocab 128000 --batch 8 --length 1024 --k 64 128

A student (Llama `--student_layers` x `--student_hidden`) is distilled with logit KD (`alpha_ce=0.5, gamma=1`) from a
teacher about 4x its size, on random-token batches: once with the live teacher (`logit_loss='auto'`: fused), once
per `--k` from a cache built beforehand with `build_teacher_cache` (its build time and size on disk are printed;
building is a one-off cost shared by every run that reuses the cache). Each run is a fresh process; the median
step time after `--warmup` steps is reported, cache reads in the data collator included.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    StepTimer,
    add_pair_arguments,
    llama,
    machine_line,
    pair_line,
    random_tokens,
    run_case,
    word_level_tokenizer,
)


def one_case(case: dict) -> dict:
    from transformers import default_data_collator

    from hf_distill import DistillationConfig, DistillationTrainer

    data = random_tokens(case["batch"] * case["steps"], case["length"], case["vocab"])
    cache = case.get("cache")
    with tempfile.TemporaryDirectory() as out:
        args = DistillationConfig(
            output_dir=out, max_steps=case["steps"], per_device_train_batch_size=case["batch"], learning_rate=1e-4,
            alpha_ce=0.5, gamma=1.0, teacher_cache=cache, report_to="none", save_strategy="no",
            logging_steps=10_000, disable_tqdm=True, use_cpu=case["device"] == "cpu", dataloader_pin_memory=False,
        )  # fmt: skip
        teacher = None if cache else llama(case["vocab"], case["teacher_hidden"], case["teacher_layers"], seed=2)
        trainer = DistillationTrainer(
            model=llama(case["vocab"], case["student_hidden"], case["student_layers"], seed=1),
            teacher_model=teacher,
            args=args,
            train_dataset=data,
            data_collator=default_data_collator,
            processing_class=word_level_tokenizer(case["vocab"]),
        )
        timer = StepTimer()
        trainer.add_callback(timer)
        trainer.train()
    step = timer.median(case["warmup"])
    return {"step_s": step, "tokens_per_s": case["batch"] * case["length"] / step}


def build(case: dict, k: int, path: str) -> tuple[float, float]:
    """Build the cache of the benchmark's data with `k`; returns (seconds, MB on disk)."""
    from hf_distill import build_teacher_cache

    teacher = llama(case["vocab"], case["teacher_hidden"], case["teacher_layers"], seed=2).to(case["device"])
    data = random_tokens(case["batch"] * case["steps"], case["length"], case["vocab"])
    start = time.perf_counter()
    build_teacher_cache(teacher, data, path, word_level_tokenizer(case["vocab"]), k=k, batch_size=case["batch"])
    seconds = time.perf_counter() - start
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 2**20
    return seconds, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_arguments(parser, teacher_hidden=768)
    parser.add_argument("--k", type=int, nargs="+", default=[64])
    args = parser.parse_args()
    if args.case:
        print(json.dumps(one_case(json.loads(args.case))))
        return
    case = {k: v for k, v in vars(args).items() if k not in ("k", "case", "repeats")}
    print(machine_line(args.device))
    print(pair_line(args))
    with tempfile.TemporaryDirectory() as root:
        builds = {k: build(case, k, os.path.join(root, f"k{k}")) for k in args.k}
        runs: dict[int | None, list[float]] = {None: [], **{k: [] for k in args.k}}
        for _ in range(args.repeats):  # live and cached runs interleaved
            for k in runs:
                extra = {"cache": os.path.join(root, f"k{k}")} if k is not None else {}
                runs[k].append(run_case(__file__, {**case, **extra})["step_s"])
    step = {k: statistics.median(times) for k, times in runs.items()}
    tokens = args.batch * args.length
    print(f"{'run':<14} {'step s':>8} {'tokens/s':>9} {'vs live':>8} {'build s':>8} {'cache MB':>9}")
    print(f"{'live teacher':<14} {step[None]:>8.3f} {tokens / step[None]:>9.0f} {'1.00x':>8}", flush=True)
    for k in args.k:
        seconds, size = builds[k]
        print(f"{f'cache k={k}':<14} {step[k]:>8.3f} {tokens / step[k]:>9.0f} {step[None] / step[k]:>7.2f}x "
              f"{seconds:>8.1f} {size:>9.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
