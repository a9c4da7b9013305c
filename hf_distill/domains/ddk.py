"""DDK (arXiv 2407.16154): the domain discrepancy factor, the smooth mixture update and `DDKCallback`."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

if TYPE_CHECKING:
    from datasets import Dataset


def _check_losses(student_losses: Sequence[float], teacher_losses: Sequence[float]) -> None:
    if len(student_losses) != len(teacher_losses) or not student_losses:
        raise ValueError(f"Need one student and one teacher loss per domain, got {student_losses}, {teacher_losses}.")
    if any(not t > 0 for t in teacher_losses) or any(not math.isfinite(s) for s in student_losses):
        raise ValueError(f"Losses must be finite and teacher losses > 0, got {student_losses}, {teacher_losses}.")


def discrepancy_factor(student_losses: Sequence[float], teacher_losses: Sequence[float]) -> list[float]:
    r"""
    DDK's domain discrepancy factor `g[i] = exp(l_S[i] / l_T[i])`.

    Args:
        student_losses (`Sequence[float]`): Mean token cross-entropy of the student on each domain.
        teacher_losses (`Sequence[float]`): The same for the teacher (> 0).

    Returns:
        `list[float]`: One factor per domain.
    """
    _check_losses(student_losses, teacher_losses)
    return [math.exp(s / t) for s, t in zip(student_losses, teacher_losses, strict=True)]


def _softmax(logits: Sequence[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(x - top) if x != -math.inf else 0.0 for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def ddk_update(
    weights: Sequence[float],
    student_losses: Sequence[float],
    teacher_losses: Sequence[float],
    alpha: float = 0.5,
    smoothing: bool = True,
) -> list[float]:
    r"""
    One DDK update of the domain mixture.

    With smoothing (DDK eq. 4-5): `psi[i] = r[i] g[i] / sum_j r[j] g[j]` and `r'[i] = alpha psi[i] + (1 - alpha) / N`,
    with `g` the [`discrepancy_factor`]; `alpha = 0` keeps the mixture uniform. Without smoothing:
    `r' = softmax(l_S / l_T)` (the previous weights and `alpha` play no part). Computed in log space, so large
    ratios do not overflow.

    Args:
        weights (`Sequence[float]`): The current mixture `r` (sums to 1).
        student_losses (`Sequence[float]`): Mean token cross-entropy of the student per domain.
        teacher_losses (`Sequence[float]`): Mean token cross-entropy of the teacher per domain.
        alpha (`float`): Smoothing coefficient in [0, 1].
        smoothing (`bool`): Use the smoothed update (default) or the plain softmax of the ratios.

    Returns:
        `list[float]`: The new mixture, summing to 1.
    """
    _check_losses(student_losses, teacher_losses)
    if len(weights) != len(student_losses):
        raise ValueError(f"Got {len(weights)} weights for {len(student_losses)} domains.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1].")
    ratios = [s / t for s, t in zip(student_losses, teacher_losses, strict=True)]
    if not smoothing:
        return _softmax(ratios)
    psi = _softmax([math.log(r) + q if r > 0 else -math.inf for r, q in zip(weights, ratios, strict=True)])
    return [alpha * p + (1.0 - alpha) / len(psi) for p in psi]


def parse_domain_weights(spec: str | Mapping[str, float] | None) -> dict[str, float] | None:
    """
    Parse an initial mixture: `None`, `""` or `"uniform"` (uniform), a mapping, a JSON object or `"name=w,..."`.

    Returns:
        `dict[str, float]` or `None` for uniform.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "uniform")):
        return None
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("{"):
            spec = json.loads(text)
        else:
            pairs = [item.replace(":", "=").split("=") for item in text.split(",") if item.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError(f"cannot parse {text!r}: write 'name=weight,name=weight' or a JSON object.")
            spec = {name.strip(): float(value) for name, value in pairs}
    return {str(name): float(value) for name, value in dict(spec).items()}


class DDKCallback(TrainerCallback, ExportableState):
    r"""
    Re-weights the training mixture toward the domains where the student lags the teacher most (DDK).

    Every `args.ddk_update_steps` optimizer steps it measures the mean token cross-entropy of the student (`l_S`)
    on at most `args.ddk_eval_batches` batches of `per_device_eval_batch_size` per domain and process of the
    held-out per-domain validation data, sums over processes, and hands [`ddk_update`]'s new weights to the
    trainer's [`DomainWeightedSampler`]. The teacher's losses (`l_T`) are computed once and cached. The new weights
    apply from the next draw that no process has made yet, rounded up to a whole global micro-batch, so every
    process records the same change. `ddk/l_S/<domain>`, `ddk/l_T/<domain>`, `ddk/ratio/<domain>` and
    `ddk/weight/<domain>` are logged at each update. Its state (teacher losses, the updates, the sampler's weights
    history) is saved in each checkpoint's `trainer_state.json` and restored on resume.

    [`DistillationTrainer`] creates it when `ddk_update_steps` is set; it is not meant to be added by hand.

    Args:
        trainer ([`DistillationTrainer`]): The trainer whose student, teacher and sampler it works with.
        eval_datasets (`Mapping[str, Dataset]`): Validation data of each domain, keyed by domain name.
    """

    def __init__(self, trainer: Any, eval_datasets: Mapping[str, Dataset]):
        self.trainer = trainer
        self.eval_datasets = dict(eval_datasets)
        self.teacher_losses: list[float] | None = None
        self.updates: list[dict[str, Any]] = []
        self._batches: list[list[dict[str, Any]]] | None = None

    # ---- state -----------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "args": {},
            "attributes": {
                "teacher_losses": self.teacher_losses,
                "updates": self.updates,
                "sampler": sampler.state_dict() if (sampler := self.trainer.domain_sampler) is not None else None,
            },
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what [`state`] saved (called by the trainer when it resumes)."""
        attributes = state["attributes"]
        self.teacher_losses = attributes["teacher_losses"]
        self.updates = list(attributes["updates"])
        self.trainer.domain_sampler.load_state_dict(attributes["sampler"])

    # ---- the update ------------------------------------------------------------------------------------------

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % args.ddk_update_steps == 0:
            should_log = control.should_log
            self.update(state.global_step)
            control.should_log = should_log  # logging the update must not swallow this step's training log
        return control

    def update(self, step: int) -> list[float]:
        """Measure the per-domain losses, compute the new weights and hand them to the sampler."""
        trainer, args = self.trainer, self.trainer.args
        if self.teacher_losses is None:
            self.teacher_losses = self.domain_losses(trainer.teacher)
        student_losses = self.domain_losses(trainer.model)
        sampler = trainer.domain_sampler
        weights = ddk_update(sampler.weights, student_losses, self.teacher_losses, args.ddk_alpha, args.ddk_smoothing)
        position = self._shared_position()
        sampler.set_weights(weights, position)
        self.updates.append({"step": step, "position": position, "student_losses": student_losses, "weights": weights})
        logs: dict[str, float] = {}
        for i, name in enumerate(sampler.domain_names):
            logs[f"ddk/l_S/{name}"] = student_losses[i]
            logs[f"ddk/l_T/{name}"] = self.teacher_losses[i]
            logs[f"ddk/ratio/{name}"] = student_losses[i] / self.teacher_losses[i]
            logs[f"ddk/weight/{name}"] = weights[i]
        trainer.log(logs)
        return weights

    def _shared_position(self) -> int:
        """The first position no process has drawn, rounded up to a whole global micro-batch."""
        trainer = self.trainer
        position = torch.tensor([trainer.domain_sampler.position], device=trainer.args.device)
        if trainer.accelerator.num_processes > 1:
            position = trainer.accelerator.gather(position)
        unit = trainer._train_batch_size * trainer.accelerator.num_processes
        return -(-int(position.max()) // unit) * unit

    def domain_losses(self, model: torch.nn.Module) -> list[float]:
        """Mean token cross-entropy of `model` on each domain's validation batches, over all processes."""
        trainer = self.trainer
        names = trainer.domain_sampler.domain_names
        if self._batches is None:  # collated once: the first `ddk_eval_batches` batches of each domain
            datasets = {name: self.eval_datasets[name] for name in names}
            self._batches = trainer.collate_domain_batches(datasets, trainer.args.ddk_eval_batches)
        return trainer.domain_token_losses(model, self._batches, names)
