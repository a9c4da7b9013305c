"""Benchmark (b): end-to-end training step: tokens/s and peak memory of logit distillation, side by side.

    pip install -e ".[bench]" && python recipes/benchmarks/e2e_step.py          # CPU defaults
    python recipes/benchmarks/e2e_step.py --profile hf_distill-compiled        # where one step's time goes
    python recipes/benchmarks/e2e_step.py --device cuda --vocab 128000 --batch 8 --length 1024 --bf16

The same tiny pair (Llamas, random init, `--vocab` tokens) and the same random-token batches for every row, each row
in a fresh process, `--steps` optimizer steps of which the first `--warmup` are not timed (median step time). Each
row runs `--repeats` times (default 5), interleaved with the other rows and the row order rotated every round; the
table shows the median over the runs of their median step time and the spread (lowest-highest) of those, tokens/s,
peak memory, the overhead over the floor and the speed relative to TRL's off-policy row ("x trl"):

- student-only:       the student fine-tuned alone (`DistillationTrainer`, CE, no teacher);
- floor:              teacher forward + student forward/backward with CE (a `Trainer` subclass): the work any
                      logit distillation must do; the distillation overhead is measured against it;
- hf_distill:         `DistillationTrainer`, forward KL only (`alpha_ce=0, gamma=1, T=1`), `logit_loss='auto'`
                      (chunked loss on materialised logits, fused only when a batch's logits reach 2**27 values),
                      `logit_kernel='eager'` (the chunk function op by op);
- hf_distill-compiled: the same with `logit_kernel='compiled'` (the default: `torch.compile` of the chunk function;
                      compiled in the first, untimed steps);
- hf_distill-fused, hf_distill-fused-compiled: the same two with `logit_loss='fused'` (from the last hidden states
                      and the heads: no `[tokens, vocab]` logits);
- trl-gkd:            TRL's `trl.experimental.gkd.GKDTrainer` with `lmbda=0` (off-policy), `beta=0` (forward KL),
                      `temperature=1`.
- hf_distill-on-policy, trl-gkd-on-policy: the same two at `lmbda=1`: every batch's completion is sampled from the
                      student (temperature 1, no top-k / top-p, `--new_tokens` tokens after a prompt of
                      `--length - --new_tokens` tokens; the random models rarely sample EOS, so the lengths match),
                      then scored by the teacher; tokens/s counts prompt + completion tokens, generation included.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    StepTimer,
    add_pair_arguments,
    llama,
    machine_line,
    pair_line,
    peak_memory_mb,
    random_tokens,
    run_case,
    word_level_tokenizer,
)

ROWS = ("student-only", "floor", "hf_distill", "hf_distill-compiled", "hf_distill-fused", "hf_distill-fused-compiled",
        "trl-gkd", "hf_distill-on-policy", "trl-gkd-on-policy")  # fmt: skip
TRL_ROWS = ("trl-gkd", "trl-gkd-on-policy")


class PromptCollator:
    """Fixed-length random sequences as prompt (the first `prompt` tokens) + completion batches, with the prompts
    alone for generation: the keys both trainers read (`prompts`, `prompt_attention_mask`)."""

    def __init__(self, prompt: int):
        self.prompt = prompt

    def __call__(self, features):
        ids = torch.tensor([f["input_ids"] for f in features])
        labels = ids.clone()
        labels[:, : self.prompt] = -100
        prompts = ids[:, : self.prompt]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "prompts": prompts,
                "prompt_attention_mask": torch.ones_like(prompts)}  # fmt: skip


class FloorTrainer(Trainer):
    """Teacher forward (no grad) + the student's own CE: no distillation loss at all."""

    def __init__(self, teacher: torch.nn.Module, **kwargs):
        super().__init__(**kwargs)
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with torch.no_grad():
            self.teacher(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        outputs = model(**inputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss


def _common_args(case: dict, out: str) -> dict:
    return dict(
        output_dir=out, max_steps=case["steps"], per_device_train_batch_size=case["batch"], learning_rate=1e-4,
        report_to="none", save_strategy="no", logging_steps=10_000, disable_tqdm=True,
        use_cpu=case["device"] == "cpu", bf16=case["bf16"], dataloader_pin_memory=False, seed=0,
    )  # fmt: skip


def _trainer(row: str, case: dict, out: str):
    student = llama(case["vocab"], case["student_hidden"], case["student_layers"], seed=1)
    teacher = llama(case["vocab"], case["teacher_hidden"], case["teacher_layers"], seed=2)
    if case["bf16"]:
        teacher = teacher.to(torch.bfloat16)
    data = random_tokens(case["batch"] * case["steps"], case["length"], case["vocab"])
    common = _common_args(case, out)
    if row == "floor":
        return FloorTrainer(teacher, model=student, args=TrainingArguments(**common), train_dataset=data)
    on_policy = row.endswith("on-policy")
    collator = PromptCollator(case["length"] - case["new_tokens"]) if on_policy else default_data_collator
    tokenizer = word_level_tokenizer(case["vocab"])  # the generating trainers read its pad / EOS token ids
    if row in TRL_ROWS:
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        args = GKDConfig(**common, lmbda=1.0 if on_policy else 0.0, beta=0.0, temperature=1.0,
                         max_length=case["length"], max_new_tokens=case["new_tokens"])  # fmt: skip
        return GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                          data_collator=collator, processing_class=tokenizer)  # fmt: skip
    from hf_distill import DistillationConfig, DistillationTrainer

    kd = {"alpha_ce": 1.0, "gamma": 0.0} if row == "student-only" else {"alpha_ce": 0.0, "gamma": 1.0}
    generation = {"lmbda": 1.0, "max_new_tokens": case["new_tokens"]} if on_policy else {}
    args = DistillationConfig(
        **common, **kd, **generation, logit_loss="fused" if "fused" in row else "auto",
        logit_kernel="compiled" if row.endswith("compiled") else "eager",
    )  # fmt: skip
    return DistillationTrainer(
        model=student, teacher_model=None if row == "student-only" else teacher, args=args, train_dataset=data,
        data_collator=collator, processing_class=tokenizer,
    )  # fmt: skip


class StepProfiler(TrainerCallback):
    """Profiles one optimizer step (`torch.profiler`, CPU and CUDA) and prints its operators by self time."""

    def __init__(self, step: int, rows: int = 15):
        self.step, self.rows, self.profiler = step, rows, None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is not None:
            self.profiler.__exit__(None, None, None)
            device = "cuda" if torch.cuda.is_available() else "cpu"
            table = self.profiler.key_averages().table(sort_by=f"self_{device}_time_total", row_limit=self.rows)
            print(f"step {self.step}, operators by self {device} time:\n{table}", flush=True)
            self.profiler = None


def profile_row(case: dict) -> None:
    """Run one row in this process and print the per-operator profile of its first step after the warm-up."""
    with tempfile.TemporaryDirectory() as out:
        trainer = _trainer(case["row"], case, out)
        trainer.add_callback(StepProfiler(step=case["warmup"] + 1))
        trainer.train()


def one_case(case: dict) -> dict:
    if case["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        trainer = _trainer(case["row"], case, out)
        timer = StepTimer()
        trainer.add_callback(timer)
        trainer.train()
    step = timer.median(case["warmup"])
    return {
        "step_s": step,
        "tokens_per_s": case["batch"] * case["length"] / step,
        "peak_mb": peak_memory_mb(case["device"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_arguments(parser, teacher_hidden=512)
    parser.set_defaults(repeats=5)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--new_tokens", type=int, default=64, help="completion tokens of the on-policy rows")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--profile", choices=ROWS, help="print the per-operator profile of one step of this row")
    args = parser.parse_args()
    if not 0 < args.new_tokens < args.length:
        parser.error(f"--new_tokens {args.new_tokens} must be between 1 and --length - 1 ({args.length - 1})")
    if args.case:
        import json

        print(json.dumps(one_case(json.loads(args.case))))
        return
    case = {k: v for k, v in vars(args).items() if k not in ("rows", "case", "repeats", "profile")}
    if args.profile:
        print(machine_line(args.device))
        profile_row({**case, "row": args.profile})
        return
    print(machine_line(args.device))
    print(f"{pair_line(args)} | {'bf16' if args.bf16 else 'float32'} | on-policy rows: {args.new_tokens} sampled "
          f"tokens after {args.length - args.new_tokens}-token prompts")  # fmt: skip
    skipped = {}
    if importlib.util.find_spec("trl") is None:
        skipped = {
            row: "skipped: trl not installed (pip install -e '.[bench]')" for row in TRL_ROWS if row in args.rows
        }
    rows = [row for row in args.rows if row not in skipped]
    runs: dict[str, list[dict]] = {row: [] for row in rows}
    for repeat in range(args.repeats):  # rows interleaved and rotated, so that slow phases of a shared machine and
        for row in rows[repeat % len(rows) :] + rows[: repeat % len(rows)]:  # the position in a round hit every row
            runs[row].append(run_case(__file__, {**case, "row": row}))
    print(f"{'row':<26} {'step s':>7} {'spread':>13} {'tokens/s':>9} {'peak MB':>8} {'vs floor':>9} {'x trl':>6}")
    step = {row: statistics.median(r["step_s"] for r in results) for row, results in runs.items()}
    for row, results in runs.items():
        versus = f"{step[row] / step['floor'] - 1:+.1%}" if "floor" in step and row != "floor" else ""
        trl = f"{step['trl-gkd'] / step[row]:.2f}" if "trl-gkd" in step and not row.endswith("on-policy") else ""
        spread = f"{min(r['step_s'] for r in results):.3f}-{max(r['step_s'] for r in results):.3f}"
        peak = max(r["peak_mb"] for r in results)
        tokens = args.batch * args.length / step[row]
        print(f"{row:<26} {step[row]:>7.3f} {spread:>13} {tokens:>9.0f} {peak:>8.0f} {versus:>9} {trl:>6}", flush=True)
    for row, why in skipped.items():
        print(f"{row:<18} {why}")


if __name__ == "__main__":
    main()
