"""Attention-map distillation on attention probabilities (MSE or KL), with a head-averaged option."""

from __future__ import annotations

import torch

ATTENTION_LOSSES = ("mse", "kl")


def attention_map_loss(
    student_attn: torch.Tensor,
    teacher_attn: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    loss_type: str = "mse",
    average_heads: bool = False,
) -> torch.Tensor:
    """
    Sum over the valid query tokens of the distance between student and teacher attention rows.

    For each query row the distance is taken over the valid (non-padding) keys: `"mse"` is the mean squared
    difference over those keys, `"kl"` is `KL(a_T || a_S)` over the keys. It is averaged over heads. When the
    head counts differ (or `average_heads=True`) the maps are first averaged over heads and the head-averaged maps
    are compared. Padding changes neither the value nor the normalisation, so the loss is unchanged by how a batch
    is padded. The caller divides by the number of tokens of the (accumulated) batch.

    Args:
        student_attn (`torch.Tensor` of shape `(B, H_S, T, T)`): Student attention probabilities.
        teacher_attn (`torch.Tensor` of shape `(B, H_T, T, T)`): Teacher attention probabilities.
        attention_mask (`torch.Tensor` of shape `(B, T)`, *optional*): 1 for real tokens, 0 for padding.
        loss_type (`str`): `"mse"` or `"kl"`.
        average_heads (`bool`): Compare head-averaged maps even when the head counts are equal.

    Returns:
        `torch.Tensor`: scalar float32 sum over valid query rows.
    """
    s, t = student_attn.float(), teacher_attn.detach().float()
    if average_heads or s.shape[1] != t.shape[1]:
        s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
    batch, _, length, _ = s.shape
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, device=s.device)
    mask = attention_mask.to(s.dtype)
    keys = mask[:, None, None, :]
    if loss_type == "mse":
        per_row = ((s - t).pow(2) * keys).sum(-1) / mask.sum(-1).clamp_min(1.0)[:, None, None]
    elif loss_type == "kl":
        per_row = ((torch.xlogy(t, t) - t * torch.log(s.clamp_min(1e-12))) * keys).sum(-1)
    else:
        raise ValueError(f"Unknown attention loss {loss_type!r}; choose one of {ATTENTION_LOSSES}.")
    return (per_row.mean(1) * mask).sum()
