"""Cross-tokenizer distillation: a teacher with another tokenizer reads its own tokenization of the same text."""

from ..batch_keys import ALIGNMENT_KEYS, TEACHER_PREFIX
from .collator import (
    CrossTokenizerCollator,
    TwoTokenizerCollator,
    completion_labels,
    decoded_offsets,
    matched_vocabulary,
    text_labels,
)
from .text_alignment import RowAlignment, align_row, alignment_tensors, byte_offsets

__all__ = [
    "ALIGNMENT_KEYS",
    "TEACHER_PREFIX",
    "CrossTokenizerCollator",
    "RowAlignment",
    "TwoTokenizerCollator",
    "align_row",
    "alignment_tensors",
    "byte_offsets",
    "completion_labels",
    "decoded_offsets",
    "matched_vocabulary",
    "text_labels",
]
