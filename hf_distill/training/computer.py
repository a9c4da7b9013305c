"""`TermComputer`: runs student and teacher on a batch and combines the registered loss terms that are on."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..batch_keys import ALIGNMENT_KEYS, MATCHED_VOCAB, TEACHER_PREFIX
from ..config import DistillationConfig
from ..losses import OutputHead, fused_logit_terms, logit_terms
from ..on_policy import PROMPT_KEYS
from ..teacher_cache import CACHE_KEYS
from ..terms import LossTerm, TermInputs, active_terms, registry
from ..terms.builtin import logit_kd, task_cross_entropy
from ..terms.inputs import attended, label_mask
from ..terms.registry import NORMALISERS, format_weights
from .guards import StepGuard
from .teacher import FUSED_TERMS, TeacherSetup

# logit_loss="auto" fuses a batch when tokens x vocab reaches this (512 MiB of float32 logits per model)
FUSED_AUTO_MIN_LOGITS = 2**27
# batch keys the models never read: the collators' extras, consumed by the terms
_TERM_KEYS = (
    "word_pool", "teacher_word_pool", "word_mask", "teacher_labels", MATCHED_VOCAB, *ALIGNMENT_KEYS, *CACHE_KEYS,
    *PROMPT_KEYS,
)  # fmt: skip


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


class TermComputer:
    """
    Computes `sum_i weight_i * sum_i(batch) / count_i` over the registered terms that are on, and keeps each term's
    per-batch mean for logging.

    In training the counts are those of the whole accumulated batch over all processes (from [`count_batches`],
    passed by the Trainer as `num_items_in_batch`), so the loss does not depend on how a batch is split; otherwise
    they are the batch's own.

    Args:
        args ([`DistillationConfig`]): The run's settings.
        task (`str`): The student's task.
        teacher ([`TeacherSetup`]): The live teacher or cache, the shared vocabulary, whether logits may be fused.
        layer_pairs (`list[tuple[int, int]]`): Student -> teacher hidden-state layers.
        attention_pairs (`list[tuple[int, int]]`): The pairs with attention maps.
        output_width (`int`): The student's logit width (0 when logits are never fused).
        unwrap (`Callable[[nn.Module], nn.Module]`): Returns the 🤗 student under its wrappers (for its head).
    """

    def __init__(
        self,
        args: DistillationConfig,
        task: str,
        teacher: TeacherSetup,
        layer_pairs: list[tuple[int, int]],
        attention_pairs: list[tuple[int, int]],
        output_width: int,
        unwrap: Any,
    ):
        self.args, self.task, self.teacher = args, task, teacher
        self.terms: list[LossTerm] = active_terms(args)
        self.needs: frozenset[str] = frozenset().union(*(t.needs for t in self.terms))  # of the terms that are on
        # the built-in CE / logit KD that are on: computed together (a term registered in their place computes itself)
        self.joint = {t.name for t in self.terms if t.compute in (task_cross_entropy, logit_kd)}
        self.layer_pairs, self.attention_pairs = layer_pairs, attention_pairs
        self.output_width, self.unwrap = output_width, unwrap
        pools = {t.projection_pool for t in self.terms if registry.PROJECTIONS in t.needs}
        if len(pools) > 1:
            raise ValueError(f"The projection terms that are on pool the hidden states differently ({pools}).")
        self.projection_pool = pools.pop() if pools else None
        self.metrics: dict[str, dict[str, list[torch.Tensor]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self._heads_checked = False
        self.guard = StepGuard(args.empty_labels)

    # ---- counts ----------------------------------------------------------------------------------------------

    def counts(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The normalisers of one batch: label tokens, attended tokens, domain words, and the cross-tokenizer aligned
        positions, texts and spans."""
        mask = attended(batch)
        labels, words, teacher_labels = batch.get("labels"), batch.get("word_mask"), batch.get("teacher_labels")
        zero = mask.new_zeros(())
        labelled = label_mask(labels, self.task).sum(-1) if labels is not None else None
        per_row = None
        if "uld_student_mask" in batch:  # CrossTokenizerCollator's character alignment
            per_row = batch["uld_student_mask"].sum(-1)
        elif labelled is not None and teacher_labels is not None:  # a collator of one's own: k-th with k-th
            per_row = torch.minimum(labelled, label_mask(teacher_labels, self.task).sum(-1))
        spans = batch.get("span_rows")
        return {
            registry.LABEL_TOKENS: labelled.sum() if labelled is not None else zero,
            registry.ATTENDED_TOKENS: mask.sum(),
            registry.DOMAIN_WORDS: words.sum() if words is not None else zero,
            registry.ALIGNED_TOKENS: per_row.sum() if per_row is not None else zero,
            registry.ALIGNED_TEXTS: per_row.gt(0).sum() if per_row is not None else zero,
            registry.ALIGNED_SPANS: mask.new_tensor(len(spans)) if spans is not None else zero,
        }

    def count_batches(self, batches: list[dict[str, Any]], accelerator: Any) -> dict[str, torch.Tensor] | None:
        """The normalisers of the micro-batches of one optimizer step, summed over processes under
        `average_tokens_across_devices`."""
        if not batches:
            return None
        device = accelerator.device
        stacked = torch.stack([torch.stack(list(self.counts(b).values())).to(device) for b in batches]).sum(0)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            stacked = accelerator.gather(stacked[None]).sum(0)
        return dict(zip(NORMALISERS, stacked, strict=True))

    # ---- the loss --------------------------------------------------------------------------------------------

    def _split(self, inputs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """(student inputs, teacher inputs, term extras) of a batch without labels and domain ids."""
        extras = {k: inputs.pop(k) for k in _TERM_KEYS if k in inputs}
        teacher_inputs = {
            k[len(TEACHER_PREFIX) :]: inputs.pop(k) for k in list(inputs) if k.startswith(TEACHER_PREFIX)
        }
        if registry.TEACHER_INPUTS not in self.needs:
            return inputs, inputs, extras
        if not teacher_inputs:
            word_terms = [t for t in self.terms if registry.TEACHER_INPUTS in t.needs]
            raise ValueError(
                f"{format_weights(word_terms, self.args)} need batches in which the teacher reads its own "
                "tokenization (teacher_input_ids, ...): use DSGKDCollator (DSG-KD's word terms: also word_pool, "
                "teacher_word_pool, word_mask) or CrossTokenizerCollator (uld_weight) as data_collator."
            )
        return inputs, teacher_inputs, extras

    def _fuse(self, model: nn.Module, labels: torch.Tensor | None) -> bool:
        """`logit_loss='fused'`: always in training; `'auto'`: when the batch's logits would be large."""
        if not (self.teacher.fused_logits and model.training and labels is not None):
            return False
        return self.args.logit_loss == "fused" or labels.numel() * self.output_width >= FUSED_AUTO_MIN_LOGITS

    def _flags(self, fused: bool) -> dict[str, Any]:
        flags: dict[str, Any] = {"output_hidden_states": True, "logits_to_keep": 1} if fused else {}
        if registry.HIDDEN_STATES in self.needs:
            flags["output_hidden_states"] = True
        if registry.ATTENTIONS in self.needs:
            flags["output_attentions"] = True
        return flags

    def loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        labels: torch.Tensor | None,
        counts: dict[str, torch.Tensor] | None = None,
        scale: float = 1.0,
        step: int = 0,
    ) -> tuple[torch.Tensor, Any]:
        """
        Run the models and return `(loss, student outputs)`.

        Args:
            model (`nn.Module`): The (wrapped) student.
            inputs (`dict`): The batch without `labels` and domain ids.
            labels (`torch.Tensor`, *optional*): The labels (required when a term reads them).
            counts (`dict[str, torch.Tensor]`, *optional*): The normalisers of the whole accumulated batch; the
                batch's own when `None`.
            scale (`float`): Multiplies the loss (undoes DDP's gradient averaging when counts cover all processes).
            step (`int`): The optimizer step, named in the errors of the training guard ([`StepGuard`]).

        Raises:
            [`NonFiniteError`]: in training, a term is NaN or infinite (before any gradient of it exists).
        """
        if labels is None and registry.LABELS in self.needs:
            raise ValueError(
                "DistillationTrainer needs `labels` in every batch (use -100 for positions to ignore) for "
                f"{format_weights((t for t in self.terms if registry.LABELS in t.needs), self.args)}; a data set "
                "without labels trains the terms that do not read them (set those weights to 0)."
            )
        local = self.counts({**inputs, "labels": labels})
        student_inputs, teacher_inputs, extras = self._split(dict(inputs))
        fused = self._fuse(model, labels)
        flags = self._flags(fused)
        pool = {"hidden_pool": extras[self.projection_pool]} if self.projection_pool in extras else {}
        outputs = model(**student_inputs, **flags, **pool)
        teacher_outputs = None
        if registry.TEACHER in self.needs:
            with torch.no_grad():
                teacher_outputs = self.teacher.model(**teacher_inputs, **flags)
        x = TermInputs(
            args=self.args, student=outputs, teacher=teacher_outputs, batch={**student_inputs, **extras},
            labels=labels, task=self.task, vocab_size=self.teacher.vocab_size, layer_pairs=self.layer_pairs,
            attention_pairs=self.attention_pairs,
        )  # fmt: skip
        counts = counts if counts is not None else local
        coefs = {t.name: getattr(self.args, t.weight) / counts[t.normaliser].clamp_min(1) for t in self.terms}
        if self.joint:
            x.logit_sums = self._logit_sums(x, model, fused, coefs)
        mode = "train" if model.training else "eval"
        loss, values = None, []
        for term in self.terms:
            value = term.compute(x)
            if value is None:
                continue
            values.append((term, value))
            weighted = coefs[term.name] * value
            loss = weighted if loss is None else loss + weighted
            self.metrics[mode][term.log_name].append(value.detach() / local[term.normaliser].clamp_min(1))
        if model.training:
            self.guard.check(values, counts, self.args, step)
        if loss is None:  # no term had anything in this batch (e.g. cached KD alone, on evaluation data)
            loss = torch.zeros((), device=local[registry.ATTENDED_TOKENS].device)
        return scale * loss, outputs

    def _logit_sums(
        self, x: TermInputs, model: nn.Module, fused: bool, coefs: dict[str, torch.Tensor]
    ) -> Callable[[], dict[str, torch.Tensor]]:
        """CE and logit KD together, in one pass per chunk of tokens, with the gradient of `coefs["ce"] * CE +
        coefs["kd"] * KD` (the loss's combination) computed on the way. Fused (the models ran with
        `logits_to_keep=1`): from the last hidden states and the heads. The returned callable holds the sums only
        (a closure over `x` stored on `x` would be a reference cycle keeping both models' outputs alive until the
        garbage collector runs)."""
        zero = torch.zeros((), device=x.labels.device)
        weights = tuple(coefs[name] if name in self.joint else zero for name in FUSED_TERMS)
        terms = self._fused_terms(x, model, weights) if fused else self._logit_terms(x, weights)
        sums = dict(zip(FUSED_TERMS, terms, strict=True))
        return lambda: sums

    def _settings(self) -> dict[str, Any]:
        args = self.args
        return {
            "divergence": args.divergence, "temperature": args.temperature, "jsd_beta": args.jsd_beta,
            "vocab": self.teacher.vocab_size, "chunk_size": args.logit_chunk_size, "kernel": args.logit_kernel,
        }  # fmt: skip

    def _logit_terms(self, x: TermInputs, weights: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """CE and logit KD from the models' full logits, rows selected by the labels (no sliced copies)."""
        on = self.joint
        labels = x.logit_labels
        return logit_terms(
            x.student.logits, x.teacher.logits if "kd" in on else None, labels if "ce" in on else None,
            labels.ne(-100), weights, **self._settings(),
        )  # fmt: skip

    def _fused_terms(self, x: TermInputs, model: nn.Module, weights: tuple[torch.Tensor, torch.Tensor]):
        """CE and logit KD of a causal LM from the last hidden states and the heads, in token chunks (the models ran
        with `logits_to_keep=1`, so no `[tokens, vocab]` logits exist)."""
        mask, on = x.label_mask, self.joint
        student_head = OutputHead.of(self.unwrap(model))
        hidden = x.student.hidden_states[-1][:, :-1][mask]
        teacher_hidden = teacher_head = None
        if "kd" in on:
            teacher_hidden = x.teacher.hidden_states[-1][:, :-1][mask]
            teacher_head = OutputHead.of(self.unwrap(self.teacher.model))
        if not self._heads_checked:  # the heads must be what the models use: check on the kept position
            check_head(student_head, x.student, "student")
            if teacher_head is not None:
                check_head(teacher_head, x.teacher, "teacher")
            self._heads_checked = True
        labels = x.shifted_labels[mask] if "ce" in on else None
        return fused_logit_terms(hidden, student_head, teacher_hidden, teacher_head, labels, **self._settings(),
                                 weights=weights)  # fmt: skip

    # ---- logging ---------------------------------------------------------------------------------------------

    def pop_means(self, mode: str, accelerator: Any) -> dict[str, float]:
        """The mean of each recorded value since the last call (averaged over processes), then cleared."""
        means = {}
        for key, values in self.metrics[mode].items():
            value = torch.stack(values).mean()
            if self.args.world_size > 1:
                value = accelerator.reduce(value, reduction="mean")
            means[key] = value.item()
        self.metrics[mode].clear()
        return means

    @property
    def uses_logits(self) -> bool:
        """Whether a term reads the student's logits (otherwise its output head can be skipped)."""
        return registry.LOGITS in self.needs
