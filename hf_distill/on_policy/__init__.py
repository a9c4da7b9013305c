"""On-policy distillation (GKD): prompt/completion batches whose completions the student (or the teacher) generates."""

from .collator import PROMPT_KEYS, PromptCompletionCollator
from .generation import STUDENT, TEACHER, OnPolicyBatches, batch_source, completion_batch, draw_seed

__all__ = ["PROMPT_KEYS", "STUDENT", "TEACHER", "OnPolicyBatches", "PromptCompletionCollator", "batch_source",
           "completion_batch", "draw_seed"]  # fmt: skip
