"""The embedded demo corpus: four domains of clearly different character, generated from a seed.

- `prose`: short English sentences (subject, verb, object, place),
- `code`: two or three small Python functions,
- `arithmetic`: lines of sums and products with their results,
- `dna`: nucleotide sequences made of a few recurring motifs.

Each text is one line of a JSON Lines file per domain (`hf_distill/demo/corpus/<domain>.jsonl`), which is exactly the
"directory with one file per domain" layout that `recipes/ddk.py` reads.
"""

from __future__ import annotations

import random

DOMAINS = ("prose", "code", "arithmetic", "dna")

_SUBJECTS = ["the old farmer", "a young doctor", "my sister", "the tired teacher", "our neighbour", "the small dog",
             "a quiet student", "the baker", "his friend", "the captain"]  # fmt: skip
_VERBS = ["found", "painted", "carried", "sold", "washed", "opened", "watched", "bought", "lost", "cooked"]
_OBJECTS = ["a red box", "the wooden chair", "some fresh bread", "an old map", "the green door", "a heavy bag",
            "two white cups", "the broken clock", "a long letter", "the blue boat"]  # fmt: skip
_PLACES = ["in the garden", "at the market", "near the river", "after dinner", "before the storm", "in the kitchen",
           "on the hill", "at the station", "by the window", "during the night"]  # fmt: skip
_NAMES = ["value", "count", "total", "item", "score", "size", "index", "limit"]
_OPS = [("+", "add"), ("-", "sub"), ("*", "mul")]
_MOTIFS = ["ATGGCC", "TATAAT", "GGATCC", "CCGCGG", "TTGACA", "AAGCTT"]


def prose(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(2, 4)):
        sentence = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_PLACES)}."
        sentences.append(sentence[0].upper() + sentence[1:])
    return " ".join(sentences)


def code(rng: random.Random) -> str:
    """Two or three functions: a single function has only 384 forms, too few for 1,200 distinct texts."""
    return "\n".join(_function(rng) for _ in range(rng.randint(2, 3)))


def _function(rng: random.Random) -> str:
    name, other = rng.sample(_NAMES, 2)
    symbol, verb = rng.choice(_OPS)
    k = rng.randint(1, 9)
    if rng.random() < 0.5:
        return f"def {verb}_{name}({name}):\n    return {name} {symbol} {k}\n"
    return (
        f"def {verb}_all({name}s):\n    {other} = 0\n    for {name} in {name}s:\n"
        f"        {other} = {other} {symbol} {name}\n    return {other}\n"
    )


def arithmetic(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(3, 5)):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        symbol = rng.choice("+*")
        lines.append(f"{a} {symbol} {b} = {a + b if symbol == '+' else a * b}")
    return "; ".join(lines)


def dna(rng: random.Random) -> str:
    parts = [rng.choice(_MOTIFS) + "".join(rng.choice("ACGT") for _ in range(rng.randint(0, 2)))]
    for _ in range(rng.randint(5, 9)):
        parts.append(rng.choice(_MOTIFS) if rng.random() < 0.8 else "".join(rng.choice("ACGT") for _ in range(4)))
    return "".join(parts)


GENERATORS = {"prose": prose, "code": code, "arithmetic": arithmetic, "dna": dna}


def generate(domain: str, n: int, seed: int) -> list[str]:
    """`n` texts of `domain`, reproducible from `seed`."""
    rng = random.Random(f"{domain}-{seed}")
    return [GENERATORS[domain](rng) for _ in range(n)]
