"""`DSGKDCollator`: one text, two tokenizations, and the domain words aligned between them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..cross_tokenizer.collator import TwoTokenizerCollator
from .alignment import align_word_spans
from .tagger import DomainTermTagger


class DSGKDCollator(TwoTokenizerCollator):
    r"""
    Collator for DSG-KD: tokenizes each raw text with the student's and the teacher's tokenizers and carries the
    domain-word alignment between the two.

    Domain words are found by `tagger` in the raw text; each word maps to its subword positions in each tokenization
    through the tokenizers' offsets mappings (truncation and special tokens included; a word cut by truncation in
    either tokenization is dropped in both). The batch holds the student inputs (`input_ids`, `attention_mask`, ...),
    `labels`, the teacher's own inputs prefixed `teacher_` (`teacher_input_ids`, ...), and `word_pool` /
    `teacher_word_pool` (`(B, W, T)`: `1 / n_w` at the `n_w` subwords of word `w`) with `word_mask` (`(B, W)`).

    Args:
        tokenizer (`PreTrainedTokenizerFast`): The student's tokenizer.
        teacher_tokenizer (`PreTrainedTokenizerFast`): The teacher's tokenizer.
        tagger (`Callable[[str], list[tuple[int, int]]]`, *optional*): Finds domain words; a default
            [`DomainTermTagger`] when omitted.
        max_length (`int`): Truncation length of both tokenizations.
        text_column (`str`): Column of the raw text.
        label_column (`str`): Column of the class label.
    """

    def __init__(
        self,
        tokenizer: Any,
        teacher_tokenizer: Any,
        tagger: Callable[[str], list[tuple[int, int]]] | None = None,
        max_length: int = 128,
        text_column: str = "text",
        label_column: str = "label",
    ):
        super().__init__(tokenizer, teacher_tokenizer, max_length, text_column)
        self.tagger = tagger if tagger is not None else DomainTermTagger()
        self.label_column = label_column

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Dataset columns this collator reads (kept by the trainer through `remove_unused_columns`)."""
        return (self.text_column, self.label_column)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        texts, *encoded = self.encode(features)
        aligned = []  # per example, per tokenization: the token positions of each kept word
        for i, text in enumerate(texts):
            views = [(e["offset_mapping"][i].tolist(), e["special_tokens_mask"][i].tolist()) for e in encoded]
            aligned.append(align_word_spans(self.tagger(text), views)[1])
        words = max([1] + [len(positions[0]) for positions in aligned])
        pools = [torch.zeros(len(texts), words, e["input_ids"].shape[1]) for e in encoded]
        word_mask = torch.zeros(len(texts), words, dtype=torch.bool)
        for i, per_tokenization in enumerate(aligned):
            for pool, positions in zip(pools, per_tokenization, strict=True):
                for w, tokens in enumerate(positions):
                    pool[i, w, tokens] = 1.0 / len(tokens)
                    word_mask[i, w] = True
        batch = self.model_inputs(*encoded)
        label_key = "labels" if "labels" in features[0] else self.label_column
        if label_key in features[0]:
            batch["labels"] = torch.tensor([int(f[label_key]) for f in features], dtype=torch.long)
        batch.update(word_pool=pools[0], teacher_word_pool=pools[1], word_mask=word_mask)
        return batch
