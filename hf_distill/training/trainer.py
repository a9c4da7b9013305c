"""`DistillationTrainer`: a `transformers.Trainer` that distils a frozen teacher into the student it trains.

Every `Trainer` method this package overrides is in this file; the work is done by small objects with explicit
inputs: the teacher set-up ([`TeacherSetup`]), the loss terms ([`TermComputer`]), the training domains and their
evaluator ([`TrainingDomains`], [`DomainEvaluator`]) and the student module ([`DistillationStudent`]).
"""

from __future__ import annotations

import inspect
import json
import os
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, Trainer
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINING_ARGS_NAME
from transformers.trainer_utils import HubStrategy
from transformers.utils import find_labels, logging

from ..alignment import attention_layer_pairs
from ..config import DistillationConfig
from ..cross_tokenizer.collator import find_cross_tokenizer_collator, warn_if_one_vocabulary
from ..ddk import DDKAttach, DDKCallback, DDKParts, DomainEvaluator, DomainWeightedSampler, TrainingDomains
from ..ddk.data import DOMAIN_IDS
from ..ddk.stream import StreamMixture, stream_state_mismatch
from ..files import write_json_atomic
from ..losses import HiddenProjector
from ..modeling import base_model, output_size
from ..on_policy import STUDENT, OnPolicyBatches, draw_seed, gathered_for_generation
from ..parallel import check_engine_saves, shards_parameters
from ..redact import known_tokens, redact_exception
from ..teacher_cache import TeacherCacheCollator
from .checkpoints import (
    CHECKPOINT_FOLDER,
    checkpoint_problem,
    last_complete_checkpoint,
    training_state_losses,
    training_state_problems,
    training_state_refusal,
)
from .computer import TermComputer
from .guards import check_finite_state
from .publish import push_staged_student, student_card
from .student import PROJECTOR_NAME, DistillationStudent, student_of
from .student_setup import layer_pairs_and_projections, load_student, student_module
from .teacher import TeacherSetup

logger = logging.get_logger(__name__)

__all__ = ["PROJECTOR_NAME", "STREAM_STATE", "DistillationTrainer"]

STREAM_STATE = "domain_stream_{}.json"  # each process's position in a DomainStream, in every checkpoint


class DistillationTrainer(Trainer):
    """
    A [`~transformers.Trainer`] that trains `model` (the student) against a frozen `teacher_model`.

    `compute_loss` runs the teacher (without gradients) and the student once each and adds the registered loss terms
    that [`DistillationConfig`] turns on (see `hf_distill.terms`): the task cross-entropy, the logit divergence at a
    temperature, the hidden-state distance at mapped layers (through learned projections when widths differ), the
    attention-map distance, and DSG-KD's word-level terms. Each term is normalised over its count (label tokens,
    attended tokens or domain words) of the whole accumulated batch, so the loss does not depend on how a batch is
    split for gradient accumulation, and each is logged separately (`loss_ce`, `loss_kd`, `loss_hidden`, ...).

    The teacher is put in eval mode, frozen, cast to the student's compute dtype, placed by accelerate (sharded under
    FSDP and DeepSpeed ZeRO-3), and never saved or optimised. With `args.teacher_cache` (a directory written by
    [`build_teacher_cache`]) no teacher is loaded: logit KD reads the teacher's cached top-k log-probabilities.
    The learned projections live with the student in one [`DistillationStudent`] module (one optimizer, clipped,
    synchronised and sharded together); `save_model` and `push_to_hub` write the student alone, and each checkpoint
    also holds `distill_projections.safetensors`, which `resume_from_checkpoint` restores.

    Headless students and teachers (`AutoModel`, e.g. sentence encoders) distil with hidden-state / attention terms on
    data without labels; a student with an output head that no term reads (e.g. `BertForMaskedLM` with hidden terms
    only) runs its encoder alone.

    A training set with a `args.domain_column` column (or a dict of domain name -> dataset) is sampled by a
    [`DomainWeightedSampler`] with the mixture `args.ddk_initial_weights`; with `args.ddk_update_steps` a
    [`DDKCallback`] re-weights it toward the domains where the student lags the teacher most (DDK), measured on
    `ddk_eval_dataset`. The share of each domain in the training batches is logged as `domain_share/<domain>`.
    A [`DomainStream`] (per-domain streaming sources) is drawn the same way, each process reading its own part of every
    source; each checkpoint records every process's position in it (`domain_stream_<rank>.json`), from which a resumed
    run continues without reading the data again.

    Args:
        model (`PreTrainedModel` or `str`): The student, or a hub id / local path to load it from (safetensors).
        teacher_model (`PreTrainedModel` or `str`, *optional*): The teacher, or a hub id / local path (safetensors,
            `trust_remote_code` only if `args.teacher_trust_remote_code`); not needed with `args.teacher_cache` or
            when every teacher term is 0.
        args (`DistillationConfig`): Training and distillation settings.
        peft_config (`peft.PeftConfig`, *optional*): When given, the student is wrapped with `get_peft_model` and
            only its adapters are trained.
        ddk_eval_dataset (`Dataset` or `dict[str, Dataset]`, *optional*): Held-out data of every domain for DDK (a
            dataset with the domain column, or one per domain); defaults to `eval_dataset` when it has domains.
        **kwargs: Every other [`~transformers.Trainer`] argument (`train_dataset`, `data_collator`,
            `processing_class`, `callbacks`, ...). `processing_class` (the tokenizer) also tells the real vocabulary
            size when the teacher's and student's vocabularies differ by padding rows.
    """

    _skipped_state: frozenset[str] = frozenset()  # training-state files a resume goes on without (set by `train`)
    _prompts_checked = False  # on-policy: whether this training start's first batch has its prompts

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
        self._hub_token, args.hub_token = args.hub_token, None  # never in training_args.bin
        self.model_card_info: dict[str, Any] = {}
        self._resuming_from: str | None = None  # the checkpoint a DomainStream resumes from, during train()
        if ddk_eval_dataset is not None and args.ddk_update_steps is None:
            logger.warning("ddk_eval_dataset is ignored: DDK is off (set ddk_update_steps to turn it on).")
        train_dataset, self.domains = TrainingDomains.from_data(
            args, kwargs.get("train_dataset"), ddk_eval_dataset, kwargs.get("eval_dataset")
        )
        student, self.task = load_student(model, args, peft_config)
        tokenizer = kwargs.get("processing_class")
        self.on_policy = self._on_policy(args, tokenizer, kwargs.get("data_collator"))
        warn_if_one_vocabulary(args, kwargs.get("data_collator"))
        self.teacher_setup = TeacherSetup.build(teacher_model, student, args, self.task, tokenizer)
        if self.teacher_setup.cache is not None and train_dataset is not None:
            train_dataset = self.teacher_setup.cache.attach(train_dataset)
        kwargs["train_dataset"] = train_dataset
        layer_pairs, projections = layer_pairs_and_projections(args, student, self.teacher_setup.model)
        output_width = output_size(student, self.task) if self.teacher_setup.fused_logits else 0
        self.loss_terms = TermComputer(
            args, self.task, self.teacher_setup, layer_pairs, attention_layer_pairs(layer_pairs), output_width,
            lambda m: base_model(student_of(self.accelerator.unwrap_model(m))),
        )  # fmt: skip
        skip_head = not self.loss_terms.uses_logits and args.ddk_update_steps is None  # DDK reads the student's CE
        self._adjust_args(args)
        super().__init__(model=student_module(student, projections, skip_head), args=args, **kwargs)
        if args.label_names is None:  # the student's label arguments, not those of the student module
            self.label_names = find_labels(type(base_model(student)))
        self.can_return_loss = True  # evaluation computes the distillation loss, also on data without labels
        check_engine_saves(self.accelerator)
        self.teacher_setup.check_sharded_backend(self.accelerator, args)
        self.teacher_setup.place(self.accelerator)
        if self.teacher_setup.cache is not None:
            self.data_collator = TeacherCacheCollator(self.data_collator, self.teacher_setup.cache)
        self._attach_domains(args)

    def _on_policy(self, args: DistillationConfig, tokenizer: Any, collator: Any) -> OnPolicyBatches | None:
        """The generator of on-policy / seq_kd batches (`lmbda > 0` or `seq_kd`), for causal LMs; with the
        cross-tokenizer terms, the teacher re-tokenizes each generated batch through the collator's
        `for_generated`."""
        if not OnPolicyBatches.enabled(args):
            return None
        if self.task != "causal_lm":
            raise ValueError(
                f"DistillationConfig.lmbda={args.lmbda} / seq_kd={args.seq_kd} generate completions, which needs a "
                f"causal LM student (the task is {self.task}): set lmbda=0 and seq_kd=False."
            )
        retokenize = None
        if args.dsg_kd:  # only the aligned cross-tokenizer terms pass the config's checks with on-policy batches
            cross = find_cross_tokenizer_collator(collator)
            if cross is None:
                raise ValueError(
                    f"DistillationConfig.lmbda={args.lmbda} with cross-tokenizer terms: the teacher re-tokenizes each "
                    "generated completion, which needs CrossTokenizerCollator (prompt / completion columns) as "
                    "data_collator."
                )
            retokenize = cross.for_generated
        return OnPolicyBatches(args, tokenizer or getattr(collator, "tokenizer", None), retokenize)

    @staticmethod
    def _adjust_args(args: DistillationConfig) -> None:
        """Hub pushes at the end only (checkpoints hold projections and optimizer state); DDK's state is restored on
        resume (the data stream depends on it)."""
        if args.push_to_hub and args.hub_strategy != HubStrategy.END:
            logger.warning(
                f"hub_strategy={args.hub_strategy.value!r} is set to 'end': hf_distill does not push checkpoints "
                "(they hold projections and optimizer state); the student is pushed by save_model() / push_to_hub()."
            )
            args.hub_strategy = HubStrategy.END
        if args.ddk_update_steps is not None and not args.restore_callback_states_from_checkpoint:
            logger.info("DDK restores its state on resume: restore_callback_states_from_checkpoint is set to True.")
            args.restore_callback_states_from_checkpoint = True

    def _attach_domains(self, args: DistillationConfig) -> None:
        """Domain ids in the batches, the per-domain evaluator, and DDK's callbacks."""
        if self.domains is not None:
            self.data_collator = self.domains.collator(self.data_collator)
        self.domain_evaluator = DomainEvaluator(
            self.data_collator, partial(self._remove_unused_columns, description="domain evaluation"),
            self.accelerator, args.per_device_eval_batch_size, args.seed, self.task, self.teacher_setup.vocab_size,
            args.logit_chunk_size, self.compute_loss_context_manager,
            self.domains.validation if self.domains is not None else None,
        )  # fmt: skip
        if args.ddk_update_steps is not None:
            parts = DDKParts(
                self.domains, self.domain_evaluator, self.teacher_setup.model, self.log, args.train_batch_size,
                args.ddk_eval_batches, args.ddk_eval_tokens,
            )  # fmt: skip
            self.add_callback(DDKAttach(self.callback_handler.callbacks, parts))
            self.add_callback(DDKCallback())

    # ---- the student and the teacher ---------------------------------------------------------------------------

    @property
    def student(self) -> nn.Module:
        """The 🤗 student being trained (without the projections or any distributed wrapper)."""
        return student_of(self.accelerator.unwrap_model(self.model))

    @property
    def projector(self) -> HiddenProjector | None:
        """The learned hidden-state projections (inside the student module), if any term uses them."""
        model = self.accelerator.unwrap_model(self.model)
        return model.projections if isinstance(model, DistillationStudent) else None

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher as placed by accelerate (`None` with a teacher cache or no teacher term)."""
        return self.teacher_setup.model

    @property
    def teacher_cache(self) -> Any:
        return self.teacher_setup.cache

    @property
    def vocab_size(self) -> int | None:
        """Logits are compared on their first `vocab_size` entries (the real vocabulary of padded heads)."""
        return self.teacher_setup.vocab_size

    @property
    def layer_pairs(self) -> list[tuple[int, int]]:
        return self.loss_terms.layer_pairs

    @property
    def attention_pairs(self) -> list[tuple[int, int]]:
        return self.loss_terms.attention_pairs

    @property
    def _metrics(self) -> dict[str, dict[str, list[torch.Tensor]]]:
        return self.loss_terms.metrics

    # ---- domains and DDK ---------------------------------------------------------------------------------------

    @property
    def domain_names(self) -> list[str] | None:
        return self.domains.names if self.domains is not None else None

    @property
    def domain_sampler(self) -> DomainWeightedSampler | None:
        """The sampler of the current (or last) training run, when the training set has domains."""
        return self.domains.sampler if self.domains is not None else None

    @property
    def ddk_callback(self) -> DDKCallback | None:
        """The live [`DDKCallback`] (the Trainer replaces it with one rebuilt from the checkpoint on resume)."""
        return next((c for c in self.callback_handler.callbacks if isinstance(c, DDKCallback)), None)

    def evaluate_domains(
        self, model: nn.Module | None = None, datasets: Any | None = None, max_batches: int | None = None
    ) -> dict[str, float]:
        """
        Mean token cross-entropy of `model` (the student by default, or the teacher) on each domain's held-out data
        (`exp` of it is the perplexity), over all processes; `datasets` (domain -> tokenized data with labels)
        default to the DDK validation sets, `max_batches` (per process and domain) to all. With
        [`CrossTokenizerCollator`] batches: nats per byte of the spans both tokenizations cover (the teacher reads its
        own). See [`DomainEvaluator`].
        """
        teacher = self.teacher is not None and any(
            model is m for m in (self.teacher, self.accelerator.unwrap_model(self.teacher))
        )
        return self.domain_evaluator.evaluate(self.model if model is None else model, datasets, max_batches, teacher)

    # ---- Trainer hooks: the loss -------------------------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: torch.device) -> tuple[list, Any]:
        """
        Take the micro-batches of one optimizer step and count the normalisers of every term over all of them (and
        over all processes under `average_tokens_across_devices`): label tokens, attended tokens, domain words. The
        counts reach [`compute_loss`] as `num_items_in_batch`.
        """
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        if self.on_policy is not None:  # the training loop's batches (the model may still be in eval mode at step 1)
            batches = [self._generated_batch(batch, micro) for micro, batch in enumerate(batches)]
        return batches, self.loss_terms.count_batches(batches, self.accelerator)

    def _generated_batch(self, batch: dict[str, Any], micro: int) -> dict[str, Any]:
        """Micro-batch `micro` of this step with its completions generated by the student (with probability `lmbda`)
        or the teacher (`seq_kd`), or as collated ([`OnPolicyBatches`]); logs `on_policy_share`, `seq_kd_share` and
        `generated_length` (mean completion tokens of the generated batches)."""
        if not self._prompts_checked:  # the first batch of this training start, whoever generates it
            self.on_policy.check_prompts(batch)
            self._prompts_checked = True
        step, metrics = self.state.global_step + 1, self._metrics["train"]
        source = self.on_policy.source(step, micro)
        device = batch["input_ids"].device
        metrics["on_policy_share"].append(torch.tensor(float(source == STUDENT), device=device))
        if self.args.seq_kd:
            metrics["seq_kd_share"].append(torch.tensor(float(source not in (None, STUDENT)), device=device))
        if source is None:
            return batch
        engine = self.model_wrapped if source == STUDENT else self.teacher
        model = self.student if source == STUDENT else self.accelerator.unwrap_model(self.teacher)
        seed = draw_seed(self.args.seed, step, micro, self.accelerator.process_index)
        with gathered_for_generation(engine, self.accelerator) as gathered:
            # sharded parameters not gathered (FSDP): every process must run as many forward passes as the others
            synced = shards_parameters(self.accelerator) and self.accelerator.num_processes > 1 and not gathered
            batch, lengths = self.on_policy.generate(model, batch, seed, synced_gpus=synced)
        metrics["generated_length"].append(lengths.float().mean())
        return batch

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: dict[str, torch.Tensor] | torch.Tensor | int | None = None,
    ):
        """
        Run teacher and student once each and return the weighted sum of the loss terms that are on.

        Args:
            model (`nn.Module`): The (wrapped) student.
            inputs (`dict`): The batch; `labels` are needed when a term reads them (CE, logit KD).
            return_outputs (`bool`): Also return the student outputs (without hidden states and attentions).
            num_items_in_batch (`dict[str, torch.Tensor]`, *optional*): The term normalisers of the whole accumulated
                batch ([`get_batch_samples`]); in training the loss is then already scaled for gradient
                accumulation. Otherwise (evaluation, or a plain label count) each term is normalised by this batch.

        Returns:
            The loss, or `(loss, outputs)` when `return_outputs`.
        """
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        domain_ids = inputs.pop(DOMAIN_IDS, None)
        whole_batch = model.training and isinstance(num_items_in_batch, dict)
        counts = num_items_in_batch if whole_batch else None
        # counts that cover every process: DDP averages the gradients, so undo its division
        scale = self.accelerator.num_processes if whole_batch and self.args.average_tokens_across_devices else 1
        loss, outputs = self.loss_terms.loss(model, inputs, labels, counts, scale, self.state.global_step + 1)
        if model.training and domain_ids is not None and self.domains is not None:
            for key, value in self.domains.shares(domain_ids).items():
                self._metrics["train"][key].append(value)
        self.loss_is_scaled_for_ga = whole_batch
        if return_outputs:
            keep = {
                k: v for k, v in outputs.items() if k not in ("hidden_states", "attentions", "projected_hidden_states")
            }
            return loss, type(outputs)(**keep)
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss term since the last log (averaged over processes) to the Trainer's logs; every
        record the callbacks receive (and the console prints) carries the optimizer `step`."""
        mode = "train" if self.model.training else "eval"
        logs["step"] = self.state.global_step  # in place, as the Trainer adds `epoch`: evaluate() returns `logs`
        if mode == "train" and "loss" not in logs:  # not a training log step (e.g. DDK's update log)
            return super().log(logs, start_time)
        means = self.loss_terms.pop_means(mode, self.accelerator)
        logs.update({k if mode == "train" else f"eval_{k}": v for k, v in means.items()})
        super().log(logs, start_time)

    # ---- Trainer hooks: data -----------------------------------------------------------------------------------

    def _set_signature_columns_if_needed(self) -> None:
        """The student's forward arguments (not the student module's `**kwargs`), plus the columns the collator
        reads (`required_columns`: the domain, DSG-KD's raw text)."""
        if self._signature_columns is None and isinstance(self.model, DistillationStudent):
            self._signature_columns = list(inspect.signature(base_model(self.model.student).forward).parameters)
            self._signature_columns += list({"label", "label_ids", *self.label_names})
        super()._set_signature_columns_if_needed()
        for column in getattr(self.data_collator, "required_columns", ()):
            if column not in self._signature_columns:
                self._signature_columns.append(column)

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        """A training set with domains is drawn by a new [`DomainWeightedSampler`] for each training run."""
        if self.domains is None:
            return super()._get_train_sampler(train_dataset)
        if self.args.train_sampling_strategy != "random":
            logger.warning(
                f"train_sampling_strategy={self.args.train_sampling_strategy!r} is ignored: the training set has "
                "domains, so examples are drawn by the DomainWeightedSampler."
            )
        return self.domains.new_sampler(self._data_seed())

    def _data_seed(self) -> int:
        return self.args.data_seed if self.args.data_seed is not None else self.args.seed

    def _stream_state_path(self, checkpoint: str) -> str:
        """This process's position in a [`DomainStream`], in `checkpoint`."""
        return os.path.join(checkpoint, STREAM_STATE.format(self.accelerator.process_index))

    def get_train_dataloader(self) -> DataLoader:
        """
        A [`DomainStream`] training set: a fresh run of the stream on this process (restored from the checkpoint
        being resumed), read in batches of `per_device_train_batch_size` by a plain `DataLoader` (the stream already
        reads this process's part only: accelerate must not shard or dispatch it again). Other sets: the Trainer's.
        """
        if self.domains is None or self.domains.stream is None:
            return super().get_train_dataloader()
        mixture = self.domains.start_stream(
            self._data_seed(), self.accelerator.process_index, self.accelerator.num_processes, self._train_batch_size
        )
        resume = self._resuming_from
        if resume is not None:  # checked by `check_resume` when training started
            with open(self._stream_state_path(resume)) as f:
                mixture.load_process_state(json.load(f))
        return DataLoader(
            self.domains.stream,
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            pin_memory=self.args.dataloader_pin_memory,
        )

    # ---- Trainer hooks: saving, resuming, publishing -----------------------------------------------------------

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """
        [`~transformers.Trainer.train`], resuming only from complete checkpoints: with `resume_from_checkpoint=True`
        the newest complete `checkpoint-N` of `output_dir` (a folder killed while being written is skipped with a
        log line); a given path must be a complete checkpoint.

        Raises:
            `ValueError`: `True` with no complete checkpoint, or a path that is not a complete checkpoint.
        """
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                where = f"output_dir={self.args.output_dir!r}"
                raise ValueError(f"resume_from_checkpoint=True: {where} holds no complete checkpoint to resume from.")
        self._skipped_state = self._resume_check(resume_from_checkpoint or None, warn=True)
        self._prompts_checked = False
        if self.domains is None or self.domains.stream is None:
            return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)
        # A DomainStream resumes from its saved position: the Trainer must not replay (re-read) the batches seen.
        self._resuming_from, skip = resume_from_checkpoint or None, self.args.ignore_data_skip
        self.args.ignore_data_skip = True
        try:
            return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)
        finally:
            self.args.ignore_data_skip, self._resuming_from = skip, None

    def check_resume(self, checkpoint: str | None) -> None:
        """
        Check that this trainer can resume from `checkpoint` (nothing to check for `None`), before anything trains:
        it is a complete checkpoint; its optimizer, scheduler and RNG files are there and readable (unless
        `resume_without_training_state`); with a [`DomainStream`], its stream position was written by a run of as
        many processes with the same `per_device_train_batch_size`. [`train`] runs it; a script may call it earlier
        (the recipes do, before their first step).

        Raises:
            `ValueError`: one line naming the checkpoint, the file or setting, and the fix.
        """
        self._resume_check(checkpoint)

    def _resume_check(self, checkpoint: str | None, warn: bool = False) -> frozenset[str]:
        """[`check_resume`]; returns the training-state files a resume goes on without (missing or unreadable, with
        `resume_without_training_state`), said in one warning when `warn`."""
        if checkpoint is None:
            return frozenset()
        if problem := checkpoint_problem(checkpoint):
            raise ValueError(f"resume_from_checkpoint={checkpoint!r} is not a complete checkpoint: {problem}.")
        problems = training_state_problems(checkpoint, self.args.world_size)
        if problems and not self.args.resume_without_training_state:
            raise ValueError(training_state_refusal(checkpoint, problems))
        if problems and warn:
            logger.warning(
                f"resume_from_checkpoint={checkpoint!r}: {training_state_losses(problems)} "
                "(resume_without_training_state=True)."
            )
        if self.domains is not None and self.domains.stream is not None:
            self._check_stream_state(checkpoint)
        return frozenset(problems)

    def _check_stream_state(self, checkpoint: str) -> None:
        """This process's position in the `DomainStream` of `checkpoint` was written by a run of as many processes with
        the same batch size."""
        path = self._stream_state_path(checkpoint)
        if not os.path.isfile(path):
            raise ValueError(
                f"resume_from_checkpoint={checkpoint!r} has no {os.path.basename(path)}: it was not written by a run "
                "on a DomainStream with this many processes; resume from such a checkpoint or start over."
            )
        with open(path) as f:
            state = json.load(f)
        processes = (self.accelerator.process_index, self.accelerator.num_processes)
        if mismatch := stream_state_mismatch(state, *processes, self._train_batch_size):
            raise ValueError(f"resume_from_checkpoint={checkpoint!r}: {mismatch}")

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """As the Trainer's, but a resume that goes on without an unreadable optimizer or scheduler state file
        (`resume_without_training_state`) starts both afresh instead of failing to read it."""
        if checkpoint and self._skipped_state & {OPTIMIZER_NAME, SCHEDULER_NAME}:
            return
        super()._load_optimizer_and_scheduler(checkpoint)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        """As the Trainer's, but an unreadable RNG file skipped with `resume_without_training_state` is not read."""
        name = "rng_state.pth" if self.args.world_size <= 1 else f"rng_state_{self.args.process_index}.pth"
        if checkpoint and name in self._skipped_state:
            return
        super()._load_rng_state(checkpoint)

    def release(self) -> None:
        """
        Release what the run holds across processes, at the end of a script (after saving and pushing): every process
        waits for the others, the DeepSpeed engines (student and teacher) are destroyed, every process waits again and
        the process group is destroyed (trackers are finished, as by `Accelerator.end_training`). Without it a
        multi-process run on gloo can abort at interpreter exit ("terminate called without an active exception"),
        after everything was written. Safe to call more than once and in a single process; the trainer cannot train
        or save across processes afterwards.
        """
        accelerator = self.accelerator
        grouped = torch.distributed.is_available() and torch.distributed.is_initialized()
        if grouped:
            accelerator.wait_for_everyone()
        for engine in dict.fromkeys((self.model_wrapped, self.teacher)):
            if hasattr(engine, "destroy"):
                engine.destroy()
        if grouped:
            accelerator.wait_for_everyone()
        accelerator.end_training()

    def _save_rng_state(self, output_dir: str) -> None:
        """Each process's RNG state and, with a [`DomainStream`], its position in the stream (before the Trainer's
        state, which is written last and marks the checkpoint complete)."""
        super()._save_rng_state(output_dir)
        if isinstance(self.domain_sampler, StreamMixture):
            write_json_atomic(self._stream_state_path(output_dir), self.domain_sampler.process_state())

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the student alone (`from_pretrained`-loadable); in a checkpoint also the learned projections. A
        student with non-finite weights is refused ([`NonFiniteError`]) before anything is written."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        state_dict = state_dict if state_dict is not None else self.model.state_dict()
        check_finite_state(state_dict, output_dir)
        if not isinstance(self.model, DistillationStudent):
            return super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return None
        os.makedirs(output_dir, exist_ok=True)
        student_state, projections = DistillationStudent.split_state_dict(state_dict)
        self.model.student.save_pretrained(output_dir, state_dict=student_state)
        if projections and CHECKPOINT_FOLDER.match(os.path.basename(os.path.normpath(output_dir))):
            DistillationStudent.save_projections(projections, output_dir)
        tokenizer = self.processing_class or getattr(self.data_collator, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        return None

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Load the student's weights (as the Trainer does, PEFT adapters included) and the projections."""
        if model is not None or not isinstance(self.model, DistillationStudent):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        super()._load_from_checkpoint(resume_from_checkpoint, model=self.model.student)
        if self.model.has_projection_weights():
            self.model.load_projections(resume_from_checkpoint)
        return None

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        super().init_hf_repo(token=token if token is not None else self._hub_token, private=private)

    def create_model_card(self, **kwargs: Any) -> None:
        """Write the distillation card to `output_dir/README.md` (main process); see [`model_card`]."""
        card = self.model_card(**kwargs)
        if self.is_world_process_zero():
            card.save(os.path.join(self.args.output_dir, "README.md"))

    def model_card(self, **kwargs: Any) -> Any:
        """The distillation card (`huggingface_hub.ModelCard`); keyword arguments update `model_card_info`
        (`dataset_name`, `results`, `teacher_name`, `tags`, `model_name`)."""
        self.model_card_info.update(kwargs)
        sampler = self.domain_sampler
        weights = dict(zip(sampler.domain_names, sampler.weights, strict=True)) if sampler is not None else None
        return student_card(self.args, self.student, self.teacher, self.layer_pairs, weights, self.model_card_info)

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """
        Upload the student, its tokenizer and a distillation model card to `args.hub_model_id` (blocking).

        Args:
            commit_message (`str`, *optional*): The commit message.
            blocking (`bool`): Ignored; the upload always completes before returning (the staged folder is removed
                afterwards).
            token (`str`, *optional*): A write token; defaults to `args.hub_token` (kept off the saved arguments) or
                the token of `huggingface-cli login`.
            revision (`str`, *optional*): Branch to push to; defaults to `args.hub_revision`.
            private (`bool`, *optional*): Visibility when the repository is created.
            kwargs: Update `model_card_info` (`dataset_name`, `results`, `teacher_name`, `tags`, `model_name`).

        Returns:
            `huggingface_hub.CommitInfo` on the main process, `None` on the others.

        Raises:
            The Hub's error, with credentials in its message (and its cause's) redacted ([`redact_exception`]).
        """
        token = token if token is not None else self._hub_token
        try:
            if self.hub_model_id is None:
                self.init_hf_repo(token=token, private=private)
            return push_staged_student(
                self.args.output_dir, lambda folder: self.save_model(folder, _internal_call=True),
                self.is_world_process_zero(), lambda: self.model_card(**kwargs), self.hub_model_id, token,
                commit_message or "End of training", revision or self.args.hub_revision,
            )  # fmt: skip
        except Exception as error:  # a Hub or proxy error page may echo the request's Authorization header
            raise redact_exception(error, known_tokens(token)) from error.__cause__
