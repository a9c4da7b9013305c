"""`DDKCallback`: every K optimizer steps, re-weight the domain mixture toward the domains where the student lags."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.utils import logging

from .domains import TrainingDomains
from .estimate import DomainEstimate, gap_standard_error, overlapping
from .evaluator import Batches, DomainEvaluator
from .update import ddk_update, domain_gap

logger = logging.get_logger(__name__)


@dataclass
class DDKParts:
    """
    What DDK works with in one training run.

    Args:
        domains ([`TrainingDomains`]): The domains, their validation sets and the current sampler.
        evaluator ([`DomainEvaluator`]): Measures the per-domain losses.
        teacher (`torch.nn.Module`): The frozen teacher.
        log (`Callable[[dict[str, float]], None]`): Logs a dict (the trainer's `log`).
        batch_size (`int`): Training examples per micro-batch and process.
        eval_batches (`int`, *optional*): At most this many validation batches per domain and process at each update
            (`ddk_eval_batches`; `None`: no limit).
        eval_tokens (`int`, *optional*): Label tokens per domain at each update, all processes together
            (`ddk_eval_tokens`; `None`: no limit).
    """

    domains: TrainingDomains
    evaluator: DomainEvaluator
    teacher: torch.nn.Module
    log: Callable[[dict[str, float]], None]
    batch_size: int
    eval_batches: int | None
    eval_tokens: int | None = None


class DDKCallback(TrainerCallback, ExportableState):
    r"""
    Re-weights the training mixture toward the domains where the student lags the teacher most (DDK).

    Every `args.ddk_update_steps` optimizer steps (but not at the last step, whose weights would never be used) it
    measures the mean token cross-entropy of the student on each domain's held-out validation blocks: a fixed random
    sample of `args.ddk_eval_tokens` label tokens per domain (all processes together), at most `args.ddk_eval_batches`
    batches of `per_device_eval_batch_size` per domain and process when set ([`DomainEvaluator.collate`]); token losses
    and counts are summed over processes, then divided. It hands [`ddk_update`]'s new weights to the mixture (the
    [`DomainWeightedSampler`], or a [`DomainStream`]'s): on the ratio of the student's and the teacher's perplexities
    (`exp` of those cross-entropies) as the paper defines it, by default through its log (`args.ddk_gap`, with
    `args.ddk_ratio_temperature`, `args.ddk_min_weight` and `args.ddk_max_weight`). The teacher is measured once, on
    the same blocks, and kept. The new weights apply from the next draw that no process has made yet, rounded up to a
    whole global micro-batch, so every process records the same change. At each update it logs `ddk/l_S/<domain>` and
    `ddk/l_T/<domain>` (the cross-entropies), `ddk/se_S/<domain>` and `ddk/se_T/<domain>` (their standard errors over
    the blocks), `ddk/ppl_S/<domain>` and `ddk/ppl_T/<domain>` (the perplexities), `ddk/ratio/<domain>` (the ratio the
    update used) and `ddk/ratio_se/<domain>` (its standard error, student and teacher paired block by block:
    [`gap_standard_error`]), `ddk/tokens/<domain>`, `ddk/weight/<domain>` and `ddk/seconds` (the update's duration),
    and one info line (`hf_distill.ddk.callback` logger) with each domain's new weight and ratio ± standard error. It
    warns once when a domain has fewer held-out tokens than asked, and once when two domains' ratios are within their
    standard errors of each other (the mixture's preference between them is then measurement noise).

    Its state (`teacher_losses`, `teacher_blocks`, `updates`, and `sampler`: the sampler's weights history) is saved
    in each checkpoint's `trainer_state.json` and restored on resume through transformers' `ExportableState` path
    (`restore_callback_states_from_checkpoint`, which [`DistillationTrainer`] turns on with DDK): the Trainer
    rebuilds the callback from its saved state, and [`DDKAttach`] hands the rebuilt one its [`DDKParts`] at the
    start of training, before the first example is drawn.

    [`DistillationTrainer`] creates it when `ddk_update_steps` is set; it is not meant to be added by hand.
    """

    def __init__(self) -> None:
        self.teacher_losses: list[float] | None = None
        self.teacher_blocks: list[list[list[float]]] | None = None  # per domain: [block sums, block label tokens]
        self.updates: list[dict[str, Any]] = []
        self.sampler: dict[str, Any] | None = None  # the sampler's state, as restored from a checkpoint
        self.parts: DDKParts | None = None
        self._batches: Batches | None = None
        self._warned: set[str] = set()

    # ---- state -----------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        sampler = self.parts.domains.sampler if self.parts is not None else None
        return {
            "args": {},
            "attributes": {
                "teacher_losses": self.teacher_losses,
                "teacher_blocks": self.teacher_blocks,
                "updates": self.updates,
                "sampler": sampler.state_dict() if sampler is not None else self.sampler,
            },
        }

    def attach(self, parts: DDKParts, resuming: bool) -> None:
        """Take the run's [`DDKParts`]; when `resuming`, apply the restored sampler state (it must exist)."""
        self.parts = parts
        if not resuming:
            return
        if self.sampler is None:
            raise ValueError(
                "The checkpoint has no DDK state (DDKCallback in trainer_state.json), but this run uses DDK: "
                "resume from a checkpoint written with the same ddk_update_steps setting."
            )
        parts.domains.sampler.load_state_dict(self.sampler)

    # ---- the update ------------------------------------------------------------------------------------------

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % args.ddk_update_steps == 0 and state.global_step < state.max_steps:
            should_log = control.should_log
            self.update(args, state.global_step, model)
            control.should_log = should_log  # logging the update must not swallow this step's training log
        return control

    def update(self, args: Any, step: int, model: torch.nn.Module) -> list[float]:
        """Measure the per-domain losses, compute the new weights and hand them to the sampler; log them, with their
        standard errors and the update's duration (`ddk/seconds`), and one info line."""
        start = time.perf_counter()
        parts = self.parts
        teacher = self.teacher_estimates()
        student = self.domain_estimates(model)
        student_losses = [e.mean for e in student]
        sampler = parts.domains.sampler
        gap = getattr(args, "ddk_gap", "perplexity")
        weights = ddk_update(
            sampler.weights, student_losses, self.teacher_losses, args.ddk_alpha, args.ddk_smoothing, gap,
            getattr(args, "ddk_ratio_temperature", 1.0), getattr(args, "ddk_min_weight", 0.0),
            getattr(args, "ddk_max_weight", 1.0),
        )  # fmt: skip
        ratios = domain_gap(student_losses, self.teacher_losses, gap)
        errors = [gap_standard_error(s, t, gap) for s, t in zip(student, teacher, strict=True)]
        position = self._shared_position()
        sampler.set_weights(weights, position)
        self.updates.append({
            "step": step, "position": position, "student_losses": student_losses, "weights": weights,
            "ratios": ratios, "ratio_se": errors,
        })  # fmt: skip
        names = sampler.domain_names
        logs: dict[str, float] = {}
        for i, name in enumerate(names):
            logs[f"ddk/l_S/{name}"] = student_losses[i]
            logs[f"ddk/l_T/{name}"] = self.teacher_losses[i]
            logs[f"ddk/se_S/{name}"] = student[i].standard_error
            logs[f"ddk/se_T/{name}"] = teacher[i].standard_error
            logs[f"ddk/ppl_S/{name}"] = math.exp(min(student_losses[i], 700.0))
            logs[f"ddk/ppl_T/{name}"] = math.exp(min(self.teacher_losses[i], 700.0))
            logs[f"ddk/ratio/{name}"] = ratios[i]
            logs[f"ddk/ratio_se/{name}"] = errors[i]
            logs[f"ddk/{student[i].unit}/{name}"] = student[i].tokens
            if student[i].unit == "bytes":  # a teacher on its own tokenization: l_S, l_T are nats per byte
                logs[f"ddk/bpb_S/{name}"] = student_losses[i] / math.log(2)
                logs[f"ddk/bpb_T/{name}"] = self.teacher_losses[i] / math.log(2)
            logs[f"ddk/weight/{name}"] = weights[i]
        logs = {key: value for key, value in logs.items() if math.isfinite(value)}  # no error with a single block
        logs["ddk/seconds"] = time.perf_counter() - start
        parts.log(logs)
        mixture = ", ".join(
            f"{name} {w:.3f} (ratio {_with_error(r, e)})"
            for name, w, r, e in zip(names, weights, ratios, errors, strict=True)
        )
        logger.info(f"DDK update at step {step} ({logs['ddk/seconds']:.1f} s): {mixture}")
        self._warn_if_inseparable(step, names, ratios, errors, gap)
        return weights

    def _warn_if_inseparable(
        self, step: int, names: list[str], ratios: list[float], errors: list[float], gap: str
    ) -> None:
        """Once per run: two domains whose ratios are within their standard errors of each other."""
        pairs = overlapping(ratios, errors)
        if not pairs or "inseparable" in self._warned:
            return
        self._warned.add("inseparable")
        shown = "; ".join(
            f"{names[i]} {_with_error(ratios[i], errors[i])} vs {names[j]} {_with_error(ratios[j], errors[j])}"
            for i, j in pairs[:4]
        )
        tokens = self.parts.eval_tokens
        more = (
            "ddk_eval_tokens=None reads every held-out block: hold out more texts per domain"
            if tokens is None
            else f"ddk_eval_tokens={tokens}; each domain needs that many held-out tokens"
        )
        flatten = (
            "ddk_ratio_temperature" if gap == "log_perplexity" else "ddk_gap='log_perplexity', ddk_ratio_temperature"
        )
        logger.warning(
            f"DDK update at step {step}: the {gap} ratios of {len(pairs)} pair(s) of domains are within their "
            f"standard errors ({shown}): the mixture's preference between them is measurement noise. Measure on more "
            f"held-out tokens ({more}), bound the "
            f"weights (ddk_min_weight / ddk_max_weight) or flatten the update ({flatten})."
        )

    def _shared_position(self) -> int:
        """The first position no process has drawn, rounded up to a whole global micro-batch."""
        accelerator = self.parts.evaluator.accelerator
        position = torch.tensor([self.parts.domains.sampler.position], device=accelerator.device)
        if accelerator.num_processes > 1:
            position = accelerator.gather(position)
        unit = self.parts.batch_size * accelerator.num_processes
        return -(-int(position.max()) // unit) * unit

    def domain_losses(self, model: torch.nn.Module) -> list[float]:
        """Mean token cross-entropy of `model` on each domain's validation blocks, over all processes."""
        return [estimate.mean for estimate in self.domain_estimates(model)]

    def domain_estimates(self, model: torch.nn.Module, teacher: bool = False) -> list[DomainEstimate]:
        """`model`'s token cross-entropy on each domain's validation blocks, block by block, over all processes (the
        blocks are collated once: [`DomainEvaluator.collate`] with `ddk_eval_tokens` and `ddk_eval_batches`)."""
        domains, evaluator = self.parts.domains, self.parts.evaluator
        if self._batches is None:
            datasets = {name: domains.validation[name] for name in domains.names}
            self._batches = evaluator.collate(datasets, self.parts.eval_batches, self.parts.eval_tokens)
        estimates = evaluator.block_losses(model, self._batches, domains.names, teacher)
        self._warn_if_short(domains.names, estimates)
        return estimates

    def teacher_estimates(self) -> list[DomainEstimate]:
        """The teacher's estimates: measured at the first update, then kept (and saved in checkpoints). The update
        uses `teacher_losses`, which a checkpoint of an earlier release holds without the blocks; their blocks are
        then measured once, for the standard errors."""
        if self.teacher_blocks is None:
            estimates = self.domain_estimates(self.parts.teacher, teacher=True)
            self.teacher_blocks = [[list(e.sums), list(e.counts)] for e in estimates]
            if self.teacher_losses is None:
                self.teacher_losses = [e.mean for e in estimates]
        return [DomainEstimate(tuple(sums), tuple(int(c) for c in counts)) for sums, counts in self.teacher_blocks]

    def _warn_if_short(self, names: list[str], estimates: list[DomainEstimate]) -> None:
        """Once per run: domains whose held-out data has fewer label tokens than `ddk_eval_tokens`."""
        wanted = self.parts.eval_tokens
        short = [(n, e.tokens) for n, e in zip(names, estimates, strict=True)
                 if wanted and e.unit == "tokens" and e.tokens < wanted]  # fmt: skip
        if short and "short" not in self._warned and self.parts.eval_batches is None:
            self._warned.add("short")
            listed = ", ".join(f"{name} {tokens}" for name, tokens in short)
            logger.warning(
                f"ddk_eval_tokens={wanted}, but the held-out data of some domains has fewer label tokens ({listed}): "
                "their gaps are measured on all of them, with larger standard errors (ddk/ratio_se/<domain>); hold "
                "out more data of those domains for a steadier mixture."
            )


class DDKAttach(TrainerCallback):
    """
    Hands the run's [`DDKParts`] to the [`DDKCallback`] among `callbacks` when training begins: the original one,
    or the one the Trainer rebuilt from a checkpoint's state (which knows nothing of the run otherwise).

    Args:
        callbacks (`list[TrainerCallback]`): The trainer's live callback list (`trainer.callback_handler.callbacks`).
        parts ([`DDKParts`]): What DDK works with.
    """

    def __init__(self, callbacks: list[TrainerCallback], parts: DDKParts):
        self.callbacks, self.parts = callbacks, parts

    def on_train_begin(self, args, state, control, **kwargs):
        for callback in self.callbacks:
            if isinstance(callback, DDKCallback):
                callback.attach(self.parts, resuming=state.global_step > 0)
        return control


def _with_error(value: float, error: float) -> str:
    """`value ± error`, or `value, one block: no error` where a single block gives no standard error."""
    return f"{value:.4g} ± {error:.2g}" if math.isfinite(error) else f"{value:.4g}, one block: no error"
