"""Benchmark (c): share of wall time spent in DDK's per-domain evaluation.

    python recipes/benchmarks/ddk_overhead.py                       # K=100, 8 eval batches per domain, 4 domains
    python recipes/benchmarks/ddk_overhead.py --steps 400 --update_steps 50 100 200 --eval_batches 4 8
    python recipes/benchmarks/ddk_overhead.py --eval_batch 32 --eval_batches 2   # same examples, larger batches

A Llama teacher (4 layers, width 256) and student (2 layers, width 128) on four synthetic domains train with logit
KD; `DDKCallback.update` is timed and compared with the whole `trainer.train()` wall time. The teacher's losses are
measured once (at the first update); the table splits the DDK time into that one-time part and the student's part,
which recurs every K steps (its share is what a long run converges to).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.trainer_callback import PrinterCallback

from hf_distill import DDKCallback, DistillationConfig, DistillationTrainer

VOCAB = 512


def _llama(hidden: int, layers: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def _domains(n: int, length: int, seed: int) -> dict[str, Dataset]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for d in range(4):  # each domain: its own quarter of the vocabulary
        ids = torch.randint(d * VOCAB // 4, (d + 1) * VOCAB // 4, (n, length), generator=g)
        out[f"domain{d}"] = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    return out


def run(
    steps: int, update_steps: int, eval_batches: int, batch: int, length: int, eval_batch: int
) -> tuple[float, float, float]:
    """`(train seconds, DDK seconds, of which the teacher's one-time evaluation)`."""
    spent, teacher = [0.0], [0.0]
    original, domain_estimates = DDKCallback.update, DDKCallback.domain_estimates

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    def timed_estimates(self, model, *args, **kwargs):
        start = time.perf_counter()
        try:
            return domain_estimates(self, model, *args, **kwargs)
        finally:
            if model is self.parts.teacher:
                teacher[0] += time.perf_counter() - start

    DDKCallback.update, DDKCallback.domain_estimates = timed, timed_estimates
    try:
        with tempfile.TemporaryDirectory() as out:
            args = DistillationConfig(
                output_dir=out, max_steps=steps, per_device_train_batch_size=batch,
                per_device_eval_batch_size=eval_batch, ddk_update_steps=update_steps, ddk_eval_batches=eval_batches,
                ddk_eval_tokens=None,  # sized by the batch count (every example of the held-out sets)
                report_to="none", save_strategy="no", logging_steps=50, disable_tqdm=True, use_cpu=True,
            )  # fmt: skip
            trainer = DistillationTrainer(
                model=_llama(128, 2, 1),
                teacher_model=_llama(256, 4, 2),
                args=args,
                train_dataset=_domains(4 * steps, length, 0),
                ddk_eval_dataset=_domains(eval_batch * eval_batches, length, 1),
            )
            trainer.remove_callback(PrinterCallback)  # keep the output to the table
            start = time.perf_counter()
            trainer.train()
            total = time.perf_counter() - start
    finally:
        DDKCallback.update, DDKCallback.domain_estimates = original, domain_estimates
    return total, spent[0], teacher[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--update_steps", type=int, nargs="+", default=[100])
    parser.add_argument("--eval_batches", type=int, nargs="+", default=[8])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--eval_batch", type=int, default=None, help="evaluation batch size (default: --batch)")
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()
    import transformers

    print(f"machine: {platform.node()} | cpu ({platform.machine()}, {torch.get_num_threads()} threads) | torch "
          f"{torch.__version__} | transformers {transformers.__version__}")  # fmt: skip
    eval_batch = args.eval_batch or args.batch
    print(f"steps {args.steps} | batch {args.batch} x {args.length} tokens | eval batch {eval_batch} | 4 domains")
    print(f"{'K':>5} {'eval batches':>12} {'updates':>8} {'train s':>8} {'DDK s':>7} {'teacher s':>9} "
          f"{'DDK share':>10} {'recurring':>10}")  # fmt: skip
    for update_steps in args.update_steps:
        for eval_batches in args.eval_batches:
            total, ddk, teacher = run(args.steps, update_steps, eval_batches, args.batch, args.length, eval_batch)
            updates = (args.steps - 1) // update_steps  # none at the last step
            recurring = (ddk - teacher) / (total - teacher)  # the student's evaluations: the share of a long run
            print(f"{update_steps:>5} {eval_batches:>12} {updates:>8} {total:>8.1f} {ddk:>7.2f} {teacher:>9.2f} "
                  f"{ddk / total:>10.1%} {recurring:>10.1%}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
