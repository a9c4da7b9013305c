"""Benchmark (a): peak extra memory and time of one forward + backward of the logit distillation loss.

    python recipes/benchmarks/loss_memory.py                                  # CPU grid that fits 24 GB
    python recipes/benchmarks/loss_memory.py --device cuda --vocab 32000 128000 --tokens 2048 4096 8192

Every method starts from the same inputs, the last hidden states of student and teacher (`tokens x hidden`) and
their output heads (`vocab x hidden`), and returns the forward KL `T^2 KL(p_T || p_S)` summed over tokens:

- naive:     both logits materialised, `F.kl_div` over the whole batch
- trl:       both logits materialised, TRL's `GKDTrainer.generalized_jsd_loss` (beta=0: forward KL)
- chunked:   both logits materialised, `hf_distill.logit_distillation_loss` in token chunks
- fused:     `hf_distill.fused_logit_terms` as the trainer calls it (with the terms' weights): logits only for
             `--chunk` tokens at a time, their gradient chained through the head in the forward pass (no recompute)
- chunked-compiled, fused-compiled: the same two with `kernel="compiled"` (`torch.compile` of the chunk function)

Every case first runs its loss once on 3 tokens (untimed: compiles the kernel, warms the allocator).

"Peak extra" is the peak memory during forward + backward above what the inputs take (CUDA: allocator peak; CPU:
the process's resident high-water mark, each case in a fresh process). The last column compares with naive.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import rss_peak_mb  # noqa: E402

METHODS = ("naive", "trl", "chunked", "fused", "chunked-compiled", "fused-compiled")


def _loss(method: str, hs, ws, ht, wt, chunk: int) -> torch.Tensor:
    kernel = "compiled" if method.endswith("-compiled") else "eager"
    if method.startswith("fused"):
        from hf_distill.losses import LogitTransform, OutputHead, fused_logit_terms

        student, teacher = OutputHead(ws, None, LogitTransform()), OutputHead(wt, None, LogitTransform())
        return fused_logit_terms(hs, student, ht, teacher, chunk_size=chunk, weights=(0.0, 1.0), kernel=kernel)[1]
    s_logits, t_logits = hs @ ws.T, (ht @ wt.T).detach()
    if method == "naive":
        s, t = F.log_softmax(s_logits.float(), -1), F.log_softmax(t_logits.float(), -1)
        return F.kl_div(s, t, reduction="sum", log_target=True)
    if method == "trl":
        from trl.experimental.gkd.gkd_trainer import GKDTrainer

        return GKDTrainer.generalized_jsd_loss(s_logits[None], t_logits[None], beta=0.0, reduction="sum")
    from hf_distill.losses import logit_terms

    return logit_terms(s_logits, t_logits, weights=(0.0, 1.0), chunk_size=chunk, kernel=kernel)[1]


def run_case(method: str, vocab: int, tokens: int, hidden: int, device: str, dtype: str, chunk: int) -> dict:
    """One forward + backward; returns peak extra memory (MB) and time (s)."""
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    hs = torch.randn(tokens, hidden, device=device, dtype=dt, requires_grad=True)
    ws = (torch.randn(vocab, hidden, device=device, dtype=dt) / hidden**0.5).requires_grad_()
    ht = torch.randn(tokens, hidden, device=device, dtype=dt)
    wt = torch.randn(vocab, hidden, device=device, dtype=dt) / hidden**0.5
    _loss(method, hs[:3], ws, ht[:3], wt, chunk).backward()  # warm-up: compiles the kernel
    hs.grad = ws.grad = None
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = rss_peak_mb()
    start = time.perf_counter()
    loss = _loss(method, hs, ws, ht, wt, chunk)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = rss_peak_mb() - base
    return {"peak_extra_mb": peak, "seconds": time.perf_counter() - start, "loss": loss.item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 128000])
    parser.add_argument("--tokens", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--max-gb", type=float, default=None, help="skip cases whose logits would exceed this")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case in a fresh process (CPU)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(**json.loads(args.case))))
        return
    if args.max_gb is None:
        total = torch.cuda.get_device_properties(0).total_memory if args.device == "cuda" else _total_ram()
        args.max_gb = 0.8 * total / 2**30
    import transformers

    name = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or platform.machine()
    versions = f"torch {torch.__version__} | transformers {transformers.__version__} | {_trl_version()}"
    print(f"machine: {platform.node()} | {args.device} ({name}) | {versions}")
    print(f"hidden {args.hidden} | {args.dtype} | chunk {args.chunk} | CPU threads {torch.get_num_threads()}")
    print(f"{'method':<16} {'vocab':>7} {'tokens':>6} {'peak extra MB':>14} {'time s':>8} {'vs naive':>9}")
    for vocab in args.vocab:
        for tokens in args.tokens:
            naive_peak = None
            for method in args.methods:
                if method == "trl" and _trl_version().startswith("trl not"):
                    continue
                # materialising methods hold ~6 float32 [tokens, vocab] tensors at their peak
                if not method.startswith("fused") and 6 * tokens * vocab * 4 / 2**30 > args.max_gb:
                    print(f"{method:<16} {vocab:>7} {tokens:>6} {'skipped: > --max-gb':>14}")
                    continue
                case = dict(method=method, vocab=vocab, tokens=tokens, hidden=args.hidden, device=args.device,
                            dtype=args.dtype, chunk=args.chunk)  # fmt: skip
                result = run_case(**case) if args.device == "cuda" else _in_subprocess(case)
                if method == "naive":
                    naive_peak = result["peak_extra_mb"]
                ratio = f"{result['peak_extra_mb'] / naive_peak:8.0%}" if naive_peak else "       -"
                print(f"{method:<16} {vocab:>7} {tokens:>6} {result['peak_extra_mb']:>14.0f} "
                      f"{result['seconds']:>8.2f} {ratio:>9}", flush=True)  # fmt: skip


def _in_subprocess(case: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _total_ram() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _trl_version() -> str:
    try:
        import trl

        return f"trl {trl.__version__}"
    except ImportError:
        return "trl not installed (its row is skipped)"


if __name__ == "__main__":
    main()
