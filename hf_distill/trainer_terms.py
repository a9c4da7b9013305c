"""The distillation terms of `DistillationTrainer.compute_loss`: which loss function runs on which outputs."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from .config import DistillationConfig
from .losses import (
    OutputHead,
    attention_map_loss,
    cross_entropy_loss,
    fused_logit_terms,
    hidden_state_loss,
    logit_distillation_loss,
    pool_word_states,
    sparse_distillation_loss,
    word_attention_maps,
)
from .teacher_cache import CACHE_KEYS

WORD_KEYS = ("word_pool", "teacher_word_pool", "word_mask")


def check_head(head: OutputHead, outputs: Any, role: str) -> None:
    """Refuse a model whose logits are not `transform(h @ W^T + b)` (the fused loss would silently be wrong)."""
    with torch.no_grad():
        rebuilt = head.logits(outputs.hidden_states[-1][:, -1])
        returned = outputs.logits[:, -1].float()
    if not torch.allclose(rebuilt, returned, rtol=1e-2, atol=1e-2):
        raise ValueError(
            f"The {role}'s logits are not its output head applied to its last hidden state (max difference "
            f"{(rebuilt - returned).abs().max().item():.3g}), so the fused logit loss cannot be used: set "
            "DistillationConfig.logit_loss='logits'."
        )


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class LossTermsMixin:
    """
    Computes the un-normalised sum of every enabled term from the student's and teacher's outputs: task CE, logit
    divergence, token-level hidden states and attention maps, and DSG-KD's word-level hidden states and attention
    maps (the same distances, on subwords pooled to domain words). The trainer normalises and weights them.
    """

    def _loss_sums(
        self,
        outputs: Any,
        teacher_outputs: Any,
        labels: torch.Tensor,
        label_mask: torch.Tensor,
        attended: torch.Tensor,
        words: dict[str, torch.Tensor],
        fused: bool = False,
        cached: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Un-normalised sums of each enabled term, keyed by its log name."""
        args: DistillationConfig = self.args
        sums: dict[str, torch.Tensor] = (
            self._fused_logit_sums(outputs, teacher_outputs, labels, label_mask)
            if fused
            else self._logit_sums(outputs, teacher_outputs, labels, label_mask, cached)
        )
        identity = _identity
        if args.hidden_weight > 0:
            sums["loss_hidden"] = self._hidden_term(outputs, teacher_outputs, identity, identity, attended)
        if args.attention_weight > 0:
            sums["loss_attn"] = self._attention_term(
                outputs, teacher_outputs, identity, identity, attended, args.attention_loss
            )
        if args.dsg_kd:
            student_pool, teacher_pool, mask = (words[k] for k in WORD_KEYS)
            if args.word_hidden_weight > 0:
                sums["loss_word_hidden"] = self._hidden_term(
                    outputs,
                    teacher_outputs,
                    partial(pool_word_states, word_pool=student_pool),
                    partial(pool_word_states, word_pool=teacher_pool),
                    mask,
                )
            if args.word_attention_weight > 0:
                sums["loss_word_attn"] = self._attention_term(
                    outputs,
                    teacher_outputs,
                    partial(word_attention_maps, word_pool=student_pool),
                    partial(word_attention_maps, word_pool=teacher_pool),
                    mask,
                    "mse",
                )
        return sums

    def _logit_sums(
        self,
        outputs: Any,
        teacher_outputs: Any,
        labels: torch.Tensor,
        label_mask: torch.Tensor,
        cached: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """CE and logit divergence from the materialised logits of both models, or of the student against the
        teacher's cached top-k (`cached`; a batch without them, e.g. evaluation data, gets CE only)."""
        args: DistillationConfig = self.args
        logits = outputs.logits
        student_logits, teacher_logits = logits, getattr(teacher_outputs, "logits", None)
        top = [cached[k] for k in CACHE_KEYS] if cached else None
        if self.task == "causal_lm":
            student_logits = logits[:, :-1]
            teacher_logits = teacher_logits[:, :-1] if teacher_logits is not None else None
            top = [t[:, :-1] for t in top] if top else None
            labels = labels[:, 1:]
        sums: dict[str, torch.Tensor] = {}
        if args.alpha_ce > 0:
            sums["loss_ce"] = cross_entropy_loss(student_logits, labels, args.logit_chunk_size)
        if args.gamma > 0 and top is not None:
            sums["loss_kd"] = sparse_distillation_loss(
                student_logits[..., : self.vocab_size], *top, label_mask, args.divergence, args.temperature,
                args.jsd_beta, args.logit_chunk_size,
            )  # fmt: skip
        elif args.gamma > 0 and teacher_logits is not None:
            vocab = self.vocab_size
            sums["loss_kd"] = logit_distillation_loss(
                student_logits[..., :vocab],
                teacher_logits[..., :vocab],
                mask=label_mask,
                divergence=args.divergence,
                temperature=args.temperature,
                jsd_beta=args.jsd_beta,
                chunk_size=args.logit_chunk_size,
            )
        return sums

    def _fused_logit_sums(
        self, outputs: Any, teacher_outputs: Any, labels: torch.Tensor, label_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """CE and logit divergence of a causal LM from the last hidden states and the heads, in token chunks
        ([`fused_logit_terms`]): the models ran with `logits_to_keep=1`, so no `[tokens, vocab]` logits exist."""
        args: DistillationConfig = self.args
        student_head = OutputHead.of(self.model)
        hidden = outputs.hidden_states[-1][:, :-1][label_mask]
        teacher_hidden = teacher_head = None
        if args.gamma > 0:
            teacher_hidden = teacher_outputs.hidden_states[-1][:, :-1][label_mask]
            teacher_head = OutputHead.of(self.accelerator.unwrap_model(self.teacher))
        if not self._fused_head_checked:  # the heads must be what the models use: check on the kept position
            check_head(student_head, outputs, "student")
            if teacher_head is not None:
                check_head(teacher_head, teacher_outputs, "teacher")
            self._fused_head_checked = True
        ce, kd = fused_logit_terms(
            hidden, student_head, teacher_hidden, teacher_head,
            labels[:, 1:][label_mask] if args.alpha_ce > 0 else None,
            args.divergence, args.temperature, args.jsd_beta, self.vocab_size, args.logit_chunk_size,
        )  # fmt: skip
        sums = {}
        if args.alpha_ce > 0:
            sums["loss_ce"] = ce
        if args.gamma > 0:
            sums["loss_kd"] = kd
        return sums

    def _hidden_term(
        self, outputs: Any, teacher_outputs: Any, student_view: Callable, teacher_view: Callable, mask: torch.Tensor
    ) -> torch.Tensor:
        """Hidden-state distance summed over `mask`, averaged over the layer pairs; the views pick tokens or words."""
        student_layers = [s for s, _ in self.layer_pairs]
        projected = self._projector_wrapped(
            [student_view(outputs.hidden_states[s]) for s in student_layers], student_layers
        )
        return sum(
            hidden_state_loss(p, teacher_view(teacher_outputs.hidden_states[t]), mask, self.args.hidden_loss)
            for p, (_, t) in zip(projected, self.layer_pairs, strict=True)
        ) / len(self.layer_pairs)

    def _attention_term(
        self,
        outputs: Any,
        teacher_outputs: Any,
        student_view: Callable,
        teacher_view: Callable,
        mask: torch.Tensor,
        loss_type: str,
    ) -> torch.Tensor:
        """Attention-map distance summed over the rows in `mask`, averaged over the attention layer pairs."""
        if not outputs.attentions or not teacher_outputs.attentions:
            raise RuntimeError(
                "An attention term is on but the student or teacher returned no attention maps: load both with "
                "attn_implementation='eager'."
            )
        return sum(
            attention_map_loss(
                student_view(outputs.attentions[s - 1]),
                teacher_view(teacher_outputs.attentions[t - 1]),
                mask,
                loss_type,
                self.args.attention_average_heads,
            )
            for s, t in self.attention_pairs
        ) / len(self.attention_pairs)
