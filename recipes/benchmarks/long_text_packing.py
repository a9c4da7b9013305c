"""Packing one very long single-line text: time and throughput of `pack_texts` (the recipe's tokenize-and-pack) by
text size, and, with `--whole`, of tokenizing the text in one piece (what packing did before `long_texts`).

    python recipes/benchmarks/long_text_packing.py --mb 1 10 50
    python recipes/benchmarks/long_text_packing.py --mb 1 4 8 --whole

Texts: the demo's prose corpus joined with spaces (word boundaries everywhere) and the demo's DNA corpus joined
without spaces (no boundary: cut at the 64k-character limit), repeated to the size. Tokenizer: the demo student's
(byte-level BPE). Prints seconds, MB/s and tokens; a linear cost shows as a constant MB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from hf_distill.recipe_tools.corpus import pack_texts  # noqa: E402


def text_of(domain: str, size: int) -> str:
    lines = [
        json.loads(line)["text"] for line in open(os.path.join(ROOT, "hf_distill/demo/corpus", f"{domain}.jsonl"))
    ]
    base = (" " if domain == "prose" else "").join(lines)
    return (base * (size // len(base) + 1))[:size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, nargs="+", default=[1, 10, 50])
    parser.add_argument("--whole", action="store_true", help="also time tokenizing each text in one piece")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(ROOT, "hf_distill/demo/student"))
    print(f"{'text':<6} {'MB':>6} {'method':<8} {'seconds':>8} {'MB/s':>6} {'tokens':>11}")
    for domain in ("prose", "dna"):
        for mb in args.mb:
            text = text_of(domain, int(mb * 2**20))
            data = Dataset.from_dict({"text": [text]})
            start = time.perf_counter()
            blocks = pack_texts(data, tokenizer, 128, "text", None)
            seconds = time.perf_counter() - start
            print(f"{domain:<6} {mb:>6g} {'pack':<8} {seconds:>8.2f} {mb / seconds:>6.2f} {len(blocks) * 128:>11,}")
            if args.whole:
                start = time.perf_counter()
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                seconds = time.perf_counter() - start
                print(f"{domain:<6} {mb:>6g} {'whole':<8} {seconds:>8.2f} {mb / seconds:>6.2f} {len(ids):>11,}")


if __name__ == "__main__":
    main()
