"""Names of the batch keys the collators add for the loss terms and the teacher (a leaf module every layer reads)."""

TEACHER_PREFIX = "teacher_"  # the teacher's own tokenization: `teacher_input_ids`, `teacher_attention_mask`, ...
# CrossTokenizerCollator's alignment of the two tokenizations (read by the cross-tokenizer terms and DDK's evaluator)
ALIGNMENT_KEYS = ("uld_student_mask", "uld_teacher_mask", "span_student", "span_teacher", "span_rows", "span_bytes")
MATCHED_VOCAB = "matched_vocab"  # `(M, 2)` student / teacher ids of the tokens both vocabularies hold
