"""Word-level pooling for DSG-KD: subword hidden states and attention maps pooled to domain-knowledge words."""

from __future__ import annotations

import torch


def pool_word_states(hidden: torch.Tensor, word_pool: torch.Tensor) -> torch.Tensor:
    """
    Mean of each word's subword hidden states.

    Args:
        hidden (`torch.Tensor` of shape `(B, T, D)`): Hidden states of one layer.
        word_pool (`torch.Tensor` of shape `(B, W, T)`): Row `w` holds `1 / n_w` at the `n_w` subword positions of word
            `w` and 0 elsewhere (all 0 for padding words).

    Returns:
        `torch.Tensor` of shape `(B, W, D)`.
    """
    return torch.bmm(word_pool.to(hidden.dtype), hidden)


def word_attention_maps(attentions: torch.Tensor, word_pool: torch.Tensor) -> torch.Tensor:
    """
    Word-to-word attention: the mean over the query word's subwords of the attention mass on the key word's subwords.

    Summing over key subwords keeps each entry the attention mass from one word to another, so a word split into
    more subwords by one tokenizer is not diluted; averaging over query subwords keeps rows comparable.

    Args:
        attentions (`torch.Tensor` of shape `(B, H, T, T)`): Attention probabilities of one layer.
        word_pool (`torch.Tensor` of shape `(B, W, T)`): As in [`pool_word_states`].

    Returns:
        `torch.Tensor` of shape `(B, H, W, W)`.
    """
    mean = word_pool.to(attentions.dtype)[:, None]
    member = (word_pool > 0).to(attentions.dtype)[:, None]
    return mean @ attentions @ member.transpose(-1, -2)
