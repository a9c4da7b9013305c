"""Collators that tokenize each raw text twice, with the student's and the teacher's tokenizers."""

from __future__ import annotations

from itertools import accumulate
from typing import Any

import torch
from transformers.utils import logging

from ..batch_keys import ALIGNMENT_KEYS, MATCHED_VOCAB, TEACHER_PREFIX
from ..dsg_kd.alignment import check_fast_tokenizer
from ..on_policy.collator import pad_rows
from .text_alignment import alignment_tensors, byte_offsets

logger = logging.get_logger(__name__)

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


def completion_labels(encoding: dict[str, Any], prompt_chars: list[int]) -> torch.Tensor:
    """[`text_labels`] without the tokens that start inside each row's prompt (its first `prompt_chars[b]`
    characters): prompt and chat-template tokens are told by their offsets, not their positions."""
    starts = encoding["offset_mapping"][..., 0]
    return text_labels(encoding).masked_fill(starts < torch.tensor(prompt_chars)[:, None], -100)


def matched_vocabulary(tokenizer: Any, teacher_tokenizer: Any) -> torch.Tensor:
    """`(M, 2)` pairs `(student id, teacher id)` of the tokens whose strings are equal in both vocabularies (the
    exact-match mapping of TRL GOLD's hybrid ULD), by teacher id."""
    student = tokenizer.get_vocab()
    pairs = sorted((teacher_id, student[token]) for token, teacher_id in teacher_tokenizer.get_vocab().items()
                   if token in student)  # fmt: skip
    return torch.tensor([(s, t) for t, s in pairs], dtype=torch.long).reshape(-1, 2)


class CrossTokenizerCollator(TwoTokenizerCollator):
    r"""
    Collator for cross-tokenizer logit distillation (`uld_weight`, `span_kd_weight`, `span_uld_weight`): causal-LM
    batches of raw text for a student and a teacher with different tokenizers (and vocabularies).

    Each text is tokenized by both; the batch holds the student's `input_ids`, `attention_mask` and `labels`, and the
    teacher's own `teacher_input_ids`, `teacher_attention_mask` and `teacher_labels`. Labels are the text's tokens:
    padding and special tokens (BOS, EOS, `[CLS]`, chat-template tokens, ...) are -100, so both models predict the
    same text. Examples are a `text` column, or `prompt` and `completion` text columns: then the two are one text and
    the labels are the tokens that start in the completion (the prompt's are -100), and the batch also holds the
    student's prompts alone, left-padded (`prompts`, `prompt_attention_mask`), for on-policy generation.

    The two tokenizations are aligned by their character offsets ([`align_row`]): `uld_student_mask` /
    `uld_teacher_mask` (ULD's pairs), `span_student` / `span_teacher` / `span_rows` / `span_bytes` (the spans both
    cover), and `matched_vocab` (the tokens whose strings both vocabularies hold).

    Args:
        tokenizer (`PreTrainedTokenizerFast`): The student's tokenizer (needs a pad token).
        teacher_tokenizer (`PreTrainedTokenizerFast`): The teacher's tokenizer (needs a pad token).
        max_length (`int`): Truncation length of both tokenizations.
        text_column (`str`): Column of the raw text.
        prompt_column (`str`): Column of the prompt (when there is no `text_column`).
        completion_column (`str`): Column of the completion.
    """

    def __init__(
        self,
        tokenizer: Any,
        teacher_tokenizer: Any,
        max_length: int = 128,
        text_column: str = "text",
        prompt_column: str = "prompt",
        completion_column: str = "completion",
    ):
        super().__init__(tokenizer, teacher_tokenizer, max_length, text_column)
        for role, tok in (("student", tokenizer), ("teacher", teacher_tokenizer)):
            if tok.pad_token_id is None:
                raise ValueError(
                    f"CrossTokenizerCollator: the {role} tokenizer has no pad token: set one (e.g. "
                    "tokenizer.pad_token = tokenizer.eos_token)."
                )
        self.prompt_column, self.completion_column = prompt_column, completion_column
        self.matched_vocab = matched_vocabulary(tokenizer, teacher_tokenizer)

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Dataset columns this collator reads (kept by the trainer through `remove_unused_columns`)."""
        return (self.text_column, self.prompt_column, self.completion_column)

    def texts(self, features: list[dict[str, Any]]) -> tuple[list[str], list[int]]:
        """The text of each example and its prompt's length in characters (0 for plain text)."""
        if self.text_column in features[0]:
            return [f[self.text_column] for f in features], [0] * len(features)
        if self.prompt_column in features[0] and self.completion_column in features[0]:
            prompts = [f[self.prompt_column] for f in features]
            texts = [p + f[self.completion_column] for p, f in zip(prompts, features, strict=True)]
            return texts, [len(p) for p in prompts]
        raise ValueError(
            f"CrossTokenizerCollator: the examples have neither a {self.text_column!r} column nor "
            f"{self.prompt_column!r} and {self.completion_column!r} (columns: {list(features[0])}): set "
            "text_column, or prompt_column and completion_column."
        )

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        texts, prompt_chars = self.texts(features)
        student, teacher = self._encode(self.tokenizer, texts), self._encode(self.teacher_tokenizer, texts)
        batch = self.model_inputs(student, teacher)
        batch["labels"] = completion_labels(student, prompt_chars)
        batch[TEACHER_PREFIX + "labels"] = completion_labels(teacher, prompt_chars)
        if any(prompt_chars):
            prompts = self.tokenizer([t[:n] for t, n in zip(texts, prompt_chars, strict=True)], truncation=True,
                                     max_length=self.max_length)["input_ids"]  # fmt: skip
            batch["prompts"] = pad_rows(prompts, self.tokenizer.pad_token_id, left=True)
            batch["prompt_attention_mask"] = pad_rows([[1] * len(p) for p in prompts], 0, left=True)
        return self.aligned(batch, texts, student["offset_mapping"].tolist(), teacher["offset_mapping"].tolist())

    def _byte_offsets(self, tokenizer: Any, texts: list[str], offsets: list, ids: torch.Tensor) -> list:
        return [byte_offsets(text, row, tokenizer.convert_ids_to_tokens(row_ids))
                for text, row, row_ids in zip(texts, offsets, ids.tolist(), strict=True)]  # fmt: skip

    def aligned(
        self,
        batch: dict[str, Any],
        texts: list[str],
        student_offsets: list,
        teacher_offsets: list,
        student_targets: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """`batch` with the alignment of its two tokenizations ([`alignment_tensors`], on [`byte_offsets`] of the
        character offsets) and `matched_vocab`; the targets are the labelled tokens (`student_targets`: the
        student's, when not all of its labels)."""
        if student_targets is None:
            student_targets = batch["labels"].ne(-100)
        student_offsets = self._byte_offsets(self.tokenizer, texts, student_offsets, batch["input_ids"])
        teacher_offsets = self._byte_offsets(self.teacher_tokenizer, texts, teacher_offsets,
                                             batch[TEACHER_PREFIX + "input_ids"])  # fmt: skip
        batch.update(
            alignment_tensors(
                student_offsets,
                student_targets.tolist(),
                teacher_offsets,
                batch[TEACHER_PREFIX + "labels"].ne(-100).tolist(),
                batch["input_ids"].shape[1],
                batch[TEACHER_PREFIX + "input_ids"].shape[1],
            )  # fmt: skip
        )
        batch[MATCHED_VOCAB] = self.matched_vocab
        return batch

    def for_generated(self, batch: dict[str, Any]) -> dict[str, Any]:
        """
        The teacher's side of a batch of generated completions (on-policy): `batch` (the student's prompt +
        completion rows, prompt first, padding right, `labels` on the completion) with the teacher's encoding of the
        same text and the alignment (replacing those of the collated batch). The text is the student's decoding of
        each row (special tokens skipped); each student token's characters are where its decoded prefix ends
        ([`decoded_offsets`]); the teacher reads its own encoding of that text, labelled from the end of the decoded
        prompt.
        """
        texts, prompt_chars, student_offsets = [], [], []
        for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True):
            ids, labels = ids[mask.bool()].tolist(), labels[mask.bool()].tolist()
            prompt = next((t for t, label in enumerate(labels) if label != -100), len(labels))
            text, offsets, chars = decoded_offsets(self.tokenizer, ids, prompt)
            texts.append(text)
            prompt_chars.append(chars)
            student_offsets.append(offsets + [(0, 0)] * (batch["input_ids"].shape[1] - len(offsets)))
        teacher = self._encode(self.teacher_tokenizer, texts)
        out = {k: v for k, v in batch.items() if not k.startswith(TEACHER_PREFIX) and k not in ALIGNMENT_KEYS}
        out.update({TEACHER_PREFIX + k: v for k, v in teacher.items() if k not in _EXTRA_ENCODING_KEYS})
        out[TEACHER_PREFIX + "labels"] = completion_labels(teacher, prompt_chars)
        special = [i for i in self.tokenizer.all_special_ids if i != self.tokenizer.unk_token_id]
        targets = batch["labels"].ne(-100) & ~torch.isin(batch["labels"], torch.tensor(special))  # EOS: not text
        return self.aligned(out, texts, student_offsets, teacher["offset_mapping"].tolist(), targets.cpu())


def decoded_offsets(tokenizer: Any, ids: list[int], prompt: int) -> tuple[str, list[tuple[int, int]], int]:
    """
    The text of a generated row and the characters of each of its tokens, from its decoded prefixes.

    `d_k` is the decoding of the first `k` tokens (special tokens skipped); token `k` covers the characters between
    where `d_k` and `d_{k+1}` stop agreeing with the whole decoding `d_n` (so a token that ends inside a character,
    a byte-level piece of it, covers nothing and the next token covers the character).

    Args:
        tokenizer (`PreTrainedTokenizerBase`): The tokenizer of `ids`.
        ids (`list[int]`): The row's tokens, padding excluded.
        prompt (`int`): The row's prompt tokens (the first ones).

    Returns:
        `(text, offsets, prompt_chars)`: `d_n`, each token's `(start, end)`, and the characters of the prompt (the
        prompt's tokens all get `(0, prompt_chars)`).
    """
    text = tokenizer.decode(ids, skip_special_tokens=True)

    def agreed(k: int) -> int:
        prefix = tokenizer.decode(ids[:k], skip_special_tokens=True)
        n = min(len(prefix), len(text))
        return next((c for c in range(n) if prefix[c] != text[c]), n)

    ends = [agreed(k) for k in range(prompt, len(ids) + 1)]
    ends = list(accumulate(ends, max))  # never moving back
    offsets = [(0, ends[0])] * prompt + [(ends[k], ends[k + 1]) for k in range(len(ends) - 1)]
    return text, offsets, ends[0]


def find_cross_tokenizer_collator(collator: Any) -> CrossTokenizerCollator | None:
    """The [`CrossTokenizerCollator`] under a chain of wrapping collators (each holding the next as `collator`)."""
    while collator is not None and not isinstance(collator, CrossTokenizerCollator):
        collator = getattr(collator, "collator", None)
    return collator


def warn_if_one_vocabulary(args: Any, collator: Any) -> None:
    """Warn when a cross-tokenizer term is on but both tokenizers have the same vocabulary (token-level logit KD,
    `gamma`, is then exact and cheaper)."""
    collator = find_cross_tokenizer_collator(collator)
    weights = {name: getattr(args, name, 0) for name in ("uld_weight", "span_kd_weight", "span_uld_weight")}
    on = {name: value for name, value in weights.items() if value > 0}
    if collator is None or not on:
        return
    if collator.tokenizer.get_vocab() == collator.teacher_tokenizer.get_vocab():
        logger.warning(
            f"{', '.join(f'{k}={v}' for k, v in on.items())} with a teacher whose tokenizer has the student's "
            "vocabulary: the cross-tokenizer terms approximate what token-level logit KD computes exactly; set "
            "gamma > 0 and those weights to 0, with a plain causal-LM collator."
        )
