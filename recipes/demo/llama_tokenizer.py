"""Build `hf_distill/demo/llama_tokenizer/`: a Llama-style (SentencePiece-like) BPE tokenizer of the demo corpus, the
student's tokenizer of the cross-tokenizer demo (`hf-distill cross-tokenizer`), in another family than the demo
teacher's byte-level BPE (already in the repo; run again only to change it, in seconds):

    python recipes/demo/llama_tokenizer.py

Words start with `▁` (Metaspace), every text starts with `<s>` (BOS), unknown characters are `<unk>`: what Llama and
Mistral tokenizers do, where the teacher's tokenizer (GPT-2 style) adds no BOS and spells spaces as `Ġ` bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PACKAGE = Path(__file__).resolve().parents[2] / "hf_distill"
OUT = PACKAGE / "demo" / "llama_tokenizer"
VOCAB = 448


def llama_style_tokenizer(texts: list[str], vocab_size: int = VOCAB) -> PreTrainedTokenizerFast:
    """A SentencePiece-like BPE trained on `texts`: `▁` marks a word start, `<s>` is prepended, `</s>` pads."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(
        texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")  # fmt: skip


def corpus_texts() -> list[str]:
    """Every text of the shipped demo corpus."""
    texts = []
    for path in sorted((PACKAGE / "demo" / "corpus").glob("*.jsonl")):
        texts += [json.loads(line)["text"] for line in path.read_text().splitlines()]
    return texts


if __name__ == "__main__":
    llama_style_tokenizer(corpus_texts()).save_pretrained(OUT)
    print(f"wrote {OUT}")
