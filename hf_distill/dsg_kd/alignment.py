"""Word-level alignment of two tokenizations of one text through the tokenizers' character offsets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Span = tuple[int, int]


def span_token_positions(
    spans: Sequence[Span], offsets: Sequence[Sequence[int]], special_mask: Sequence[int] | None = None
) -> list[list[int] | None]:
    """
    Map character spans to the token positions that cover them, through a tokenizer's offsets mapping.

    A token belongs to a span when its character range overlaps the span; special and padding tokens (empty ranges,
    or flagged in `special_mask`) never do. A span whose characters are not all covered by the kept tokens (cut by
    truncation, or past it) maps to `None`.

    Args:
        spans (`Sequence[tuple[int, int]]`): `(start, end)` character spans.
        offsets (`Sequence[tuple[int, int]]`): The `offset_mapping` of one encoded text.
        special_mask (`Sequence[int]`, *optional*): 1 for special tokens.

    Returns:
        `list`: per span, the sorted token positions, or `None`.
    """
    tokens = [
        (i, int(start), int(end))
        for i, (start, end) in enumerate(offsets)
        if end > start and not (special_mask is not None and special_mask[i])
    ]
    result: list[list[int] | None] = []
    for span_start, span_end in spans:
        hit = [(i, s, e) for i, s, e in tokens if s < span_end and e > span_start]
        complete = hit and min(s for _, s, _ in hit) <= span_start and max(e for _, _, e in hit) >= span_end
        result.append([i for i, _, _ in hit] if complete else None)
    return result


def align_word_spans(
    spans: Sequence[Span], encodings: Sequence[tuple[Sequence[Sequence[int]], Sequence[int] | None]]
) -> tuple[list[Span], list[list[list[int]]]]:
    """
    Map word spans to token positions in several tokenizations of the same text, keeping the spans found whole in
    all of them (a span cut by truncation in one tokenization is dropped in every one).

    Args:
        spans (`Sequence[tuple[int, int]]`): Word spans in the text.
        encodings (`Sequence[tuple[offsets, special_mask]]`): Per tokenization, its offsets mapping and special
            tokens mask (or `None`).

    Returns:
        `(kept_spans, positions)`: the kept spans, and per tokenization the token positions of each kept span.
    """
    per_tokenization = [span_token_positions(spans, offsets, special) for offsets, special in encodings]
    keep = [k for k in range(len(spans)) if all(p[k] is not None for p in per_tokenization)]
    return [tuple(spans[k]) for k in keep], [[p[k] for k in keep] for p in per_tokenization]


def check_fast_tokenizer(tokenizer: Any, role: str) -> None:
    """Word alignment needs character offsets, which only fast (🤗 tokenizers) tokenizers give."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"The {role} tokenizer {type(tokenizer).__name__} is not a fast tokenizer, so it has no offsets mapping "
            "for word alignment: load it with AutoTokenizer.from_pretrained(..., use_fast=True) or convert it."
        )
