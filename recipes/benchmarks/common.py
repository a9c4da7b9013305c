"""Shared pieces of the benchmark scripts: the machine line, peak memory, tiny Llamas, random token data, a step
timer and running one case in a fresh process (so that CPU peak memory is the case's own)."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback


def rss_peak_mb() -> float:
    """The process's resident-memory high-water mark (Linux `VmHWM`), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_memory_mb(device: str) -> float:
    """CUDA: the allocator's peak; CPU: the resident high-water mark of the process."""
    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else rss_peak_mb()


def machine_line(device: str) -> str:
    """`machine: host | device (name) | versions`, the first line every benchmark prints."""
    import transformers

    try:
        import trl

        trl_version = f"trl {trl.__version__}"
    except ImportError:
        trl_version = "trl not installed"
    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine()
    return (
        f"machine: {platform.node()} | {device} ({name}, {torch.get_num_threads()} CPU threads) | torch "
        f"{torch.__version__} | transformers {transformers.__version__} | {trl_version}"
    )


def llama(vocab: int, hidden: int, layers: int, seed: int, positions: int = 512) -> LlamaForCausalLM:
    """A randomly initialised Llama with `layers` blocks of width `hidden` (MLP 3x, 4 heads... one per 64 dims)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=positions, tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def random_tokens(n: int, length: int, vocab: int, seed: int = 0) -> Dataset:
    """`n` sequences of random token ids (labels = inputs, no padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, length), generator=g).tolist()
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * length] * n, "labels": ids})


def word_level_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """A tokenizer with `vocab` tokens `t0 ... t{vocab-1}` (what trainers that need a processing class get)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="t0", eos_token="t1", unk_token="t0")


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (from one `on_step_end` to the next, the first from `on_step_begin`)."""

    def __init__(self):
        self.times: list[float] = []
        self._last: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self._last is None:
            self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now

    def median(self, warmup: int) -> float:
        timed = self.times[warmup:] or self.times
        return statistics.median(timed)


def run_case(script: str, case: dict) -> dict:
    """Run `script --case '<json>'` in a fresh process and return the JSON object it prints last."""
    proc = subprocess.run([sys.executable, script, "--case", json.dumps(case)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def add_pair_arguments(parser: argparse.ArgumentParser, teacher_hidden: int) -> None:
    """The arguments every training benchmark shares: the student/teacher pair, the batches, the timing and the
    internal `--case` (one run in a fresh process)."""
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--student_hidden", type=int, default=256)
    parser.add_argument("--student_layers", type=int, default=2)
    parser.add_argument("--teacher_hidden", type=int, default=teacher_hidden)
    parser.add_argument("--teacher_layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (median of their step times)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--case", help=argparse.SUPPRESS)


def pair_line(args: argparse.Namespace) -> str:
    """The second line every training benchmark prints: vocabulary, the pair's sizes, batch and timing."""
    student = parameters(llama(args.vocab, args.student_hidden, args.student_layers, 0))
    teacher = parameters(llama(args.vocab, args.teacher_hidden, args.teacher_layers, 0))
    return (
        f"vocab {args.vocab} | student {args.student_layers}x{args.student_hidden} ({student / 1e6:.1f}M) | teacher "
        f"{args.teacher_layers}x{args.teacher_hidden} ({teacher / 1e6:.1f}M, {teacher / student:.1f}x) | batch "
        f"{args.batch} x {args.length} tokens | median of {args.steps - args.warmup} steps x {args.repeats} runs"
    )
