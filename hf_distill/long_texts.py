"""Tokenizing very long texts in linear time: a text longer than `chunk_chars` characters is cut into pieces at word
boundaries (a single space between two non-space characters) and the pieces are encoded as one batch.

Why: a fast tokenizer's time grows faster than linearly with the length of one input (the demo's byte-level BPE on
one line of prose, 2 cores: 1.5 s for 2 MB, 7 s for 8 MB, 31 s for 16 MB); in pieces of 64k characters it is linear
(7.7 s for 16 MB, the batch encoded on every core). `recipes/benchmarks/long_text_packing.py` measures it.

A cut before `" word"` is where a byte-level BPE pre-tokenizer (GPT-2, Llama 3, Qwen, the demo's) splits anyway, so
its ids are exactly those of the whole text. Tokenizers that treat a piece's start specially (SentencePiece's
`▁` prefix, WordPiece's `##`) can differ by a token at each cut; a stretch of `chunk_chars` characters with no such
boundary (e.g. a DNA sequence) is cut where it reaches the limit.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["CHUNK_CHARS", "encode_texts", "split_long_text"]

CHUNK_CHARS = 1 << 16
_BOUNDARY = re.compile(r"(?<=\S) (?=\S)")


def split_long_text(text: str, chunk_chars: int = CHUNK_CHARS) -> list[str]:
    """`text` in pieces of at most `chunk_chars` characters, each (but the last) cut just before a single space between
    two non-space characters in the second half of its window, else at the limit; `"".join(pieces) == text`."""
    if len(text) <= chunk_chars:
        return [text]
    pieces, start = [], 0
    while len(text) - start > chunk_chars:
        end = start + chunk_chars
        cut = end
        for match in _BOUNDARY.finditer(text, start + chunk_chars // 2, end):
            cut = match.start()
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def encode_texts(tokenizer: Any, texts: list[str], chunk_chars: int = CHUNK_CHARS) -> list[list[int]]:
    """The token ids of each text without special tokens, as `tokenizer(texts, add_special_tokens=False)` gives them,
    encoding a text longer than `chunk_chars` as the concatenation of its [`split_long_text`] pieces."""
    if all(len(text) <= chunk_chars for text in texts):
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    pieces = [split_long_text(text, chunk_chars) for text in texts]
    ids = tokenizer([piece for text in pieces for piece in text], add_special_tokens=False)["input_ids"]
    encoded, at = [], 0
    for text in pieces:
        encoded.append([token for piece in ids[at : at + len(text)] for token in piece])
        at += len(text)
    return encoded
