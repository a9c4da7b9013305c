"""`DistillationStudent`: the student and its learned projections as the one module the Trainer trains."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.utils import ModelOutput

from ..dsg_kd.words import pool_word_states
from ..losses import HiddenProjector
from ..modeling import base_model

PROJECTOR_NAME = "distill_projections.safetensors"
_STUDENT, _PROJECTIONS = "student.", "projections."
_LAYOUT = "student_module"  # metadata of PROJECTOR_NAME files written since the projections live in the module


_OUTPUT_CLASSES: dict[type, type] = {}


def with_projections(outputs: ModelOutput, projected: tuple[torch.Tensor, ...]) -> ModelOutput:
    """`outputs` with a `projected_hidden_states` field: an instance of a subclass of its own output class (so that
    DDP, which rebuilds outputs from their fields, keeps it; one subclass per output class)."""
    base = type(outputs)
    if base not in _OUTPUT_CLASSES:
        field = ("projected_hidden_states", "tuple[torch.Tensor, ...] | None", dataclasses.field(default=None))
        cls = dataclasses.make_dataclass(f"{base.__name__}WithProjections", [field], bases=(base,))
        cls.__module__ = __name__
        _OUTPUT_CLASSES[base] = cls
    return _OUTPUT_CLASSES[base](**dict(outputs.items()), projected_hidden_states=projected)


def student_of(model: nn.Module) -> nn.Module:
    """The 🤗 student inside a [`DistillationStudent`] (or `model` itself)."""
    return model.student if isinstance(model, DistillationStudent) else model


def encoder_of(model: nn.Module) -> nn.Module:
    """The headless body of a 🤗 model (`BertModel` of a `BertForMaskedLM`), or the model itself when it is one."""
    inner = base_model(model)
    return getattr(inner, "base_model", inner)


class DistillationStudent(nn.Module):
    """
    The student as [`DistillationTrainer`] trains it: the student model, the learned projections of its hidden
    states to the teacher's width, and optionally a forward that skips the output head.

    One module means one optimizer parameter-group set, one `prepare_model` (DDP, FSDP, DeepSpeed shard and sync the
    projections with the student), one gradient clipping. Calls and attributes are forwarded to the student (so
    `gradient_checkpointing_enable`, `config`, ... work as the Trainer expects); with hidden states
    requested the outputs also hold `projected_hidden_states` (one per mapped student layer, in teacher width),
    pooled first by `hidden_pool` (a `(B, P, T)` matrix, e.g. DSG-KD's word pools) when it is given.
    [`DistillationTrainer`] saves the student alone (`save_pretrained` of the model given to it; the projections
    only go into checkpoints, as `distill_projections.safetensors`), and a state dict of the student alone loads into
    the student (what the Trainer's best-model loading passes).

    Args:
        student (`nn.Module`): The 🤗 student model (possibly a PEFT model).
        projections ([`HiddenProjector`], *optional*): The projections of the mapped student layers.
        skip_head (`bool`): Run the student's encoder only (no `[tokens, vocab]` head) when no term reads logits.
    """

    def __init__(self, student: nn.Module, projections: HiddenProjector | None = None, skip_head: bool = False):
        super().__init__()
        self.student = student
        self.projections = projections
        self.skip_head = skip_head

    def __getattr__(self, name: str) -> Any:
        """Anything the module does not have is the student's (`config`, `gradient_checkpointing_enable`,
        `floating_point_ops`, ...), as PEFT models forward to their base model."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            student = self.__dict__.get("_modules", {}).get("student")  # (absent while unpickling)
            if student is None:
                raise
            return getattr(student, name)

    def forward(self, *args: Any, hidden_pool: torch.Tensor | None = None, **kwargs: Any) -> Any:
        body = encoder_of(self.student) if self.skip_head else self.student
        outputs = body(*args, **kwargs)
        if self.projections is not None and getattr(outputs, "hidden_states", None) is not None:
            layers = self.projections.student_layers
            states = [outputs.hidden_states[layer] for layer in layers]
            if hidden_pool is not None:
                states = [pool_word_states(h, hidden_pool) for h in states]
            outputs = with_projections(outputs, tuple(self.projections(states, layers)))
        return outputs

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load a state dict of this module, or of the student alone (keys without `student.` / `projections.`)."""
        if state_dict and not any(k.startswith((_STUDENT, _PROJECTIONS)) for k in state_dict):
            return self.student.load_state_dict(state_dict, strict=strict, assign=assign)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ---- saving ------------------------------------------------------------------------------------------------

    def has_projection_weights(self) -> bool:
        """Whether there are learned projections (widths differ) to save and restore."""
        return self.projections is not None and any(True for _ in self.projections.parameters())

    @staticmethod
    def split_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Split this module's state dict into the student's and the projections' (prefixes removed)."""
        student = {k[len(_STUDENT) :]: v for k, v in state_dict.items() if k.startswith(_STUDENT)}
        projections = {k[len(_PROJECTIONS) :]: v for k, v in state_dict.items() if k.startswith(_PROJECTIONS)}
        return student, projections

    @staticmethod
    def save_projections(state: dict[str, torch.Tensor], output_dir: str) -> None:
        """Write the projections' weights to `output_dir/distill_projections.safetensors`."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(tensors, os.path.join(output_dir, PROJECTOR_NAME), metadata={"format": "pt", "layout": _LAYOUT})

    def load_projections(self, checkpoint: str) -> None:
        """Restore the projections from a checkpoint (written by this or the previous hf_distill release)."""
        path = os.path.join(checkpoint, PROJECTOR_NAME)
        layout = projections_layout(path) if os.path.isfile(path) else None
        if layout is None:
            raise ValueError(
                f"resume_from_checkpoint={checkpoint!r} has no {PROJECTOR_NAME}, but this run trains hidden-state "
                "projections: resume from a checkpoint written with the same distillation settings."
            )
        if layout != _LAYOUT:
            raise ValueError(
                f"resume_from_checkpoint={checkpoint!r} was written by hf_distill 0.1 (projections in their own "
                "optimizer group): convert it with hf_distill.convert_checkpoint(trainer, checkpoint, new_folder) and "
                "resume from new_folder."
            )
        device = next(self.projections.parameters()).device
        self.projections.load_state_dict(load_file(path, device=str(device)))


def projections_layout(path: str) -> str:
    """The `layout` a projections file declares ("" for files of hf_distill 0.1)."""
    with safe_open(path, framework="pt") as f:
        return (f.metadata() or {}).get("layout", "")
