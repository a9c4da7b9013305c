"""Which positions of two tokenizations of one text predict the same characters.

A causal LM's logit at position `t - 1` predicts token `t`. Given each token's character offsets and whether it is a
*target* (a labelled text token: not BOS, EOS, padding, a chat-template special token or the prompt), each
tokenization predicts its targets from its second token on. The two are aligned by characters:

- the **start** `c0` is the first character boundary both can predict from: at or after the boundary each side
  starts predicting at (the end of the token before its first predicted target: 0 after a BOS, the end of the first
  token without one, the end of the prompt), the first offset that is a token boundary on both sides. So a BOS on one
  side only does not shift the pairs;
- **ULD pairs** (Boizard et al. 2024): the `k`-th predicted target after `c0` on one side with the `k`-th on the other,
  up to the shorter (the paper's truncation);
- **spans** (as TRL GOLD's byte-offset alignment): from `c0`, the shortest runs of targets on each side that end at
  the same character; a run that never closes (the two tokenizations were truncated at different characters) is left
  out. Each span covers the same characters on both sides (counted in UTF-8 bytes for bits per byte).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tokenizers import pre_tokenizers

Offsets = Sequence[tuple[int, int]]


@dataclass
class RowAlignment:
    """
    The alignment of one text's two tokenizations (token indices, not logit positions).

    Args:
        start (`int`, *optional*): The character `c0` both sides predict from (`None`: nothing to align).
        student (`list[int]`): The student's targets after `c0`, in order (ULD pairs the `k`-th of each side).
        teacher (`list[int]`): The teacher's targets after `c0`, in order.
        spans (`list[tuple[list[int], list[int], int, int]]`): `(student targets, teacher targets, first character,
            end character)` of each span.
    """

    start: int | None = None
    student: list[int] = field(default_factory=list)
    teacher: list[int] = field(default_factory=list)
    spans: list[tuple[list[int], list[int], int, int]] = field(default_factory=list)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """ULD's `(student target, teacher target)` pairs."""
        return list(zip(self.student, self.teacher, strict=False))


def predicted_targets(targets: Sequence[bool]) -> list[int]:
    """The targets a causal LM predicts: from its second token on (nothing precedes the first)."""
    return [t for t in range(1, len(targets)) if targets[t]]


def _start_boundary(offsets: Offsets, predicted: list[int]) -> int:
    """The character a side starts predicting at: the end of the token before its first predicted target."""
    return offsets[predicted[0] - 1][1]


def align_row(
    student_offsets: Offsets,
    student_targets: Sequence[bool],
    teacher_offsets: Offsets,
    teacher_targets: Sequence[bool],
) -> RowAlignment:
    """
    Align one text's two tokenizations (see the module's docstring).

    Args:
        student_offsets (`Sequence[tuple[int, int]]`): Character `(start, end)` of each student token.
        student_targets (`Sequence[bool]`): Whether each student token is a target.
        teacher_offsets (`Sequence[tuple[int, int]]`): Character `(start, end)` of each teacher token.
        teacher_targets (`Sequence[bool]`): Whether each teacher token is a target.

    Returns:
        [`RowAlignment`]
    """
    sides = []
    for offsets, targets in ((student_offsets, student_targets), (teacher_offsets, teacher_targets)):
        predicted = predicted_targets(targets)
        if not predicted:
            return RowAlignment()
        sides.append((offsets, predicted))
    lower = max(_start_boundary(offsets, predicted) for offsets, predicted in sides)
    boundaries = [
        {_start_boundary(offsets, predicted)} | {offsets[t][1] for t in predicted} for offsets, predicted in sides
    ]
    common = sorted(b for b in boundaries[0] & boundaries[1] if b >= lower)
    if not common:
        return RowAlignment()
    start = common[0]
    (s_offsets, s_pred), (t_offsets, t_pred) = sides
    student = [t for t in s_pred if s_offsets[t][1] > start]
    teacher = [t for t in t_pred if t_offsets[t][1] > start]
    return RowAlignment(start, student, teacher, _spans(student, teacher, s_offsets, t_offsets, start))


def _spans(
    student: list[int], teacher: list[int], s_offsets: Offsets, t_offsets: Offsets, start: int
) -> list[tuple[list[int], list[int], int, int]]:
    """Walk both targets' ends, advancing the side that ends earlier; close a span where both end at the same
    character (TRL GOLD's walk: several tokens ending at one character, the byte pieces of one character in a
    byte-level BPE, close one span each while both sides have one)."""
    spans, i, j, first_i, first_j, previous = [], 0, 0, 0, 0, start
    while i < len(student) and j < len(teacher):
        s_end, t_end = s_offsets[student[i]][1], t_offsets[teacher[j]][1]
        i, j = i + (s_end <= t_end), j + (t_end <= s_end)
        if s_end == t_end:
            spans.append((student[first_i:i], teacher[first_j:j], previous, s_end))
            first_i, first_j, previous = i, j, s_end
    return spans


_BYTE_LEVEL = frozenset(pre_tokenizers.ByteLevel.alphabet())  # the 256 characters that stand for one byte each
_BYTE_FALLBACK = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _piece_bytes(token: str) -> int | None:
    """The bytes a token spells when it is byte-level (`Ġ`-style, one character a byte) or a byte fallback
    (`<0xE6>`); `None` otherwise."""
    if _BYTE_FALLBACK.fullmatch(token):
        return 1
    return len(token) if token and all(char in _BYTE_LEVEL for char in token) else None


def byte_offsets(text: str, offsets: Offsets, tokens: Sequence[str]) -> list[tuple[int, int]]:
    """
    Character offsets as UTF-8 byte offsets, with the pieces of one character told apart: fast tokenizers give every
    byte-level or byte-fallback piece of a character (the 3 bytes of `東`) the whole character's offsets; a run of
    tokens with the same offsets whose pieces spell exactly its bytes gets one byte range each, in order.

    Args:
        text (`str`): The text.
        offsets (`Sequence[tuple[int, int]]`): Character `(start, end)` of each token (as the tokenizer gives them).
        tokens (`Sequence[str]`): The tokens' strings (`convert_ids_to_tokens`).

    Returns:
        `list[tuple[int, int]]`
    """
    lengths = [0]
    for char in text:
        lengths.append(lengths[-1] + len(char.encode("utf-8")))
    out = [(lengths[min(a, len(text))], lengths[min(b, len(text))]) for a, b in offsets]
    i = 0
    while i < len(out):
        j = i + 1
        while j < len(out) and tuple(offsets[j]) == tuple(offsets[i]) and offsets[i][1] > offsets[i][0]:
            j += 1
        pieces = [_piece_bytes(token) for token in tokens[i:j]]
        if j - i > 1 and None not in pieces and sum(pieces) == out[i][1] - out[i][0]:
            cursor = out[i][0]
            for k, size in enumerate(pieces, start=i):
                out[k] = (cursor, cursor + size)
                cursor += size
        i = j
    return out


def alignment_tensors(
    student_offsets: Sequence[Offsets],
    student_targets: Sequence[Sequence[bool]],
    teacher_offsets: Sequence[Offsets],
    teacher_targets: Sequence[Sequence[bool]],
    student_width: int,
    teacher_width: int,
) -> dict[str, torch.Tensor]:
    """
    The batch tensors of the alignment of every row, on the logit positions (`t - 1` predicts target `t`).

    Args:
        student_offsets, student_targets, teacher_offsets, teacher_targets: Per row, see [`align_row`] (offsets in
            UTF-8 bytes: [`byte_offsets`]).
        student_width (`int`): The student's padded sequence length.
        teacher_width (`int`): The teacher's padded sequence length.

    Returns:
        `dict`: `uld_student_mask` `(B, T_S - 1)` and `uld_teacher_mask` `(B, T_T - 1)` (ULD's pairs: the `k`-th true
        entry of a row on one side with the `k`-th on the other), `span_student` `(B, T_S - 1)` and `span_teacher`
        `(B, T_T - 1)` (the batch-wide span index of each logit position, -1 outside spans), `span_rows` `(G,)` (each
        span's row) and `span_bytes` `(G,)` (its UTF-8 bytes).
    """
    rows = len(student_offsets)
    out = {
        "uld_student_mask": torch.zeros(rows, max(student_width - 1, 0), dtype=torch.bool),
        "uld_teacher_mask": torch.zeros(rows, max(teacher_width - 1, 0), dtype=torch.bool),
        "span_student": torch.full((rows, max(student_width - 1, 0)), -1, dtype=torch.long),
        "span_teacher": torch.full((rows, max(teacher_width - 1, 0)), -1, dtype=torch.long),
    }
    span_rows, span_bytes = [], []
    for b in range(rows):
        row = align_row(student_offsets[b], student_targets[b], teacher_offsets[b], teacher_targets[b])
        for s, t in row.pairs:
            out["uld_student_mask"][b, s - 1] = True
            out["uld_teacher_mask"][b, t - 1] = True
        for student, teacher, first, end in row.spans:
            index = len(span_rows)
            out["span_student"][b, [s - 1 for s in student]] = index
            out["span_teacher"][b, [t - 1 for t in teacher]] = index
            span_rows.append(b)
            span_bytes.append(end - first)
    out["span_rows"] = torch.tensor(span_rows, dtype=torch.long)
    out["span_bytes"] = torch.tensor(span_bytes, dtype=torch.long)
    return out
