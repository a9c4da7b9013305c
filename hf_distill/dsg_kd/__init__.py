"""DSG-KD (arXiv 2409.14904): a general student learns from a domain-specific teacher on domain-knowledge words,
across two tokenizers: the word tagger, the word alignment, the collator and the word-level pooling."""

from .alignment import align_word_spans, check_fast_tokenizer, span_token_positions
from .collator import DSGKDCollator
from .tagger import DomainTermTagger, dominant_script
from .words import pool_word_states, word_attention_maps

__all__ = [
    "DSGKDCollator",
    "DomainTermTagger",
    "align_word_spans",
    "check_fast_tokenizer",
    "dominant_script",
    "pool_word_states",
    "span_token_positions",
    "word_attention_maps",
]
