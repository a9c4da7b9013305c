"""The teacher side of a run: a live teacher (loaded, checked against the student, frozen, cast) or a teacher-output
cache, the vocabulary both are compared on, and whether the fused logit loss can run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn
from transformers import PreTrainedModel
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.utils import logging

from ..config import DistillationConfig
from ..modeling import (
    infer_task,
    load_pretrained,
    output_size,
    resolve_dtype,
    shared_vocab_size,
    supports_fused_logits,
)
from ..parallel import prepare_teacher, shards_parameters
from ..teacher_cache import TeacherCache
from ..terms.registry import (
    LOGITS,
    TEACHER,
    TEACHER_INPUTS,
    active_terms,
    format_weights,
    registered_terms,
    weight_names,
)

logger = logging.get_logger(__name__)
FUSED_TERMS = ("ce", "kd")  # the terms the fused logit loss computes from hidden states and heads


@dataclass
class TeacherSetup:
    """
    What the student is distilled from.

    Args:
        model (`nn.Module`, *optional*): The frozen live teacher (placed by [`TeacherSetup.place`]).
        cache ([`TeacherCache`], *optional*): The teacher-output cache (no live teacher then).
        vocab_size (`int`, *optional*): Logits are compared on their first `vocab_size` entries.
        fused_logits (`bool`): Whether CE / logit KD may run fused from hidden states and output heads.
    """

    model: nn.Module | None = None
    cache: TeacherCache | None = None
    vocab_size: int | None = None
    fused_logits: bool = False

    @classmethod
    def build(
        cls,
        teacher: PreTrainedModel | str | None,
        student: nn.Module,
        args: DistillationConfig,
        task: str,
        tokenizer: Any = None,
    ) -> TeacherSetup:
        """Load and check the teacher (or open the cache) for `student`; decide on the fused logit loss."""
        terms = active_terms(args)
        teacher_terms = [t for t in terms if TEACHER in t.needs]
        if teacher is None and teacher_terms:
            every = ", ".join(weight_names(t for t in registered_terms() if TEACHER in t.needs))
            raise ValueError(
                f"teacher_model is missing: pass a teacher model (or its hub id / path), or set every teacher term "
                f"({every}) to 0 for plain fine-tuning (now on: {format_weights(teacher_terms, args)})."
            )
        setup = cls()
        if teacher_terms:
            setup.model, setup.vocab_size = _load_teacher(teacher, student, args, task, tokenizer, terms)
        elif teacher is not None:
            reason = "logit KD reads teacher_cache." if args.teacher_cache else "every teacher term has weight 0."
            logger.warning(f"teacher_model is ignored: {reason}")
        if args.teacher_cache:
            setup.cache, setup.vocab_size = _open_cache(args, student, task, tokenizer)
        setup.fused_logits = setup._can_fuse(args, task, student, terms)
        return setup

    def _can_fuse(self, args: DistillationConfig, task: str, student: nn.Module, terms: list) -> bool:
        """Whether CE / KD run fused from hidden states and heads (`logit_loss`); `"fused"` when impossible fails."""
        if args.logit_loss == "fused" and task != "causal_lm":
            raise ValueError(
                f"DistillationConfig.logit_loss='fused' works for causal LMs only (task is {task}): use 'auto'."
            )
        uses_logits = any(LOGITS in t.needs for t in terms)
        unfusable = [t for t in terms if LOGITS in t.needs and t.name not in FUSED_TERMS]
        if unfusable and args.logit_loss == "fused":
            raise ValueError(
                f"DistillationConfig.logit_loss='fused' computes CE and logit KD only, but "
                f"{format_weights(unfusable, args)} read the full logits: use logit_loss='auto' or 'logits'."
            )
        if args.logit_loss == "logits" or task != "causal_lm" or not uses_logits or self.cache is not None:
            return False  # with a cache, the student's logits are compared with the cached top-k
        if unfusable:
            return False
        # the teacher runs with the student's flags (`logits_to_keep=1`), so it must support them whenever present
        models = [("student", student)] + ([("teacher", self.model)] if self.model is not None else [])
        missing = [role for role, m in models if not supports_fused_logits(m)]
        if missing and args.logit_loss == "fused":
            raise ValueError(
                f"DistillationConfig.logit_loss='fused' but the {' and '.join(missing)} cannot run it (output head "
                "not nn.Linear, or forward without `logits_to_keep`): use logit_loss='logits' or 'auto'."
            )
        return not missing

    def check_sharded_backend(self, accelerator: Any, args: DistillationConfig) -> None:
        """Sharded parameters (ZeRO-3 / FSDP) hide the output heads: `auto` stops fusing, `fused` is refused."""
        if self.fused_logits and shards_parameters(accelerator):
            if args.logit_loss == "fused":
                raise ValueError(
                    "DistillationConfig.logit_loss='fused' reads the output heads' weights, which DeepSpeed ZeRO-3 / "
                    "FSDP shard: use logit_loss='auto' or 'logits'."
                )
            logger.info("logit_loss='auto': the output heads are sharded, so CE and logit KD use the logits.")
            self.fused_logits = False

    def place(self, accelerator: Any) -> None:
        """Put the live teacher on the accelerator's devices (sharded like the student under ZeRO-3 / FSDP)."""
        if self.model is not None:
            self.model = prepare_teacher(self.model, accelerator)


def _load_teacher(
    teacher: PreTrainedModel | str, student: nn.Module, args: DistillationConfig, task: str, tokenizer: Any, terms
) -> tuple[nn.Module, int | None]:
    """Load (if needed), check against the student, freeze and cast the teacher."""
    dtype = resolve_dtype(args.teacher_dtype, student, args.bf16, args.fp16)
    if isinstance(teacher, str):
        teacher = load_pretrained(
            teacher, task, dtype, args.matches_attentions, args.teacher_trust_remote_code, role="teacher_model"
        )
    vocab_size = None
    logit_terms = [t for t in terms if LOGITS in t.needs and TEACHER in t.needs]
    if logit_terms:  # logits compared: the same kind of head
        teacher_task = infer_task(teacher, "teacher")
        if teacher_task != task:
            raise ValueError(
                f"The teacher's task ({teacher_task}) differs from the student's ({task}): use a teacher "
                "with the same kind of head."
            )
    if any(TEACHER_INPUTS not in t.needs for t in logit_terms):  # on the same tokens: the same vocabulary
        vocab_size = shared_vocab_size(student, teacher, task, tokenizer)
    teacher.eval()
    teacher.requires_grad_(False)
    # ZeRO-3 partitions parameters at load time: the inference engine casts them (bf16/fp16 of the config)
    return (teacher if is_deepspeed_zero3_enabled() else teacher.to(dtype)), vocab_size


def _open_cache(args: DistillationConfig, student: nn.Module, task: str, tokenizer: Any) -> tuple[TeacherCache, int]:
    """Open and check the teacher cache."""
    if task != "causal_lm":
        raise ValueError(
            f"DistillationConfig.teacher_cache holds a causal LM teacher's outputs on fixed inputs; the task is "
            f"{task} (a masked LM teacher sees the collator's random masks): use a live teacher."
        )
    cache = TeacherCache(args.teacher_cache, args.teacher_cache_check_hashes)
    cache.check(tokenizer, args.temperature, output_size(student, task))
    return cache, cache.manifest["vocab_size"]
