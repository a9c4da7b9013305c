"""Model card of a distilled student and its upload to the Hub (the student and its tokenizer only)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData

CARD_TAGS = ["distillation", "hf_distill"]
# what a student folder may contain on the Hub: weights, configs, tokenizer, the card (never projections, the teacher
# or training state)
STUDENT_FILES = ("*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
                 "tokenizer*", "special_tokens_map.json", "vocab.*", "merges.txt", "*.model", "chat_template.*",
                 "added_tokens.json", "adapter_config.json", "README.md")  # fmt: skip


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and not os.path.exists(name) and not name.startswith((".", "/", "~")) and name.count("/") <= 1


def results_table(results: Mapping[str, Mapping[str, float]], domain_weights: Mapping[str, float] | None) -> str:
    """A markdown table of per-domain mean token cross-entropy as perplexity (one column per model)."""
    columns = list(results)
    domains = list(next(iter(results.values())))
    header = "| domain | " + " | ".join(f"{c} perplexity" for c in columns)
    header += " | final DDK weight |" if domain_weights else " |"
    lines = [header, "|" + "---|" * (len(columns) + 1 + bool(domain_weights))]
    for domain in domains:
        cells = " | ".join(f"{math.exp(results[c][domain]):.3f}" for c in columns)
        weight = f" | {domain_weights[domain]:.3f} |" if domain_weights else " |"
        lines.append(f"| {domain} | {cells}{weight}")
    return "\n".join(lines)


def distillation_model_card(
    *,
    model_name: str,
    student_base: str | None,
    teacher: str | None,
    dataset: str | None,
    losses: Mapping[str, Any],
    layer_pairs: Sequence[tuple[int, int]] = (),
    domain_weights: Mapping[str, float] | None = None,
    results: Mapping[str, Mapping[str, float]] | None = None,
    extra_tags: Sequence[str] = (),
) -> ModelCard:
    """
    The model card of a distilled student.

    Args:
        model_name (`str`): The repository's model name.
        student_base (`str`, *optional*): The checkpoint the student started from (`base_model` when a hub id).
        teacher (`str`, *optional*): The teacher's name or path.
        dataset (`str`, *optional*): The training corpus (`datasets` metadata when a hub id).
        losses (`Mapping[str, Any]`): Loss settings and weights (e.g. `alpha_ce`, `gamma`, `temperature`).
        layer_pairs (`Sequence[tuple[int, int]]`): The student:teacher layer map of hidden/attention matching.
        domain_weights (`Mapping[str, float]`, *optional*): The final DDK domain weights.
        results (`Mapping[str, Mapping[str, float]]`, *optional*): model -> domain -> mean token cross-entropy.
        extra_tags (`Sequence[str]`): Tags added to `distillation`, `hf_distill`.

    Returns:
        `huggingface_hub.ModelCard`
    """
    data = ModelCardData(
        model_name=model_name,
        base_model=student_base if _is_hub_id(student_base) else None,
        datasets=[dataset] if _is_hub_id(dataset) else None,
        library_name="transformers",
        tags=list(dict.fromkeys([*CARD_TAGS, *extra_tags])),
    )
    lines = [
        f"# {model_name}",
        "",
        "A student distilled with [hf_distill](https://github.com/hf-distill/hf_distill) (`DistillationTrainer`).",
        "",
        "## Distillation",
        "",
        f"- **Student initialised from:** `{student_base or 'unknown'}`",
        f"- **Teacher:** `{teacher or 'none (cached or no teacher term)'}`",
        f"- **Training data:** `{dataset or 'not recorded'}`",
        "- **Losses and weights:** " + ", ".join(f"`{k}={v}`" for k, v in losses.items()),
        "- **Layer map (student:teacher):** "
        + (", ".join(f"{s}:{t}" for s, t in layer_pairs) if layer_pairs else "none (no hidden/attention matching)"),
    ]
    if domain_weights:
        lines.append("- **Final DDK domain weights:** " + ", ".join(f"{d}={w:.3f}" for d, w in domain_weights.items()))
    if results:
        lines += ["", "## Per-domain results (held-out texts)", "", results_table(results, domain_weights)]
    lines += ["", "Only the student and its tokenizer are in this repository (no projection heads, no teacher)."]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def upload_student(
    folder: str,
    repo_id: str,
    token: str | None = None,
    commit_message: str = "End of training",
    revision: str | None = None,
) -> Any:
    """
    Upload a saved student folder (weights, config, tokenizer, `README.md`) to `repo_id`; other files in the folder
    (training arguments, projection heads, checkpoints) are not uploaded.

    Returns:
        `huggingface_hub.CommitInfo`
    """
    return HfApi(token=token).upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=commit_message,
        revision=revision,
        allow_patterns=list(STUDENT_FILES),
        ignore_patterns=["*/*"],
    )
