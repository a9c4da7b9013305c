"""Building the student side of a run: the student model (loaded, LoRA-wrapped, its task), the layer map and the
learned projections, and the module the Trainer trains."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from ..alignment import attention_layer_pairs, resolve_layer_map
from ..config import DistillationConfig
from ..losses import HiddenProjector
from ..modeling import base_model, check_attentions_available, hidden_size, infer_task, load_pretrained, num_layers
from ..terms import active_terms
from ..terms.registry import LOGITS, format_weights
from .student import DistillationStudent, encoder_of


def load_student(model: PreTrainedModel | str, args: DistillationConfig, peft_config: Any) -> tuple[nn.Module, str]:
    """The student (loaded from safetensors if given by name, wrapped by PEFT with `peft_config`) and its task."""
    if isinstance(model, str):
        task = "causal_lm" if args.task == "auto" else args.task
        model = load_pretrained(model, task, torch.float32, args.matches_attentions, False)
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    task = infer_task(model, "student") if args.task == "auto" else args.task
    logit_terms = [t for t in active_terms(args) if LOGITS in t.needs]
    if task == "feature_extraction" and logit_terms:
        raise ValueError(
            f"The student {type(base_model(model)).__name__} is headless (AutoModel): it has no logits for "
            f"{format_weights(logit_terms, args)}; set them to 0 and "
            "distil its hidden states or attention maps (hidden_weight, attention_weight)."
        )
    if task == "feature_extraction" and args.ddk_update_steps is not None:
        raise ValueError(
            f"DistillationConfig.ddk_update_steps={args.ddk_update_steps}: DDK compares the student's and the "
            f"teacher's cross-entropy on each domain, and the headless {type(base_model(model)).__name__} has no "
            "output head for it: load the models with their LM heads, or turn DDK off (ddk_update_steps=None)."
        )
    return model, task


def layer_pairs_and_projections(
    args: DistillationConfig, student: nn.Module, teacher: nn.Module | None
) -> tuple[list[tuple[int, int]], HiddenProjector | None]:
    """The student -> teacher layer pairs of the hidden / attention terms, and the projections of the hidden terms
    (identity where the widths are equal); checks that attention maps can be returned."""
    pairs: list[tuple[int, int]] = []
    if args.matches_hidden_states or args.matches_attentions:
        pairs = resolve_layer_map(
            args.layer_map, num_layers(student), num_layers(teacher), args.hidden_include_embeddings
        )
    if args.matches_attentions:
        if not attention_layer_pairs(pairs):
            raise ValueError(f"layer_map={args.layer_map!r} maps no transformer block (only layer 0): fix it.")
        check_attentions_available(student, "student")
        check_attentions_available(teacher, "teacher")
    projections = None
    if args.matches_hidden_states:
        # initialised from the seed alone: every process and engine starts from the same projections, whatever the
        # models' loading drew from the global generator (DeepSpeed's loading draws differently from DDP's)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            projections = HiddenProjector([s for s, _ in pairs], hidden_size(student), hidden_size(teacher))
    return pairs, projections


def student_module(student: nn.Module, projections: HiddenProjector | None, skip_head: bool) -> nn.Module:
    """The student alone, or a [`DistillationStudent`] with its projections and/or without its output head (when
    `skip_head` and the student has one)."""
    skip_head = skip_head and encoder_of(student) is not base_model(student)
    if projections is None and not skip_head:
        return student
    return DistillationStudent(student, projections, skip_head)
