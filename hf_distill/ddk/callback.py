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
        eval_batches (`int`): Validation batches per domain and process at each update (`ddk_eval_batches`).
    """

    domains: TrainingDomains
    evaluator: DomainEvaluator
    teacher: torch.nn.Module
    log: Callable[[dict[str, float]], None]
    batch_size: int
    eval_batches: int


class DDKCallback(TrainerCallback, ExportableState):
    r"""
    Re-weights the training mixture toward the domains where the student lags the teacher most (DDK).

    Every `args.ddk_update_steps` optimizer steps it measures the mean token cross-entropy of the student on at most
    `args.ddk_eval_batches` batches of `per_device_eval_batch_size` per domain and process of the held-out per-domain
    validation data (token losses and counts summed over processes, then divided), and hands [`ddk_update`]'s new
    weights to the mixture (the [`DomainWeightedSampler`], or a [`DomainStream`]'s): by default on the ratio of the
    student's and the teacher's perplexities (`exp` of those cross-entropies), as the paper defines it
    (`args.ddk_gap`). The teacher's losses are computed once and kept. The new weights apply from the next draw that no
    process has made yet, rounded up to a whole global micro-batch, so every process records the same change. At each
    update it logs `ddk/l_S/<domain>` and `ddk/l_T/<domain>` (the cross-entropies), `ddk/ppl_S/<domain>` and
    `ddk/ppl_T/<domain>` (the perplexities), `ddk/ratio/<domain>` (the ratio the update used), `ddk/weight/<domain>`
    and `ddk/seconds` (the update's duration), and one info line (`hf_distill.ddk.callback` logger).

    Its state (`teacher_losses`, `updates`, and `sampler`: the sampler's weights history) is saved in each
    checkpoint's `trainer_state.json` and restored on resume through transformers' `ExportableState` path
    (`restore_callback_states_from_checkpoint`, which [`DistillationTrainer`] turns on with DDK): the Trainer
    rebuilds the callback from its saved state, and [`DDKAttach`] hands the rebuilt one its [`DDKParts`] at the
    start of training, before the first example is drawn.

    [`DistillationTrainer`] creates it when `ddk_update_steps` is set; it is not meant to be added by hand.
    """

    def __init__(self) -> None:
        self.teacher_losses: list[float] | None = None
        self.updates: list[dict[str, Any]] = []
        self.sampler: dict[str, Any] | None = None  # the sampler's state, as restored from a checkpoint
        self.parts: DDKParts | None = None
        self._batches: Batches | None = None

    # ---- state -----------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        sampler = self.parts.domains.sampler if self.parts is not None else None
        return {
            "args": {},
            "attributes": {
                "teacher_losses": self.teacher_losses,
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
        if state.global_step % args.ddk_update_steps == 0:
            should_log = control.should_log
            self.update(args, state.global_step, model)
            control.should_log = should_log  # logging the update must not swallow this step's training log
        return control

    def update(self, args: Any, step: int, model: torch.nn.Module) -> list[float]:
        """Measure the per-domain losses, compute the new weights and hand them to the sampler; log them, with the
        update's duration (`ddk/seconds`), and one info line."""
        start = time.perf_counter()
        parts = self.parts
        if self.teacher_losses is None:
            self.teacher_losses = self.domain_losses(parts.teacher)
        student_losses = self.domain_losses(model)
        sampler = parts.domains.sampler
        gap = getattr(args, "ddk_gap", "perplexity")
        weights = ddk_update(
            sampler.weights, student_losses, self.teacher_losses, args.ddk_alpha, args.ddk_smoothing, gap
        )
        ratios = domain_gap(student_losses, self.teacher_losses, gap)
        position = self._shared_position()
        sampler.set_weights(weights, position)
        self.updates.append({"step": step, "position": position, "student_losses": student_losses, "weights": weights})
        logs: dict[str, float] = {}
        for i, name in enumerate(sampler.domain_names):
            logs[f"ddk/l_S/{name}"] = student_losses[i]
            logs[f"ddk/l_T/{name}"] = self.teacher_losses[i]
            logs[f"ddk/ppl_S/{name}"] = math.exp(min(student_losses[i], 700.0))
            logs[f"ddk/ppl_T/{name}"] = math.exp(min(self.teacher_losses[i], 700.0))
            logs[f"ddk/ratio/{name}"] = ratios[i]
            logs[f"ddk/weight/{name}"] = weights[i]
        logs["ddk/seconds"] = time.perf_counter() - start
        parts.log(logs)
        mixture = ", ".join(f"{name} {w:.3f}" for name, w in zip(sampler.domain_names, weights, strict=True))
        logger.info(f"DDK update at step {step} ({logs['ddk/seconds']:.1f} s): {mixture}")
        return weights

    def _shared_position(self) -> int:
        """The first position no process has drawn, rounded up to a whole global micro-batch."""
        accelerator = self.parts.evaluator.accelerator
        position = torch.tensor([self.parts.domains.sampler.position], device=accelerator.device)
        if accelerator.num_processes > 1:
            position = accelerator.gather(position)
        unit = self.parts.batch_size * accelerator.num_processes
        return -(-int(position.max()) // unit) * unit

    def domain_losses(self, model: torch.nn.Module) -> list[float]:
        """Mean token cross-entropy of `model` on each domain's validation batches, over all processes (collated
        once: the first `ddk_eval_batches` batches of each domain)."""
        domains, evaluator = self.parts.domains, self.parts.evaluator
        if self._batches is None:
            datasets = {name: domains.validation[name] for name in domains.names}
            self._batches = evaluator.collate(datasets, self.parts.eval_batches)
        return evaluator.batch_losses(model, self._batches, domains.names)


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
