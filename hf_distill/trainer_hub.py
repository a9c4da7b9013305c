"""Hub glue for `DistillationTrainer`: push the student (never projections or teacher) with a distillation card, and
keep the Hub token out of everything saved."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from transformers.utils import logging

from .hub import distillation_model_card, upload_student

logger = logging.get_logger(__name__)

STAGING_DIR = "_hub_upload"


class StudentHubMixin:
    """
    `push_to_hub` for a distillation run: the student is saved to a staging folder, only its weights, config and
    tokenizer are uploaded with a model card (`model_card_info` adds the dataset and results); checkpoints are never
    pushed (they hold projections and optimizer state). The Hub token is moved off `args` at start-up so that
    `training_args.bin` never contains it.
    """

    _hub_token: str | None = None
    model_card_info: dict[str, Any]

    def _take_hub_token(self, args: Any) -> None:
        self._hub_token, args.hub_token = args.hub_token, None
        self.model_card_info = {}

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        super().init_hf_repo(token=token if token is not None else self._hub_token, private=private)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        logger.warning_once(
            "hf_distill does not push checkpoints (they hold projections and optimizer state): the student is pushed "
            "by save_model() / push_to_hub() at the end."
        )

    def create_model_card(self, **kwargs: Any) -> None:
        """Write the distillation card to `output_dir/README.md` (main process); see [`model_card`]."""
        card = self.model_card(**kwargs)
        if self.is_world_process_zero():
            card.save(os.path.join(self.args.output_dir, "README.md"))

    def model_card(self, **kwargs: Any) -> Any:
        """The distillation card (`huggingface_hub.ModelCard`); keyword arguments update `model_card_info`
        (`dataset_name`, `results`, `teacher_name`, `tags`, `model_name`)."""
        self.model_card_info.update(kwargs)
        info, args = self.model_card_info, self.args
        sampler = getattr(self, "domain_sampler", None)
        weights = dict(zip(sampler.domain_names, sampler.weights, strict=True)) if sampler is not None else None
        losses = {name: getattr(args, name) for name in ("alpha_ce", "gamma") if getattr(args, name) > 0}
        if args.gamma > 0:
            losses.update(temperature=args.temperature, divergence=args.divergence)
        for name in ("hidden_weight", "attention_weight", "word_hidden_weight", "word_attention_weight"):
            if getattr(args, name) > 0:
                losses[name] = getattr(args, name)
        if args.ddk_update_steps is not None:
            losses.update(ddk_update_steps=args.ddk_update_steps, ddk_alpha=args.ddk_alpha)
        model = self.accelerator.unwrap_model(self.model)
        teacher = self.teacher
        return distillation_model_card(
            model_name=info.get("model_name") or (args.hub_model_id or Path(args.output_dir).name).split("/")[-1],
            student_base=getattr(model, "name_or_path", None),
            teacher=info.get("teacher_name") or (getattr(teacher, "name_or_path", None) if teacher else None),
            dataset=info.get("dataset_name"),
            losses=losses,
            layer_pairs=self.layer_pairs,
            domain_weights=weights,
            results=info.get("results"),
            extra_tags=info.get("tags") or (),
        )

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
        """
        token = token if token is not None else self._hub_token
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        staging = os.path.join(self.args.output_dir, STAGING_DIR)
        self.save_model(staging, _internal_call=True)  # every process: ZeRO-3 / FSDP gather the weights
        if not self.is_world_process_zero():
            return None
        try:
            self.model_card(**kwargs).save(os.path.join(staging, "README.md"))
            message, revision = commit_message or "End of training", revision or self.args.hub_revision
            return upload_student(staging, self.hub_model_id, token, message, revision)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
