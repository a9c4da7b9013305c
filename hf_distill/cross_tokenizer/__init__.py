"""Cross-tokenizer distillation: a teacher with another tokenizer reads its own tokenization of the same text."""

from .collator import TEACHER_PREFIX, CrossTokenizerCollator, TwoTokenizerCollator, text_labels

__all__ = ["TEACHER_PREFIX", "CrossTokenizerCollator", "TwoTokenizerCollator", "text_labels"]
