"""Teacher set-up for `DistillationTrainer`: loading and checking a live teacher or a teacher-output cache, and the
choices that depend on it (fused logit loss, sharded backends)."""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import PreTrainedModel
from transformers.integrations import is_deepspeed_zero3_enabled

from .config import DistillationConfig
from .modeling import (
    infer_task,
    load_pretrained,
    output_size,
    resolve_dtype,
    shared_vocab_size,
    supports_fused_logits,
)
from .parallel import shards_parameters
from .teacher_cache import TeacherCache


class TeacherSetupMixin:
    """Builds `self.teacher` (frozen, cast, checked against the student) or `self.teacher_cache`, and decides
    whether the fused logit loss can run."""

    def _init_teacher(
        self, teacher: PreTrainedModel | str, student: nn.Module, args: DistillationConfig, tokenizer: Any
    ) -> nn.Module:
        """Load (if needed), check against the student, freeze and cast the teacher."""
        dtype = resolve_dtype(args.teacher_dtype, student, args.bf16, args.fp16)
        if isinstance(teacher, str):
            teacher = load_pretrained(
                teacher, self.task, dtype, args.matches_attentions, args.teacher_trust_remote_code
            )
        if args.gamma > 0:  # logits are compared: same kind of head, same vocabulary
            teacher_task = infer_task(teacher, "teacher")
            if teacher_task != self.task:
                raise ValueError(
                    f"The teacher's task ({teacher_task}) differs from the student's ({self.task}): use a teacher "
                    "with the same kind of head."
                )
            self.vocab_size = shared_vocab_size(student, teacher, self.task, tokenizer)
        teacher.eval()
        teacher.requires_grad_(False)
        # ZeRO-3 partitions parameters at load time: the inference engine casts them (bf16/fp16 of the config)
        return teacher if is_deepspeed_zero3_enabled() else teacher.to(dtype)

    def _use_fused_logits(self, args: DistillationConfig, model: nn.Module) -> bool:
        """Whether CE / KD run fused from hidden states and heads (`logit_loss`); `"fused"` when impossible fails."""
        if args.logit_loss == "fused" and self.task != "causal_lm":
            raise ValueError(
                f"DistillationConfig.logit_loss='fused' works for causal LMs only (task is {self.task}): use 'auto'."
            )
        if args.logit_loss == "logits" or self.task != "causal_lm" or not (args.alpha_ce > 0 or args.gamma > 0):
            return False
        if args.teacher_cache is not None:  # the student's logits are compared with the cached top-k
            return False
        # the teacher runs with the student's flags (`logits_to_keep=1`), so it must support them whenever present
        models = [("student", model)] + ([("teacher", self.teacher)] if self.teacher is not None else [])
        missing = [role for role, m in models if not supports_fused_logits(m)]
        if missing and args.logit_loss == "fused":
            raise ValueError(
                f"DistillationConfig.logit_loss='fused' but the {' and '.join(missing)} cannot run it (output head "
                "not nn.Linear, or forward without `logits_to_keep`): use logit_loss='logits' or 'auto'."
            )
        return not missing

    def _init_teacher_cache(self, args: DistillationConfig, model: nn.Module, kwargs: dict[str, Any]) -> TeacherCache:
        """Open and check the teacher cache; the training set gets its row numbers (`teacher_cache_index`)."""
        if self.task != "causal_lm":
            raise ValueError(
                f"DistillationConfig.teacher_cache holds a causal LM teacher's outputs on fixed inputs; the task is "
                f"{self.task} (a masked LM teacher sees the collator's random masks): use a live teacher."
            )
        cache = TeacherCache(args.teacher_cache)
        cache.check(kwargs.get("processing_class"), args.temperature, output_size(model, self.task))
        self.vocab_size = cache.manifest["vocab_size"]
        if kwargs.get("train_dataset") is not None:
            kwargs["train_dataset"] = cache.attach(kwargs["train_dataset"])
        return cache

    def _check_sharded_backend(self) -> None:
        """DeepSpeed / FSDP: projections live outside the engine (refused); sharded heads turn fusion off."""
        if (self.is_deepspeed_enabled or self.is_fsdp_enabled) and self._projector_params():
            raise ValueError(
                "Hidden-state matching with learned projections (student and teacher widths differ) is not supported "
                "under DeepSpeed or FSDP: the projections are not part of the sharded engine. Use DDP, or "
                "hidden_weight=0 (logit KD, attention maps and DDK work under every backend)."
            )
        if self._fused_logits and shards_parameters(self.accelerator):
            if self.args.logit_loss == "fused":
                raise ValueError(
                    "DistillationConfig.logit_loss='fused' reads the output heads' weights, which DeepSpeed ZeRO-3 / "
                    "FSDP shard: use logit_loss='auto' or 'logits'."
                )
            self._fused_logits = False
