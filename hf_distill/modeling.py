"""Model introspection and teacher loading: task, vocabulary, layer counts, attention implementation."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    PreTrainedModel,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_MAPPING_NAMES,
)

from .files import checked_load

SUPPORTED_TASKS = ("causal_lm", "masked_lm", "sequence_classification", "feature_extraction")


def _names(mapping: dict) -> set[str]:
    return {name for value in mapping.values() for name in ((value,) if isinstance(value, str) else value)}


_TASK_CLASS_NAMES = {
    "causal_lm": _names(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
    "masked_lm": _names(MODEL_FOR_MASKED_LM_MAPPING_NAMES),
    "sequence_classification": _names(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES),
    "feature_extraction": _names(MODEL_MAPPING_NAMES),  # headless models (AutoModel): BertModel, LlamaModel, ...
}
_AUTO_CLASSES = {
    "causal_lm": AutoModelForCausalLM,
    "masked_lm": AutoModelForMaskedLM,
    "sequence_classification": AutoModelForSequenceClassification,
    "feature_extraction": AutoModel,
}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def base_model(model: nn.Module) -> nn.Module:
    """Return the 🤗 model under a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def infer_task(model: nn.Module, role: str = "student") -> str:
    """
    Infer the distillation task from the model class.

    Args:
        model (`nn.Module`): A 🤗 model, possibly wrapped by PEFT.
        role (`str`): `"student"` or `"teacher"`, used in the error message.

    Returns:
        `str`: one of `"causal_lm"`, `"masked_lm"`, `"sequence_classification"`, `"feature_extraction"` (a headless
        model such as `BertModel`, whose hidden states and attention maps can be distilled, not its logits).

    Raises:
        `ValueError`: for encoder-decoder models, regression or multi-label heads and any other model class.
    """
    model = base_model(model)
    name = type(model).__name__
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "is_encoder_decoder", False):
        return _unsupported(role, name, "encoder-decoder models are not supported yet")
    for task, names in _TASK_CLASS_NAMES.items():
        if name in names:
            if task == "sequence_classification":
                if config.num_labels < 2 or config.problem_type in ("regression", "multi_label_classification"):
                    return _unsupported(role, name, "only single-label classification (num_labels >= 2) is supported")
            return task
    return _unsupported(
        role, name, "its class is not a causal LM, masked LM, sequence classification or headless (AutoModel) model"
    )


def _unsupported(role: str, name: str, why: str) -> str:
    raise ValueError(
        f"The {role} model {name} is not supported for distillation: {why}. Supported tasks: {list(SUPPORTED_TASKS)} "
        "(e.g. AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoModel)."
    )


def _text_config_value(model: nn.Module, keys: tuple[str, ...], what: str) -> int:
    """The first of `keys` set in the model's text config."""
    config = base_model(model).config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in keys:
        if getattr(config, key, None) is not None:
            return int(getattr(config, key))
    raise ValueError(f"Cannot find the {what} of {type(model).__name__} in its config (looked for {list(keys)}).")


def num_layers(model: nn.Module) -> int:
    """Number of transformer blocks of a 🤗 model (`num_hidden_layers` of its text config)."""
    return _text_config_value(model, ("num_hidden_layers", "n_layer", "num_layers"), "number of layers")


def hidden_size(model: nn.Module) -> int:
    """Hidden width of a 🤗 model (`hidden_size` of its text config)."""
    return _text_config_value(model, ("hidden_size", "n_embd", "d_model"), "hidden size")


def output_size(model: nn.Module, task: str) -> int:
    """Size of the last logit dimension: the output-embedding rows for LMs, `num_labels` for classification."""
    model = base_model(model)
    if task == "sequence_classification":
        return int(model.config.num_labels)
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings, so its logits cannot be distilled.")
    # a DeepSpeed ZeRO-3 partitioned parameter is empty outside its engine; `ds_shape` is its full shape
    return int(getattr(head.weight, "ds_shape", head.weight.shape)[0])


CROSS_TOKENIZER_HINT = (
    "For a teacher with another tokenizer use the cross-tokenizer term: gamma=0, uld_weight > 0 and "
    "CrossTokenizerCollator(tokenizer, teacher_tokenizer) as data_collator (README: Teachers with another tokenizer); "
    "or set gamma=0."
)


def shared_vocab_size(student: nn.Module, teacher: nn.Module, task: str, tokenizer: Any = None) -> int:
    """
    Size of the logit dimension that student and teacher share.

    For language models the vocabularies may differ only by padding rows (e.g. 151936 vs 152064): the logits are
    compared on the tokenizer's real vocabulary `len(tokenizer)`. Without a tokenizer the sizes must be equal.

    Raises:
        `ValueError`: when the vocabularies cannot be matched, naming both sizes and the fix.
    """
    n_student, n_teacher = output_size(student, task), output_size(teacher, task)
    if task == "sequence_classification":
        if n_student != n_teacher:
            raise ValueError(
                f"Vocab mismatch: the student has {n_student} labels and the teacher {n_teacher}; logit distillation "
                "needs the same label set (or set gamma=0)."
            )
        return n_student
    if tokenizer is None:
        if n_student != n_teacher:
            raise ValueError(
                f"Vocab mismatch: student vocab {n_student} != teacher vocab {n_teacher}. If they differ only by "
                "padding rows, pass the tokenizer as `processing_class` so the shared real vocabulary is known; "
                f"otherwise logit KD needs the same tokenizer. {CROSS_TOKENIZER_HINT}"
            )
        return n_student
    real = len(tokenizer)
    if real > n_student or real > n_teacher:
        raise ValueError(
            f"Vocab mismatch: the tokenizer has {real} tokens but the student has {n_student} output rows and the "
            f"teacher {n_teacher}; logit KD needs a teacher and student sharing this tokenizer. {CROSS_TOKENIZER_HINT}"
        )
    return real


def check_attentions_available(model: nn.Module, role: str) -> None:
    """
    Raise a clear error when a model would return no attention maps (SDPA or flash attention).

    Raises:
        `ValueError`: naming the attention implementation in use and how to switch to eager attention.
    """
    config = base_model(model).config
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl != "eager":
        raise ValueError(
            f"attention_weight > 0 needs attention maps, but the {role} uses attn_implementation={impl!r}, which "
            'returns none. Load it with `attn_implementation="eager"` (or call '
            '`model.set_attn_implementation("eager")`) or set attention_weight=0.'
        )


def resolve_dtype(teacher_dtype: str, student: nn.Module, bf16: bool, fp16: bool) -> torch.dtype:
    """The teacher dtype: explicit, or the student's compute dtype for `"auto"`."""
    if teacher_dtype != "auto":
        return _DTYPES[teacher_dtype]
    if bf16:
        return torch.bfloat16
    if fp16:
        return torch.float16
    return next(base_model(student).parameters()).dtype


def load_pretrained(
    name_or_path: str, task: str, dtype: torch.dtype, eager: bool, trust_remote_code: bool, role: str = "model"
) -> PreTrainedModel:
    """
    Load a model (teacher or student) by hub name or local path, from safetensors only.

    Args:
        name_or_path (`str`): Hub model id or local directory.
        task (`str`): The student's task; selects the auto class.
        dtype (`torch.dtype`): Dtype to load in.
        eager (`bool`): Load with eager attention (needed for attention maps).
        trust_remote_code (`bool`): Allow custom modeling code (off by default).
        role (`str`): Names the model in errors (`"teacher_model"`, `"model"`).

    Raises:
        `ValueError`: naming `role`, the model and, for a local folder, the unreadable weight file.
    """
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True, "trust_remote_code": trust_remote_code}
    if eager:
        kwargs["attn_implementation"] = "eager"
    return checked_load(_AUTO_CLASSES[task].from_pretrained, name_or_path, role, **kwargs)


def supports_fused_logits(model: nn.Module) -> bool:
    """Whether a causal LM can feed the fused logit loss: a linear output head and a forward with `logits_to_keep`."""
    model = base_model(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return isinstance(head, nn.Linear) and "logits_to_keep" in inspect.signature(model.forward).parameters
