"""`DistillationTrainer`: a `transformers.Trainer` that distils a frozen teacher into the student it trains."""

from __future__ import annotations

import itertools
import os
from collections import defaultdict
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainerCallback
from transformers.utils import logging

from .alignment import attention_layer_pairs, resolve_layer_map
from .config import DistillationConfig
from .data import DOMAIN_IDS
from .losses import (
    HiddenProjector,
)
from .modeling import check_attentions_available, hidden_size, infer_task, load_pretrained, num_layers, output_size
from .parallel import prepare_teacher
from .teacher_cache import CACHE_KEYS, TeacherCacheCollator
from .trainer_domains import DomainTrainingMixin
from .trainer_hub import StudentHubMixin
from .trainer_teacher import TeacherSetupMixin
from .trainer_terms import WORD_KEYS, LossTermsMixin

logger = logging.get_logger(__name__)

PROJECTOR_NAME = "distill_projections.safetensors"
# Each term is normalised by the label tokens (index 0), the attended tokens (1) or the domain words (2).
_TERM_COUNT = {
    "loss_ce": 0,
    "loss_kd": 0,
    "loss_hidden": 1,
    "loss_attn": 1,
    "loss_word_hidden": 2,
    "loss_word_attn": 2,
}
_TEACHER_PREFIX = "teacher_"
# logit_loss="auto" fuses a batch when tokens x vocab reaches this (512 MiB of float32 logits per model)
FUSED_AUTO_MIN_LOGITS = 2**27


class _ProjectorGradCallback(TrainerCallback):
    """Clears the projector's gradients after each optimizer step (the Trainer only zeroes the student's)."""

    def __init__(self, projector: nn.Module):
        self.projector = projector

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.projector.zero_grad(set_to_none=True)


class DistillationTrainer(TeacherSetupMixin, LossTermsMixin, DomainTrainingMixin, StudentHubMixin, Trainer):
    """
    A [`~transformers.Trainer`] that trains `model` (the student) against a frozen `teacher_model`.

    `compute_loss` runs the teacher (without gradients) and the student once each and combines, with the weights of
    [`DistillationConfig`]: the task cross-entropy, the logit divergence at a temperature, the hidden-state distance
    at mapped layers (through learned projections when widths differ) and the attention-map distance. Each term is
    normalised over the label tokens (CE, logits) or the attended tokens (hidden, attention) of the whole accumulated
    batch, so the loss does not depend on how a batch is split for gradient accumulation, and each term is logged
    separately (`loss_ce`, `loss_kd`, `loss_hidden`, `loss_attn`).

    The teacher is put in eval mode, frozen, cast to the student's compute dtype, placed by accelerate (sharded under
    FSDP and DeepSpeed ZeRO-3), and never saved or optimised. With `args.teacher_cache` (a directory written by
    [`build_teacher_cache`]) no teacher is loaded: logit KD reads the teacher's cached top-k log-probabilities.
    The projections are trained with the student and saved in each checkpoint as
    `distill_projections.safetensors`, apart from the student's weights; `resume_from_checkpoint` restores them.

    A training set with a `args.domain_column` column (or a dict of domain name -> dataset) is sampled by a
    [`DomainWeightedSampler`] with the mixture `args.ddk_initial_weights`; with `args.ddk_update_steps` a
    [`DDKCallback`] re-weights it toward the domains where the student lags the teacher most (DDK), measured on
    `ddk_eval_dataset`. The share of each domain in the training batches is logged as `domain_share/<domain>`.

    DSG-KD: with `args.word_hidden_weight` / `args.word_attention_weight` and batches from [`DSGKDCollator`], the
    teacher reads its own tokenization (`teacher_input_ids`, ...) and the student matches its hidden states and
    attention maps on the domain words only (`loss_word_hidden`, `loss_word_attn`, normalised over the domain words).

    Args:
        model (`PreTrainedModel` or `str`): The student, or a hub id / local path to load it from (safetensors).
        teacher_model (`PreTrainedModel` or `str`, *optional*): The teacher, or a hub id / local path (safetensors,
            `trust_remote_code` only if `args.teacher_trust_remote_code`); not needed with `args.teacher_cache` or
            when every teacher term is 0.
        args (`DistillationConfig`): Training and distillation settings.
        peft_config (`peft.PeftConfig`, *optional*): When given, the student is wrapped with `get_peft_model` and
            only its adapters are trained.
        **kwargs: Every other [`~transformers.Trainer`] argument (`train_dataset`, `data_collator`,
            `processing_class`, `callbacks`, ...). `processing_class` (the tokenizer) also tells the real vocabulary
            size when the teacher's and student's vocabularies differ by padding rows.
        ddk_eval_dataset (`Dataset` or `dict[str, Dataset]`, *optional*): Held-out data of every domain for DDK (a
            dataset with the domain column, or one per domain); defaults to `eval_dataset` when it has domains.
    """

    def __init__(
        self,
        model: PreTrainedModel | str | None = None,
        teacher_model: PreTrainedModel | str | None = None,
        args: DistillationConfig | None = None,
        peft_config: Any | None = None,
        ddk_eval_dataset: Any | None = None,
        **kwargs: Any,
    ):
        if args is None:
            args = DistillationConfig(output_dir="tmp_trainer")
        if not isinstance(args, DistillationConfig):
            raise TypeError(f"args must be a DistillationConfig, got {type(args).__name__}.")
        if model is None:
            raise ValueError("DistillationTrainer needs a student `model` (a model or a hub id / local path).")
        self._take_hub_token(args)
        kwargs["train_dataset"] = self._prepare_domains(
            args, kwargs.get("train_dataset"), ddk_eval_dataset, kwargs.get("eval_dataset")
        )
        task = args.task
        if isinstance(model, str):
            model = load_pretrained(
                model, "causal_lm" if task == "auto" else task, torch.float32, args.matches_attentions, False
            )
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        if task == "auto":
            task = infer_task(model, "student")
        self.task = task
        self.vocab_size: int | None = None

        if teacher_model is None and args.needs_teacher_model:
            raise ValueError(
                "teacher_model is missing: pass a teacher model (or its hub id / path), or set every teacher term "
                "(gamma, hidden_weight, attention_weight, word_hidden_weight, word_attention_weight) to 0 for plain "
                "fine-tuning."
            )
        self.teacher: nn.Module | None = None
        if args.needs_teacher_model:
            self.teacher = self._init_teacher(teacher_model, model, args, kwargs.get("processing_class"))
        self.teacher_cache = self._init_teacher_cache(args, model, kwargs) if args.teacher_cache else None

        self.projector: HiddenProjector | None = None
        self.layer_pairs: list[tuple[int, int]] = []
        if args.matches_hidden_states or args.matches_attentions:
            self.layer_pairs = resolve_layer_map(
                args.layer_map, num_layers(model), num_layers(self.teacher), args.hidden_include_embeddings
            )
        self.attention_pairs = attention_layer_pairs(self.layer_pairs)
        if args.matches_attentions:
            if not self.attention_pairs:
                raise ValueError(f"layer_map={args.layer_map!r} maps no transformer block (only layer 0): fix it.")
            check_attentions_available(model, "student")
            check_attentions_available(self.teacher, "teacher")
        if args.matches_hidden_states:
            self.projector = HiddenProjector(
                [s for s, _ in self.layer_pairs], hidden_size(model), hidden_size(self.teacher)
            )

        self._fused_logits = self._use_fused_logits(args, model)
        self._output_width = output_size(model, task) if self._fused_logits else 0
        self._fused_head_checked = False
        super().__init__(model=model, args=args, **kwargs)
        self._check_sharded_backend()
        self._metrics: dict[str, dict[str, list[torch.Tensor]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self._extra_counts: torch.Tensor | None = None
        if self.teacher is not None:
            self.teacher = prepare_teacher(self.teacher, self.accelerator)
        elif teacher_model is not None:
            logger.warning(
                "teacher_model is ignored: "
                + ("logit KD reads teacher_cache." if self.teacher_cache else "every teacher term has weight 0.")
            )
        self._projector_wrapped = None
        if self.projector is not None:
            self.projector.to(self.args.device)
            self._projector_wrapped = (
                self.accelerator.prepare_model(self.projector) if self._projector_params() else self.projector
            )
            self.add_callback(_ProjectorGradCallback(self.projector))
        if self.teacher_cache is not None:
            self.data_collator = TeacherCacheCollator(self.data_collator, self.teacher_cache)
        self._attach_domains()

    # ---- set-up -----------------------------------------------------------------------------------------------

    def _fuse_batch(self, labels: torch.Tensor) -> bool:
        """`logit_loss='fused'`: always; `'auto'`: when the batch's logits would be large (tokens x vocab >=
        `FUSED_AUTO_MIN_LOGITS`), below which materialised logits are small and faster (no recomputation)."""
        return self.args.logit_loss == "fused" or labels.numel() * self._output_width >= FUSED_AUTO_MIN_LOGITS

    def _projector_params(self) -> list[nn.Parameter]:
        return [] if self.projector is None else list(self.projector.parameters())

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Create the Trainer's optimizer and add the hidden-state projections as their own parameter group."""
        optimizer = super().create_optimizer(model)
        params = [p for p in self._projector_params() if p.requires_grad]
        if params and not any(p is params[0] for group in optimizer.param_groups for p in group["params"]):
            optimizer.add_param_group({"params": params, "weight_decay": 0.0})
        return optimizer

    def _clip_grad_norm(self, model: nn.Module):
        """Clip the student's and the projections' gradients together."""
        if self.projector is None:
            return super()._clip_grad_norm(model)
        parameters = itertools.chain(model.parameters(), self._projector_params())
        return self.accelerator.clip_grad_norm_(parameters, self.args.max_grad_norm)

    # ---- batch accounting -------------------------------------------------------------------------------------

    def _label_mask(self, labels: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the label positions that count (shifted by one for causal LMs)."""
        if self.task == "causal_lm":
            labels = labels[..., 1:]
        return labels.ne(-100)

    def _batch_counts(self, batch: dict[str, Any], labels: torch.Tensor) -> torch.Tensor:
        """Label tokens, attended tokens and domain words of one batch (the normalisers of the terms)."""
        words = batch.get("word_mask")
        return torch.stack(
            [
                self._label_mask(labels).sum(),
                _attended(batch).sum(),
                words.sum() if words is not None else labels.new_zeros(()),
            ]
        )

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """
        Count the label tokens (returned, the Trainer's `num_items_in_batch`), the attended tokens and the domain
        words (kept for the other terms) of the micro-batches of one optimizer step, summed over processes under
        `average_tokens_across_devices`.
        """
        if not batch_samples or "labels" not in batch_samples[0]:
            self._extra_counts = None
            return None
        counts = torch.stack([self._batch_counts(b, b["labels"]).to(device) for b in batch_samples]).sum(0)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            counts = self.accelerator.gather(counts[None]).sum(0)
        self._extra_counts = counts[1:]
        return counts[0]

    # ---- loss -------------------------------------------------------------------------------------------------

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        """
        Run teacher and student once each and return the weighted sum of the enabled distillation terms.

        Args:
            model (`nn.Module`): The (wrapped) student.
            inputs (`dict`): The batch; must contain `labels`.
            return_outputs (`bool`): Also return the student outputs (without hidden states and attentions).
            num_items_in_batch (`torch.Tensor`, *optional*): Label tokens of the whole accumulated batch (training).

        Returns:
            The loss, or `(loss, outputs)` when `return_outputs`.
        """
        args: DistillationConfig = self.args
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        domain_ids = inputs.pop(DOMAIN_IDS, None)
        if labels is None:
            raise ValueError("DistillationTrainer needs `labels` in every batch (use -100 for positions to ignore).")
        local_counts = tuple(self._batch_counts(inputs, labels))
        words = {k: inputs.pop(k) for k in WORD_KEYS if k in inputs}
        cached = {k: inputs.pop(k) for k in CACHE_KEYS if k in inputs}  # the teacher's top-k from teacher_cache
        teacher_keys = [k for k in inputs if k.startswith(_TEACHER_PREFIX)]  # the teacher's own tokenization
        teacher_inputs = {k[len(_TEACHER_PREFIX) :]: inputs.pop(k) for k in teacher_keys}
        if not args.dsg_kd:
            teacher_inputs = inputs
        elif not words or not teacher_inputs:
            raise ValueError(
                "word_hidden_weight / word_attention_weight > 0 need batches from DSGKDCollator (word_pool, "
                "teacher_word_pool, word_mask and the teacher's own teacher_input_ids): use it as data_collator."
            )
        fused = self._fused_logits and model.training and self._fuse_batch(labels)
        flags = {"output_hidden_states": True, "logits_to_keep": 1} if fused else {}
        if args.matches_hidden_states:
            flags["output_hidden_states"] = True
        if args.matches_attentions:
            flags["output_attentions"] = True
        outputs = model(**inputs, **flags)
        teacher_outputs = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_outputs = self.teacher(**teacher_inputs, **flags)

        if model.training and num_items_in_batch is not None and self._extra_counts is not None:
            # whole accumulated batch, all processes; DDP averages gradients, so undo its division
            counts = (num_items_in_batch, *self._extra_counts)
            scale = self.accelerator.num_processes if args.average_tokens_across_devices else 1
        else:
            counts, scale = local_counts, 1
        sums = self._loss_sums(
            outputs, teacher_outputs, labels, self._label_mask(labels), _attended(inputs), words, fused, cached
        )
        weights = args.loss_weights
        loss = scale * sum(weights[k] * v / _count(counts, k) for k, v in sums.items())

        mode = "train" if model.training else "eval"
        for key, value in sums.items():
            self._metrics[mode][key].append(value.detach() / _count(local_counts, key))
        if model.training and domain_ids is not None:
            self._record_domain_share(domain_ids)
        self.loss_is_scaled_for_ga = model.training and num_items_in_batch is not None
        if return_outputs:
            keep = {k: v for k, v in outputs.items() if k not in ("hidden_states", "attentions")}
            return loss, type(outputs)(**keep)
        return loss

    # ---- logging ----------------------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss term since the last log (averaged over processes) to the Trainer's logs."""
        mode = "train" if self.model.training else "eval"
        if mode == "train" and "loss" not in logs:  # not a training log step (e.g. DDK's update log)
            return super().log(logs, start_time)
        metrics = {}
        for key, values in self._metrics[mode].items():
            value = torch.stack(values).mean()
            if self.args.world_size > 1:
                value = self.accelerator.reduce(value, reduction="mean")
            metrics[key if mode == "train" else f"eval_{key}"] = value.item()
        self._metrics[mode].clear()
        logs.update(metrics)  # in place: `evaluate()` returns this dict
        super().log(logs, start_time)

    # ---- checkpoints ------------------------------------------------------------------------------------------

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.projector is not None and self._projector_params() and self.args.should_save:
            state = {k: v.detach().cpu().contiguous() for k, v in self.projector.state_dict().items()}
            save_file(state, os.path.join(output_dir, PROJECTOR_NAME), metadata={"format": "pt"})

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is not None and self.projector is not None and self._projector_params():
            path = os.path.join(checkpoint, PROJECTOR_NAME)
            if not os.path.isfile(path):
                raise ValueError(
                    f"resume_from_checkpoint={checkpoint!r} has no {PROJECTOR_NAME}, but this run trains hidden-state "
                    "projections: resume from a checkpoint written with the same distillation settings."
                )
            self.projector.load_state_dict(load_file(path, device=str(self.args.device)))
        super()._load_optimizer_and_scheduler(checkpoint)


def _count(counts: tuple[torch.Tensor, torch.Tensor], term: str) -> torch.Tensor:
    """The normaliser of a loss term (at least 1, so an empty batch gives 0, not NaN)."""
    return torch.as_tensor(counts[_TERM_COUNT[term]]).clamp_min(1)


def _attended(batch: dict[str, Any]) -> torch.Tensor:
    """The attention mask of a batch, or all ones when it has none."""
    mask = batch.get("attention_mask")
    return mask if mask is not None else torch.ones_like(batch["input_ids"])
