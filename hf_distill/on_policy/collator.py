"""`PromptCompletionCollator`: prompt/completion data (TRL's formats) as training batches plus the prompts alone."""

from __future__ import annotations

from typing import Any

import torch

PROMPT_KEYS = ("prompts", "prompt_attention_mask")  # the generation inputs: read by on-policy batches, never the model


def pad_rows(rows: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    """Rows of ids padded with `value` to the longest (on the left with `left`), as one `(B, T)` tensor."""
    width = max(1, max(len(r) for r in rows))
    return torch.tensor([([value] * (width - len(r)) + r) if left else (r + [value] * (width - len(r))) for r in rows])


class PromptCompletionCollator:
    r"""
    Collator for prompt/completion data, in TRL's formats: `prompt` and `completion` text columns, conversational
    `prompt` / `completion` lists of messages, or one `messages` column whose last message (the assistant's) is the
    completion. Conversations are rendered with the tokenizer's chat template.

    Each batch holds the training sequence `prompt + completion` right-padded (`input_ids`, `attention_mask`) with
    `labels` that are -100 on the prompt and the padding, so off-policy training learns the completions only; and the
    prompts alone, left-padded for generation (`prompts`, `prompt_attention_mask`), which
    [`DistillationTrainer`] reads when `lmbda > 0` or `seq_kd` replaces the completion by a generated one.

    Plain-text prompts are tokenized with the tokenizer's special tokens (e.g. BOS), completions without and followed
    by the EOS token, which is learned (a generated completion also ends at its first EOS). Prompts keep their last
    `max_prompt_length` tokens; the training sequence is cut to `max_length` at the end of the completion.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): The student's tokenizer; it needs a pad token.
        max_length (`int`): Longest training sequence (prompt + completion).
        max_prompt_length (`int`, *optional*): Longest prompt; defaults to `max_length`.
        prompt_column (`str`): Column of the prompt.
        completion_column (`str`): Column of the completion.
        messages_column (`str`): Column of a whole conversation.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 512,
        max_prompt_length: int | None = None,
        prompt_column: str = "prompt",
        completion_column: str = "completion",
        messages_column: str = "messages",
    ):
        if tokenizer.pad_token_id is None:
            raise ValueError(
                f"PromptCompletionCollator: the tokenizer {type(tokenizer).__name__} has no pad token: set one, e.g. "
                "tokenizer.pad_token = tokenizer.eos_token."
            )
        if max_prompt_length is not None and max_prompt_length >= max_length:
            raise ValueError(
                f"PromptCompletionCollator: max_prompt_length={max_prompt_length} >= max_length={max_length} leaves "
                "no room for a completion (max_length counts prompt + completion): lower max_prompt_length or raise "
                "max_length."
            )
        self.tokenizer, self.max_length = tokenizer, max_length
        self.max_prompt_length = max_prompt_length if max_prompt_length is not None else max_length
        self.prompt_column, self.completion_column = prompt_column, completion_column
        self.messages_column = messages_column

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Dataset columns this collator reads (kept by the trainer through `remove_unused_columns`)."""
        return (self.prompt_column, self.completion_column, self.messages_column)

    def _template(self, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"PromptCompletionCollator: conversational data needs a chat template, and the tokenizer "
                f"{type(self.tokenizer).__name__} has none: set tokenizer.chat_template, or give plain-text "
                f"{self.prompt_column!r} / {self.completion_column!r} columns."
            )
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _conversation(self, prompt: list[dict[str, Any]], completion: list[dict[str, Any]]) -> tuple[str, str]:
        prompt_text = self._template(prompt, generation_prompt=True)
        full = self._template(prompt + completion, generation_prompt=False)
        if not full.startswith(prompt_text):
            raise ValueError(
                "PromptCompletionCollator: the chat template renders the conversation without its prompt as a prefix, "
                "so the completion cannot be separated: use plain-text prompt / completion columns."
            )
        return prompt_text, full[len(prompt_text) :]

    def texts(self, feature: dict[str, Any]) -> tuple[str, str, bool]:
        """`(prompt text, completion text, conversational)` of one example."""
        if self.messages_column in feature and feature[self.messages_column] is not None:
            messages = list(feature[self.messages_column])
            if len(messages) < 2 or messages[-1].get("role") != "assistant":
                raise ValueError(
                    f"PromptCompletionCollator: each {self.messages_column!r} conversation needs at least two "
                    "messages, the last one the assistant's (the completion)."
                )
            return (*self._conversation(messages[:-1], messages[-1:]), True)
        if self.prompt_column not in feature:
            raise ValueError(
                f"PromptCompletionCollator: the examples have neither {self.prompt_column!r} nor "
                f"{self.messages_column!r} (columns: {list(feature)}): set prompt_column / messages_column."
            )
        prompt, completion = feature[self.prompt_column], feature.get(self.completion_column) or ""
        if isinstance(prompt, list):
            return (*self._conversation(list(prompt), list(completion or [])), True)
        return prompt, completion, False

    def encode(self, feature: dict[str, Any]) -> tuple[list[int], list[int]]:
        """The prompt's and the completion's token ids of one example (truncated)."""
        prompt, completion, conversational = self.texts(feature)
        tokenizer = self.tokenizer
        prompt_ids = tokenizer(prompt, add_special_tokens=not conversational)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] if completion else []
        eos = tokenizer.eos_token_id
        if not conversational and eos is not None and completion and completion_ids[-1:] != [eos]:
            completion_ids = completion_ids + [eos]
        if not prompt_ids:
            raise ValueError(
                f"PromptCompletionCollator: an example's prompt has no token ({prompt!r}): a completion is generated "
                "from its prompt, so drop the examples with empty prompts."
            )
        prompt_ids = prompt_ids[-self.max_prompt_length :]
        return prompt_ids, completion_ids[: max(0, self.max_length - len(prompt_ids))]

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        encoded = [self.encode(f) for f in features]
        pad = self.tokenizer.pad_token_id
        sequences = [p + c for p, c in encoded]
        labels = [[-100] * len(p) + c for p, c in encoded]
        prompts = [p for p, _ in encoded]
        return {
            "input_ids": pad_rows(sequences, pad),
            "attention_mask": pad_rows([[1] * len(s) for s in sequences], 0),
            "labels": pad_rows(labels, -100),
            "prompts": pad_rows(prompts, pad, left=True),
            "prompt_attention_mask": pad_rows([[1] * len(p) for p in prompts], 0, left=True),
        }
