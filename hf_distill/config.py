"""`DistillationConfig`: `TrainingArguments` plus every distillation knob, validated on creation."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property

import torch
from transformers import TrainingArguments
from transformers.utils import logging

from .alignment import parse_layer_map
from .arg_checks import check_best_model, check_mappings, check_output_dir
from .ddk.update import GAPS, parse_domain_weights
from .losses import ATTENTION_LOSSES, CHUNK_KERNELS, DIVERGENCES, HIDDEN_LOSSES, ULD_NORMALISATIONS
from .parallel import cpu_processes_launched
from .terms import LossTerm, active_terms, check_weights, registered_terms
from .terms.registry import (
    ALIGNMENT,
    ATTENTIONS,
    LABELS,
    LOGITS,
    PROJECTIONS,
    TEACHER,
    TEACHER_CACHE,
    TEACHER_INPUTS,
    format_weights,
    needs_any,
    weight_names,
)
from .validation import TRAINING_NUMBER_RULES, NumberRule, check_numbers

TASKS = ("auto", "causal_lm", "masked_lm", "sequence_classification", "feature_extraction")
TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")
LOGIT_LOSSES = ("auto", "fused", "logits")
EMPTY_LABELS = ("error", "warn")
logger = logging.get_logger(__name__)

# the accepted values of every numeric field (those of TrainingArguments included), checked before anything else
NUMBER_RULES: dict[str, NumberRule] = {
    **TRAINING_NUMBER_RULES,
    "temperature": NumberRule(low=0.01, high=100, hint="1 is the plain softmax; 1 to 4 is usual"),
    "jsd_beta": NumberRule(low=0, high=1),
    "logit_chunk_size": NumberRule(low=1),
    "ddk_update_steps": NumberRule(low=1, hint="optimizer steps between DDK updates; None keeps the mixture fixed"),
    "ddk_alpha": NumberRule(low=0, high=1, hint="0.5 is DDK's value"),
    "ddk_eval_batches": NumberRule(low=1, hint="None: no limit (ddk_eval_tokens sizes the evaluation)"),
    "ddk_eval_tokens": NumberRule(low=2, hint="held-out label tokens per domain; None evaluates every held-out block"),
    "ddk_ratio_temperature": NumberRule(low=0, low_open=True, hint="1 is the paper's update"),
    "ddk_min_weight": NumberRule(low=0, high=1, hint="0 leaves the weights unbounded below"),
    "ddk_max_weight": NumberRule(low=0, high=1, low_open=True, hint="1 leaves the weights unbounded above"),
    "lmbda": NumberRule(low=0, high=1, hint="the share of on-policy batches: 0 off-policy, 1 fully on-policy"),
    "max_new_tokens": NumberRule(low=1),
    "generation_temperature": NumberRule(low=0, high=100, hint="0 is greedy decoding, 1 samples the model as is"),
    "generation_top_k": NumberRule(low=0, hint="0 keeps every token"),
    "generation_top_p": NumberRule(low=0, high=1, low_open=True, hint="1 keeps every token"),
}


@dataclass
class DistillationConfig(TrainingArguments):
    r"""
    Configuration of [`DistillationTrainer`]: the [`~transformers.TrainingArguments`] plus the distillation knobs.

    The training loss is
    `alpha_ce * CE(student, labels) + gamma * T^2 * D(p_T^T, p_S^T) + hidden_weight * L_hidden
    + attention_weight * L_attn`, each term normalised over the tokens of the whole accumulated batch. For DSG-KD
    (a teacher with its own tokenizer, batches from [`DSGKDCollator`]) the teacher terms are instead
    `word_hidden_weight * L_word_hidden + word_attention_weight * L_word_attn`, normalised over the domain words.

    Every field can be given on the command line or in a YAML file through [`~transformers.HfArgumentParser`].
    Invalid values raise a `ValueError` naming the field, the value and the fix.
    """

    alpha_ce: float = field(default=1.0, metadata={"help": "Weight of the task cross-entropy against the labels."})
    gamma: float = field(default=1.0, metadata={"help": "Weight of the logit distillation term (0 turns it off)."})
    hidden_weight: float = field(
        default=0.0, metadata={"help": "Weight of the hidden-state term at the mapped layers (0 turns it off)."}
    )
    attention_weight: float = field(
        default=0.0, metadata={"help": "Weight of the attention-map term at the mapped layers (0 turns it off)."}
    )
    word_hidden_weight: float = field(
        default=0.0,
        metadata={
            "help": "DSG-KD: weight of the MSE between the mean-pooled subword hidden states of the domain words of "
            "student (projected) and teacher at the mapped layers; needs batches from DSGKDCollator."
        },
    )
    word_attention_weight: float = field(
        default=0.0,
        metadata={"help": "DSG-KD: weight of the MSE between the word-to-word attention maps of the domain words."},
    )
    temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature T of the logit term; the term is scaled by T^2."}
    )
    divergence: str = field(
        default="forward_kl",
        metadata={"help": "Logit divergence.", "choices": list(DIVERGENCES)},
    )
    jsd_beta: float = field(
        default=0.5,
        metadata={"help": "Mixture coefficient beta of the generalized JSD, strictly between 0 and 1."},
    )
    layer_map: str = field(
        default="uniform",
        metadata={
            "help": "Student->teacher layer map for hidden and attention terms: 'uniform', 'last', or explicit "
            "pairs 'student:teacher,...' (e.g. '1:2,2:4'); 0 is the embedding output."
        },
    )
    hidden_include_embeddings: bool = field(
        default=False, metadata={"help": "Also match the embedding outputs (layer 0) in the hidden-state term."}
    )
    hidden_loss: str = field(
        default="mse", metadata={"help": "Hidden-state distance.", "choices": list(HIDDEN_LOSSES)}
    )
    attention_loss: str = field(
        default="mse", metadata={"help": "Attention-map distance.", "choices": list(ATTENTION_LOSSES)}
    )
    attention_average_heads: bool = field(
        default=False,
        metadata={"help": "Compare head-averaged attention maps (always done when the head counts differ)."},
    )
    teacher_dtype: str = field(
        default="auto",
        metadata={
            "help": "Dtype of the teacher: 'auto' follows the student's compute dtype (bf16/fp16 mixed precision "
            "or the student's parameter dtype).",
            "choices": list(TEACHER_DTYPES),
        },
    )
    teacher_trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow custom modeling code when the teacher is loaded by name (off by default)."},
    )
    logit_chunk_size: int = field(
        default=256,
        metadata={
            "help": "Tokens per chunk when computing the logit divergence and cross-entropy in float32; peak extra "
            "memory is about 8 * chunk * vocab * 4 bytes beyond the logits and their gradient. On CPU a chunk also "
            "holds at most 2 MiB of float32 logits per model (it then stays in the cache: faster)."
        },
    )
    logit_loss: str = field(
        default="auto",
        metadata={
            "help": "How CE and the logit divergence of causal LMs are computed in training: 'fused' from the last "
            "hidden states and output heads in token chunks (the models return logits for their last position "
            "only, no [tokens, vocab] logits are held); 'logits' from the models' full logits; 'auto' = 'fused' "
            "for the batches whose logits would be large (tokens x vocab >= 2**27, 512 MiB of float32 per model) "
            "when both models support it (linear head, `logits_to_keep`), 'logits' otherwise (faster).",
            "choices": list(LOGIT_LOSSES),
        },
    )
    logit_kernel: str = field(
        default="compiled",
        metadata={
            "help": "The kernel that computes each chunk of the logit terms (both log-softmaxes, the divergence, CE "
            "and their closed-form gradient in one pass): 'compiled' = torch.compile of the chunk function (C++ on "
            "CPU, Triton on GPU; compiled once per process and setting, a few seconds; falls back to 'eager' with a "
            "warning where compiling fails); 'eager' = the same function op by op.",
            "choices": list(CHUNK_KERNELS),
        },
    )
    teacher_cache: str | None = field(
        default=None,
        metadata={
            "help": "Directory of a teacher-output cache (hf_distill.build_teacher_cache): logit KD reads the "
            "teacher's top-k log-probabilities from it and no teacher model is loaded (logit KD and CE only)."
        },
    )
    teacher_cache_check_hashes: bool = field(
        default=True,
        metadata={
            "help": "Compare the SHA-256 of every teacher-cache shard with its manifest before training (reads the "
            "whole cache once); False starts faster on a large cache and still checks paths, sizes and values."
        },
    )
    uld_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the cross-tokenizer logit term (ULD: the L1 distance between the sorted next-token "
            "probabilities of student and teacher, each on its own tokenization of the same text); for a teacher "
            "with another vocabulary; needs batches from CrossTokenizerCollator, which pairs the positions by the "
            "characters they predict (a BOS on one side does not shift them)."
        },
    )
    uld_normalisation: str = field(
        default="tokens",
        metadata={
            "help": "How uld_weight's term is averaged: 'tokens' (over every compared position of the batch) or "
            "'texts' (per text, then over the texts: the ULD paper's code and TRL GOLD's ULDLoss)."
        },
    )
    span_kd_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of span-aligned logit KD across tokenizers (TRL GOLD): per span of characters both "
            "tokenizations cover, the divergence of the merged span probabilities (product of the token "
            "probabilities) on the tokens whose strings both vocabularies hold; with one tokenizer, the token-level "
            "KD. Needs batches from CrossTokenizerCollator."
        },
    )
    span_uld_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of span-aligned ULD across tokenizers: sorted-probability L1 of the merged span "
            "probabilities, on the tokens span_kd_weight's mapping leaves out when it is on (GOLD's hybrid), on "
            "every token otherwise. Needs batches from CrossTokenizerCollator."
        },
    )
    lmbda: float = field(
        default=0.0,
        metadata={
            "help": "On-policy distillation (GKD): probability that a training batch's completions are sampled from "
            "the student itself (then scored by the teacher); needs prompt/completion batches "
            "(PromptCompletionCollator). 0 trains on the data's completions only."
        },
    )
    seq_kd: bool = field(
        default=False,
        metadata={"help": "GKD: the batches that are not on-policy train on teacher-generated completions."},
    )
    max_new_tokens: int = field(
        default=128, metadata={"help": "Longest generated completion (on-policy and seq_kd batches)."}
    )
    generation_temperature: float = field(
        default=1.0,
        metadata={"help": "Sampling temperature of generated completions (0: greedy); the loss uses `temperature`."},
    )
    generation_top_k: int = field(default=0, metadata={"help": "Top-k sampling of completions (0: off)."})
    generation_top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling of completions (1: off)."})
    task: str = field(
        default="auto",
        metadata={
            "help": "Task of student and teacher; 'auto' infers it from the model class. 'feature_extraction' is a "
            "headless model (AutoModel, e.g. an embedding model): hidden-state and attention terms only.",
            "choices": list(TASKS),
        },
    )

    empty_labels: str = field(
        default="error",
        metadata={
            "help": "What a training step whose batch (all micro-batches, all processes) has no label token does "
            "when a term reads labels: 'error' stops training, 'warn' logs once and trains the other terms.",
            "choices": list(EMPTY_LABELS),
        },
    )

    domain_column: str = field(
        default="domain",
        metadata={"help": "Column of the training (and DDK validation) data that names each example's domain."},
    )
    ddk_update_steps: int | None = field(
        default=None,
        metadata={
            "help": "DDK: re-weight the domain mixture every K optimizer steps from the student/teacher perplexity "
            "gap per domain (ddk_gap; None: the mixture stays at ddk_initial_weights)."
        },
    )
    ddk_alpha: float = field(
        default=0.5,
        metadata={"help": "DDK smoothing alpha in [0, 1]: r = alpha * psi + (1 - alpha) / N (0 keeps r uniform)."},
    )
    ddk_gap: str = field(
        default="log_perplexity",
        metadata={
            "help": "DDK's domain gap: 'log_perplexity' (default: the log of the student/teacher "
            "perplexity ratio on the domain's validation data, CE_S - CE_T, so g is the perplexity ratio itself: to "
            "first order the paper's update while the ratios are near 1, far less sensitive to measurement noise "
            "when they are large), 'perplexity' (the paper's: g = exp(ppl_S / ppl_T), exp of the mean token CE over "
            "all processes) or 'cross_entropy' (the ratio of the mean token CEs; hf_distill <= 0.2).",
            "choices": list(GAPS),
        },
    )
    ddk_smoothing: bool = field(
        default=True,
        metadata={"help": "DDK smoothed update (DDK eq. 4-5); False uses r = softmax(l_S / l_T)."},
    )
    ddk_eval_tokens: int | None = field(
        default=4096,
        metadata={
            "help": "DDK: held-out label tokens per domain (all processes together) the student and, once, the "
            "teacher are measured on at each update: a fixed random sample of the domain's validation blocks. "
            "None: every block."
        },
    )
    ddk_eval_batches: int | None = field(
        default=None,
        metadata={
            "help": "DDK: at most this many batches of per_device_eval_batch_size per domain and process at each "
            "update (on top of ddk_eval_tokens; None: no limit)."
        },
    )
    ddk_ratio_temperature: float = field(
        default=1.0,
        metadata={
            "help": "DDK: the ratios are divided by this temperature inside the update's softmax, g = exp(ratio / T) "
            "(1 is the paper's; larger flattens the mixture)."
        },
    )
    ddk_min_weight: float = field(
        default=0.0,
        metadata={"help": "DDK: lower bound of every domain's weight after each update (N * min <= 1; 0: none)."},
    )
    ddk_max_weight: float = field(
        default=1.0,
        metadata={"help": "DDK: upper bound of every domain's weight after each update (N * max >= 1; 1: none)."},
    )
    ddk_initial_weights: str | None = field(
        default=None,
        metadata={
            "help": "Initial domain mixture r_0: 'uniform' (default) or 'name=weight,...' / a JSON object "
            "(weights >= 0, summing to 1, one per domain)."
        },
    )
    resume_without_training_state: bool = field(
        default=False,
        metadata={
            "help": "Resume from a checkpoint whose optimizer, scheduler or RNG files are missing or unreadable, with "
            "a fresh optimizer / scheduler state or unrestored RNG (one warning). By default such a resume is refused."
        },
    )

    def __post_init__(self):
        check_weights(self)
        check_numbers(self, NUMBER_RULES)
        check_output_dir(self)
        check_mappings(self)
        self._detect_cpu_processes()
        super().__post_init__()
        check_best_model(self)
        terms = active_terms(self)
        self._check_dsg_kd(terms)
        self._check_choice("divergence", DIVERGENCES)
        self._check_choice("hidden_loss", HIDDEN_LOSSES)
        self._check_choice("attention_loss", ATTENTION_LOSSES)
        self._check_choice("teacher_dtype", TEACHER_DTYPES)
        self._check_choice("task", TASKS)
        self._check_choice("logit_loss", LOGIT_LOSSES)
        self._check_choice("logit_kernel", CHUNK_KERNELS)
        self._check_choice("empty_labels", EMPTY_LABELS)
        self._check_choice("ddk_gap", GAPS)
        self._check_choice("uld_normalisation", ULD_NORMALISATIONS)
        if self.divergence == "jsd" and not 0.0 < self.jsd_beta < 1.0:
            raise ValueError(
                f"DistillationConfig.jsd_beta={self.jsd_beta} must be strictly between 0 and 1; for the end points "
                "use divergence='forward_kl' or 'reverse_kl'."
            )
        parse_layer_map(self.layer_map)
        self._check_ddk()
        self._check_teacher_cache(terms)
        self._check_on_policy(terms)

    def _detect_cpu_processes(self) -> None:
        """Several processes launched on a machine without an accelerator train as one job on CPU (gloo), as with
        `use_cpu=True`: transformers would otherwise give each process a world of its own (N silent copies)."""
        processes = cpu_processes_launched()
        if self.use_cpu or not processes:
            return
        self.use_cpu = True
        if os.environ.get("RANK", "0") == "0":
            logger.warning(
                f"DistillationConfig: {processes} processes were launched and no accelerator is available, so they "
                "train as one job on CPU (gloo), as with use_cpu=True. Set use_cpu=True to say so yourself."
            )

    def _check_dsg_kd(self, terms: list[LossTerm]) -> None:
        """Terms whose teacher reads its own tokenization cannot be mixed with terms on the student's tokens."""
        token_terms = [t for t in terms if TEACHER in t.needs and TEACHER_INPUTS not in t.needs]
        if not token_terms or not any(TEACHER_INPUTS in t.needs for t in terms):
            return
        word_terms = [t for t in registered_terms() if TEACHER_INPUTS in t.needs and hasattr(self, t.weight)]
        fix = ", ".join(
            f"{name}=0 (now {getattr(self, name)})" for name in dict.fromkeys(t.weight for t in token_terms)
        )
        raise ValueError(
            f"DistillationConfig: {format_weights(word_terms, self, ' / ')} turn on DSG-KD / cross-tokenizer terms, "
            f"whose teacher reads its own tokenization, so its logits and token positions do not match the student's; "
            f"set {fix}."
        )

    def _check_on_policy(self, terms: list[LossTerm]) -> None:
        """Generated batches are scored by a live teacher on the student's tokens."""
        if not (self.lmbda > 0 or self.seq_kd):
            return
        setting = f"lmbda={self.lmbda}, seq_kd={self.seq_kd}"
        if self.teacher_cache is not None:
            raise ValueError(
                f"DistillationConfig: {setting} generates completions, which teacher_cache={self.teacher_cache!r} "
                "(the teacher's outputs on fixed inputs) cannot score: use a live teacher, or lmbda=0, seq_kd=False."
            )
        unaligned = self._unaligned_readers()
        if unaligned:
            raise ValueError(
                f"DistillationConfig: {setting} with {format_weights(unaligned, self)}: the teacher would need its "
                "own word alignment of each generated completion, which is not supported; set lmbda=0 and "
                "seq_kd=False, or those weights to 0."
            )
        if self.seq_kd and any(TEACHER_INPUTS in t.needs for t in terms):
            readers = [t for t in terms if TEACHER_INPUTS in t.needs]
            raise ValueError(
                f"DistillationConfig: seq_kd=True with {format_weights(readers, self)}: the teacher would generate in "
                "its own vocabulary, which the student cannot train on; set seq_kd=False (lmbda > 0 works: the "
                "teacher re-tokenizes the student's completions)."
            )
        if not any(LOGITS in t.needs and TEACHER in t.needs for t in terms):
            readers = weight_names(
                t for t in registered_terms() if {LOGITS, TEACHER} <= t.needs and TEACHER_INPUTS not in t.needs
            )
            raise ValueError(
                f"DistillationConfig: {setting} trains on generated completions scored by the teacher's logits, but "
                f"no logit term against a live teacher is on: set {' or '.join(readers)} > 0."
            )

    def _check_teacher_cache(self, terms: list[LossTerm]) -> None:
        if self.teacher_cache is None:
            return
        live = [t for t in terms if TEACHER in t.needs]
        if live:
            raise ValueError(
                f"DistillationConfig.teacher_cache={self.teacher_cache!r} holds the teacher's output distribution "
                f"only, but {format_weights(live, self)} need a live teacher: set them to 0 or drop teacher_cache."
            )
        if not any(TEACHER_CACHE in t.needs for t in terms):
            readers = weight_names(t for t in registered_terms() if TEACHER_CACHE in t.needs)
            raise ValueError(
                f"DistillationConfig.teacher_cache={self.teacher_cache!r} is set but {' and '.join(readers)}=0 (no "
                f"logit KD reads it): set {' or '.join(readers)} > 0 or drop teacher_cache."
            )
        if self.ddk_update_steps is not None:
            raise ValueError(
                f"DistillationConfig.teacher_cache with ddk_update_steps={self.ddk_update_steps}: DDK measures the "
                "teacher's loss on validation data, which the cache does not cover; use a live teacher for DDK."
            )
        if self.logit_loss == "fused":
            raise ValueError(
                "DistillationConfig.logit_loss='fused' needs the teacher's output head; with teacher_cache the "
                "student's logits are compared with the cached top-k: use logit_loss='auto' or 'logits'."
            )

    def _check_ddk(self) -> None:
        unaligned = self._unaligned_readers()
        if self.ddk_update_steps is not None and unaligned:
            raise ValueError(
                f"DistillationConfig.ddk_update_steps={self.ddk_update_steps} with {format_weights(unaligned, self)}: "
                "their teacher reads its own tokenization without the alignment DDK measures it on (DSG-KD's word "
                "terms); set ddk_update_steps=None (the cross-tokenizer terms uld_weight / span_kd_weight / "
                "span_uld_weight work with DDK, in bits per byte)."
            )
        if self.ddk_update_steps is not None and 0 < self.max_steps < self.ddk_update_steps:
            logger.warning(
                f"DistillationConfig.ddk_update_steps={self.ddk_update_steps} > max_steps={self.max_steps}: DDK "
                "never updates the domain mixture in this run (it stays at ddk_initial_weights)."
            )
        if self.ddk_min_weight > self.ddk_max_weight:
            raise ValueError(
                f"DistillationConfig.ddk_min_weight={self.ddk_min_weight} > ddk_max_weight={self.ddk_max_weight}: "
                "the lower bound of the domain weights must not exceed the upper one."
            )
        try:
            weights = parse_domain_weights(self.ddk_initial_weights)
        except ValueError as error:
            raise ValueError(f"DistillationConfig.ddk_initial_weights={self.ddk_initial_weights!r}: {error}") from None
        if weights is not None:
            total = sum(weights.values())
            if any(not w >= 0 for w in weights.values()) or abs(total - 1.0) > 1e-6:
                raise ValueError(
                    f"DistillationConfig.ddk_initial_weights={self.ddk_initial_weights!r}: weights must be >= 0 and "
                    f"sum to 1 (they sum to {total:g}); normalise them or use 'uniform'."
                )

    @cached_property
    def _setup_devices(self) -> torch.device:
        """As `TrainingArguments`, but processes on CPU (`use_cpu`, gloo) also wait at most `ddp_timeout` seconds for
        each other: transformers passes the timeout to the process group on accelerators only, so a hung or dead
        process used to hang the others for gloo's default 30 minutes."""
        from accelerate import PartialState

        on_cpu = self.use_cpu or os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes")
        several = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if on_cpu and several and not torch.distributed.is_initialized():
            PartialState(cpu=True, backend=self.ddp_backend, timeout=timedelta(seconds=self.ddp_timeout))
            if self.deepspeed:  # a DeepSpeed JSON: ZeRO-3's partitioned loading needs deepspeed.comm on that group
                import deepspeed

                deepspeed.init_distributed(dist_backend="gloo", timeout=timedelta(seconds=self.ddp_timeout))
        return TrainingArguments._setup_devices.func(self)

    @property
    def initial_domain_weights(self) -> dict[str, float] | None:
        """`ddk_initial_weights` parsed to `{domain: weight}`, or `None` for uniform."""
        return parse_domain_weights(self.ddk_initial_weights)

    def _check_choice(self, name: str, choices: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in choices:
            raise ValueError(f"DistillationConfig.{name}={value!r} is not supported; choose one of {list(choices)}.")

    @property
    def loss_terms(self) -> list[LossTerm]:
        """The registered loss terms that are on (weight > 0) under this config."""
        return active_terms(self)

    @property
    def loss_weights(self) -> dict[str, float]:
        """The weight of each registered loss term, keyed by its log name (live and cached KD share `loss_kd`)."""
        weights: dict[str, float] = {}
        for term in registered_terms():
            if hasattr(self, term.weight) and (term.log_name not in weights or term.is_on(self)):
                weights[term.log_name] = getattr(self, term.weight)
        return weights

    def _unaligned_readers(self) -> list[LossTerm]:
        """The terms that are on whose teacher reads its own tokenization without the character alignment."""
        return [t for t in active_terms(self) if TEACHER_INPUTS in t.needs and ALIGNMENT not in t.needs]

    def _needs(self, *needs: str) -> bool:
        return needs_any(active_terms(self), *needs)

    @property
    def uses_teacher(self) -> bool:
        """Whether any term reads the teacher (live or cached)."""
        return self._needs(TEACHER, TEACHER_CACHE)

    @property
    def needs_teacher_model(self) -> bool:
        """Whether a teacher model must be loaded (a term reads the live teacher's outputs)."""
        return self._needs(TEACHER)

    @property
    def dsg_kd(self) -> bool:
        """Whether a term has the teacher read its own tokenization (DSG-KD's `teacher_*` inputs)."""
        return self._needs(TEACHER_INPUTS)

    @property
    def matches_hidden_states(self) -> bool:
        """Whether a term compares hidden states through projections (token or word level)."""
        return self._needs(PROJECTIONS)

    @property
    def matches_attentions(self) -> bool:
        """Whether a term compares attention maps (token or word level): needs eager attention."""
        return self._needs(ATTENTIONS)

    @property
    def needs_labels(self) -> bool:
        """Whether a term reads `labels` (a data set without labels trains the other terms only)."""
        return self._needs(LABELS)
