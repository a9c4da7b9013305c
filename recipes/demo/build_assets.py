"""Build the embedded demo assets of `recipes/ddk.py` (already in the repo; run again only to change them).

    python recipes/demo/build_assets.py                 # ~10 min on 2 CPU cores
    python recipes/demo/build_assets.py --corpus_only   # the corpus files alone, in seconds

Writes, next to this file:
- `corpus/<domain>.jsonl`: the demo corpus, `--texts` texts per domain (`corpus.py`, seed 0);
- `teacher/`: a byte-level BPE tokenizer trained on that corpus and a 4-layer Llama (width 128) pretrained on all
  four domains (texts of another seed);
- `student/`: the same tokenizer and a 2-layer Llama (width 64) pretrained on `prose` and `code` only, so it is
  weak on `arithmetic` and `dna`: the domains DDK should favour.
Weights are saved as safetensors; everything together stays well under 20 MB. Every text of the shipped corpus is
distinct (a `code` text is two or three functions: one function has only 384 forms).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from corpus import DOMAINS, generate  # noqa: E402
from datasets import Dataset  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer  # noqa: E402
from hf_distill.recipe_tools.corpus import pack_texts  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
EOS = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=EOS)


def llama(vocab_size: int, hidden: int, layers: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        eos_token_id=0,
        pad_token_id=0,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config)


def pretrain(model: LlamaForCausalLM, blocks: Dataset, steps: int, output_dir: str) -> None:
    args = DistillationConfig(
        output_dir=output_dir,
        alpha_ce=1.0,
        gamma=0.0,
        max_steps=steps,
        learning_rate=3e-3,
        warmup_steps=steps // 20,
        lr_scheduler_type="cosine",
        per_device_train_batch_size=16,
        logging_steps=50,
        save_strategy="no",
        report_to="none",
        seed=0,
    )
    DistillationTrainer(model=model, args=args, train_dataset=blocks).train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1200, help="texts per domain in the shipped corpus")
    parser.add_argument("--teacher_steps", type=int, default=800)
    parser.add_argument("--student_steps", type=int, default=300)
    parser.add_argument("--vocab_size", type=int, default=384)
    parser.add_argument(
        "--output_dir", default=os.path.join(os.path.dirname(os.path.dirname(HERE)), "hf_distill", "demo")
    )
    parser.add_argument("--corpus_only", action="store_true", help="write the corpus files only (no models)")
    options = parser.parse_args()

    corpus_dir = os.path.join(options.output_dir, "corpus")
    os.makedirs(corpus_dir, exist_ok=True)
    for domain in DOMAINS:
        with open(os.path.join(corpus_dir, f"{domain}.jsonl"), "w") as f:
            for text in generate(domain, options.texts, seed=0):
                f.write(json.dumps({"text": text}) + "\n")
    if options.corpus_only:
        return

    pretraining = {domain: generate(domain, options.texts, seed=1) for domain in DOMAINS}
    tokenizer = train_tokenizer([t for texts in pretraining.values() for t in texts], options.vocab_size)
    texts = Dataset.from_dict(
        {
            "text": [t for texts in pretraining.values() for t in texts],
            "domain": [d for d, texts in pretraining.items() for _ in texts],
        }
    )
    blocks = pack_texts(texts, tokenizer, block_size=128).remove_columns("domain")
    student_blocks = pack_texts(texts.filter(lambda row: row["domain"] in ("prose", "code")), tokenizer, 128)

    vocab = len(tokenizer)
    for name, model, data, steps in (
        ("teacher", llama(vocab, hidden=128, layers=4, seed=0), blocks, options.teacher_steps),
        (
            "student",
            llama(vocab, hidden=64, layers=2, seed=1),
            student_blocks.remove_columns("domain"),
            options.student_steps,
        ),
    ):
        target = os.path.join(options.output_dir, name)
        with tempfile.TemporaryDirectory() as run_dir:
            pretrain(model, data, steps, run_dir)
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters -> {target}")


if __name__ == "__main__":
    main()
