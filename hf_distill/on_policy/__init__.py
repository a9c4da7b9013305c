"""On-policy distillation (GKD): prompt/completion batches whose completions the student (or the teacher) generates."""

from .collator import PROMPT_KEYS, PromptCompletionCollator
from .gather import gathered_for_generation
from .generation import STUDENT, TEACHER, OnPolicyBatches, batch_source, completion_batch, draw_seed

__all__ = ["PROMPT_KEYS", "STUDENT", "TEACHER", "OnPolicyBatches", "PromptCompletionCollator", "batch_source",
           "completion_batch", "draw_seed", "gathered_for_generation"]  # fmt: skip
