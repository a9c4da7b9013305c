"""Very long texts are tokenized in pieces cut at word boundaries: the same ids as the whole text for a byte-level
BPE (checked against the tokenizer on the whole text), and packing them gives the blocks of a naive reference."""

import json

import numpy as np
import pytest
from conftest import DEMO, ROOT
from datasets import Dataset
from transformers import AutoTokenizer

from hf_distill.long_texts import CHUNK_CHARS, encode_texts, split_long_text
from hf_distill.recipe_tools.corpus import pack_texts


def _corpus(domain, joiner):
    return joiner.join(
        json.loads(line)["text"] for line in (ROOT / "hf_distill/demo/corpus" / f"{domain}.jsonl").open()
    )


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(DEMO / "student")  # byte-level BPE


@pytest.mark.parametrize("text", [
    _corpus("prose", " "), _corpus("code", "\n\n"), "x" * 10_000 + " y" * 3000, "ACGT" * 5000, "a  b   c\t d \n" * 900,
])  # fmt: skip
def test_pieces_rejoin_to_the_text_and_are_cut_before_a_single_space_between_words(text):
    pieces = split_long_text(text, 1000)
    assert "".join(pieces) == text and all(len(p) <= 1000 for p in pieces)
    for piece, following in zip(pieces[:-1], pieces[1:], strict=True):
        boundary = following[0] == " " and not piece[-1].isspace() and not following[1].isspace()
        # a cut is a word boundary, or the 1000-character limit where the second half of the window has none
        assert boundary or (len(piece) == 1000 and not any(
            piece[i] == " " and not piece[i - 1].isspace() and not piece[i + 1].isspace() for i in range(500, 999)
        ))  # fmt: skip


@pytest.mark.parametrize("domain,joiner", [("prose", " "), ("code", "\n\n"), ("arithmetic", " ")])
def test_a_byte_level_bpe_gives_the_whole_texts_ids(tokenizer, domain, joiner):
    text = _corpus(domain, joiner)
    assert len(text) > 4 * 4096
    whole = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert encode_texts(tokenizer, [text, "short one"], chunk_chars=4096) == [
        whole,
        tokenizer("short one", add_special_tokens=False)["input_ids"],
    ]


def test_packing_a_text_longer_than_a_piece_equals_a_naive_reference(tokenizer):
    texts = ["a first short text.", _corpus("prose", " ")[: 3 * CHUNK_CHARS], "and a last one"]
    assert len(texts[1]) > CHUNK_CHARS
    packed = pack_texts(Dataset.from_dict({"text": texts}), tokenizer, 128, "text", None)
    stream = [
        t for text in texts for t in tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ]
    blocks = np.array(stream[: len(stream) // 128 * 128]).reshape(-1, 128)
    assert np.array_equal(np.array(packed["input_ids"]), blocks) and np.array_equal(np.array(packed["labels"]), blocks)
    assert np.array(packed["attention_mask"]).min() == 1
