"""On-policy batches (GKD): with probability `lmbda` a batch's completions are replaced by the student's own samples,
otherwise (with `seq_kd`) by the teacher's; the logit terms are then taken on the generated tokens only."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch
from accelerate.utils import send_to_device
from torch import nn
from transformers import GenerationConfig

from .collator import PROMPT_KEYS

STUDENT, TEACHER = "student", "teacher"


def draw_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (the same on every process for the same parts)."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def batch_source(args: Any, step: int, micro: int) -> str | None:
    """Who generates micro-batch `micro` of optimizer step `step`: `"student"` with probability `args.lmbda`, else
    `"teacher"` with `args.seq_kd`, else `None` (the data's own completions); a draw seeded by `(seed, step, micro)`,
    the same on every process and in a resumed run, that leaves the global random state alone."""
    generator = torch.Generator().manual_seed(draw_seed(args.seed, step, micro))
    if torch.rand((), generator=generator).item() < args.lmbda:
        return STUDENT
    return TEACHER if args.seq_kd else None


def completion_batch(
    sequences: torch.Tensor, prompt_mask: torch.Tensor, eos_token_ids: list[int] | None, pad_token_id: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """
    A training batch from `generate`'s output on left-padded prompts.

    The completion of each row runs to its first EOS token, included (all of it when no EOS was generated); the rest
    is padding. Each row is then shifted left so that its prompt starts at position 0 and the padding is at the right
    (the layout of [`PromptCompletionCollator`]'s training batches, so positions are those of an unpadded sequence).
    `labels` are the completion tokens; the prompt and the padding are -100.

    Args:
        sequences (`torch.Tensor` of shape `(B, P + C)`): Prompts (left-padded, width `P`) and generated tokens.
        prompt_mask (`torch.Tensor` of shape `(B, P)`): The prompts' attention mask.
        eos_token_ids (`list[int]`, *optional*): Tokens that end a completion.
        pad_token_id (`int`): Written at the padded positions of `input_ids`.

    Returns:
        `(batch, completion_lengths)`: `input_ids`, `attention_mask`, `labels` of shape `(B, P + C)`, and the number
        of completion tokens of each row.
    """
    width = prompt_mask.shape[1]
    completion = sequences[:, width:]
    keep = torch.ones_like(completion, dtype=torch.bool)
    if eos_token_ids:
        is_eos = torch.isin(completion, torch.tensor(eos_token_ids, device=completion.device))
        # positions after the first EOS: at least one EOS strictly before them
        keep = (is_eos.long().cumsum(1) - is_eos.long()) == 0
    mask = torch.cat([prompt_mask.bool(), keep], dim=1)
    labels = torch.where(mask, sequences, -100)
    labels[:, :width] = -100
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # kept tokens first, in their order
    mask = mask.gather(1, order)
    batch = {
        "input_ids": torch.where(mask, sequences.gather(1, order), pad_token_id),
        "attention_mask": mask.long(),
        "labels": labels.gather(1, order),
    }
    return batch, keep.sum(1)


class OnPolicyBatches:
    """
    Replaces the completions of training batches by generated ones (GKD, Agarwal et al. 2024).

    For micro-batch `micro` of optimizer step `step` a uniform draw `u` seeded by `(seed, step, micro)` (so every
    process makes the same decision, and a resumed run the same ones) picks: the student's own samples when
    `u < lmbda` (on-policy), else the teacher's when `seq_kd` (sequence-level KD), else the batch as collated
    (off-policy). Generation runs without gradients in eval mode, from the batch's `prompts`, sampled with a seed of
    `(seed, step, micro, process)` in a forked RNG (training's random state is untouched).

    Args:
        args (`DistillationConfig`): `lmbda`, `seq_kd`, `max_new_tokens`, `generation_temperature` (0: greedy),
            `generation_top_k`, `generation_top_p`, `seed`, `gradient_checkpointing`.
        tokenizer (`PreTrainedTokenizerBase`): Gives the pad and EOS tokens.
        retokenize (`Callable`, *optional*): Adds the teacher's own tokenization of a generated batch (cross-tokenizer
            terms: [`CrossTokenizerCollator.for_generated`], which replaces the collated batch's teacher keys and
            alignment).
    """

    def __init__(
        self, args: Any, tokenizer: Any, retokenize: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    ):
        if tokenizer is None or tokenizer.pad_token_id is None:
            raise ValueError(
                f"lmbda={args.lmbda} / seq_kd={args.seq_kd}: generating completions needs the student's tokenizer "
                "with a pad token as `processing_class` (e.g. tokenizer.pad_token = tokenizer.eos_token)."
            )
        self.args, self.tokenizer, self.retokenize = args, tokenizer, retokenize

    @staticmethod
    def enabled(args: Any) -> bool:
        """Whether batches may be generated under `args`."""
        return args.lmbda > 0 or args.seq_kd

    def source(self, step: int, micro: int) -> str | None:
        """Who generates micro-batch `micro` of step `step` (see [`batch_source`])."""
        return batch_source(self.args, step, micro)

    def generation_config(self, model: nn.Module) -> GenerationConfig:
        """Sampling settings of the run; EOS from the model's generation config, else the tokenizer's."""
        args = self.args
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        sampling = args.generation_temperature > 0
        kwargs = (
            {
                "temperature": args.generation_temperature,
                "top_k": args.generation_top_k,
                "top_p": args.generation_top_p,
            }
            if sampling
            else {}
        )
        return GenerationConfig(
            max_new_tokens=args.max_new_tokens, do_sample=sampling, pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=eos, use_cache=not args.gradient_checkpointing, **kwargs,
        )  # fmt: skip

    def check_prompts(self, batch: dict[str, Any]) -> None:
        """Refuse a training batch without the prompts generation starts from (checked on the first batch of every
        training start, before any step, and on each generated batch).

        Raises:
            `ValueError`: naming the missing keys and the collator to use.
        """
        missing = [key for key in PROMPT_KEYS if key not in batch]
        if missing:
            raise ValueError(
                f"lmbda={self.args.lmbda} / seq_kd={self.args.seq_kd} need the prompts in every training batch "
                f"(missing {missing}): use PromptCompletionCollator as data_collator."
            )

    def generate(
        self, model: nn.Module, batch: dict[str, Any], seed: int, synced_gpus: bool = False
    ) -> tuple[dict[str, Any], torch.Tensor]:
        """Generate completions of `batch["prompts"]` with `model`; return the batch that trains on them (other keys,
        e.g. domain ids, kept) and the completion lengths."""
        self.check_prompts(batch)
        prompts, prompt_mask = batch["prompts"], batch["prompt_attention_mask"]
        config = self.generation_config(model)
        devices = [prompts.device] if prompts.device.type == "cuda" else []
        was_training = model.training
        model.eval()  # no dropout while sampling
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                torch.manual_seed(seed)
                sequences = model.generate(
                    input_ids=prompts, attention_mask=prompt_mask, generation_config=config, synced_gpus=synced_gpus
                )
        finally:
            model.train(was_training)
        eos = config.eos_token_id
        eos = [eos] if isinstance(eos, int) else eos
        generated, lengths = completion_batch(sequences, prompt_mask, eos, self.tokenizer.pad_token_id)
        rest = {k: v for k, v in batch.items() if k not in (*PROMPT_KEYS, *generated)}
        batch = {**generated, **rest}
        if self.retokenize is not None:
            batch = send_to_device(self.retokenize(batch), prompts.device)
        return batch, lengths
