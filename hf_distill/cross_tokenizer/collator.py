"""Collators that tokenize each raw text twice, with the student's and the teacher's tokenizers."""

from __future__ import annotations

from typing import Any

import torch

from ..dsg_kd.alignment import check_fast_tokenizer

TEACHER_PREFIX = "teacher_"
_EXTRA_ENCODING_KEYS = ("offset_mapping", "special_tokens_mask")


class TwoTokenizerCollator:
    """
    Base of the collators whose teacher reads its own tokenization of the same text ([`DSGKDCollator`],
    [`CrossTokenizerCollator`]): both encodings of a batch of texts (padded, truncated to `max_length`, with offsets
    mappings and special-token masks), and the model inputs of both, the teacher's prefixed `teacher_`.

    Args:
        tokenizer (`PreTrainedTokenizerFast`): The student's tokenizer.
        teacher_tokenizer (`PreTrainedTokenizerFast`): The teacher's tokenizer.
        max_length (`int`): Truncation length of both tokenizations.
        text_column (`str`): Column of the raw text.
    """

    def __init__(self, tokenizer: Any, teacher_tokenizer: Any, max_length: int = 128, text_column: str = "text"):
        check_fast_tokenizer(tokenizer, "student")
        check_fast_tokenizer(teacher_tokenizer, "teacher")
        self.tokenizer, self.teacher_tokenizer = tokenizer, teacher_tokenizer
        self.max_length, self.text_column = max_length, text_column

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Dataset columns this collator reads (kept by the trainer through `remove_unused_columns`)."""
        return (self.text_column,)

    def _encode(self, tokenizer: Any, texts: list[str]) -> dict[str, Any]:
        return tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )

    def encode(self, features: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
        """`(texts, student encoding, teacher encoding)` of a batch of examples."""
        if self.text_column not in features[0]:
            raise ValueError(
                f"{type(self).__name__}: the examples have no {self.text_column!r} column (columns: "
                f"{list(features[0])}): set text_column, or keep the raw text in the dataset."
            )
        texts = [f[self.text_column] for f in features]
        return texts, self._encode(self.tokenizer, texts), self._encode(self.teacher_tokenizer, texts)

    @staticmethod
    def model_inputs(student: dict[str, Any], teacher: dict[str, Any]) -> dict[str, Any]:
        """The student's inputs and the teacher's, prefixed `teacher_` (offsets and special masks dropped)."""
        batch = {k: v for k, v in student.items() if k not in _EXTRA_ENCODING_KEYS}
        batch.update({TEACHER_PREFIX + k: v for k, v in teacher.items() if k not in _EXTRA_ENCODING_KEYS})
        return batch


def text_labels(encoding: dict[str, Any]) -> torch.Tensor:
    """Causal-LM labels of an encoding: the token ids, -100 at padding and special tokens (BOS, EOS, ...)."""
    keep = encoding["attention_mask"].bool() & ~encoding["special_tokens_mask"].bool()
    return torch.where(keep, encoding["input_ids"], -100)


class CrossTokenizerCollator(TwoTokenizerCollator):
    r"""
    Collator for cross-tokenizer logit distillation (`uld_weight > 0`): causal-LM batches of raw text for a student
    and a teacher with different tokenizers (and vocabularies).

    Each text is tokenized by both; the batch holds the student's `input_ids`, `attention_mask` and `labels`, and the
    teacher's own `teacher_input_ids`, `teacher_attention_mask` and `teacher_labels`. Labels are the text's tokens:
    padding and special tokens (BOS, EOS, `[CLS]`, ...) are -100, so both models predict the same text.

    Args:
        tokenizer (`PreTrainedTokenizerFast`): The student's tokenizer (needs a pad token).
        teacher_tokenizer (`PreTrainedTokenizerFast`): The teacher's tokenizer (needs a pad token).
        max_length (`int`): Truncation length of both tokenizations.
        text_column (`str`): Column of the raw text.
    """

    def __init__(self, tokenizer: Any, teacher_tokenizer: Any, max_length: int = 128, text_column: str = "text"):
        super().__init__(tokenizer, teacher_tokenizer, max_length, text_column)
        for role, tok in (("student", tokenizer), ("teacher", teacher_tokenizer)):
            if tok.pad_token_id is None:
                raise ValueError(
                    f"CrossTokenizerCollator: the {role} tokenizer has no pad token: set one (e.g. "
                    "tokenizer.pad_token = tokenizer.eos_token)."
                )

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        _, student, teacher = self.encode(features)
        batch = self.model_inputs(student, teacher)
        batch["labels"], batch[TEACHER_PREFIX + "labels"] = text_labels(student), text_labels(teacher)
        return batch
