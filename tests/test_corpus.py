"""Multi-domain corpus loading, held-out slices and packing (hf_distill.recipe_tools.corpus) against plain-Python
references."""

import json
import tracemalloc
from pathlib import Path

import datasets.config
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from hf_distill.recipe_tools.corpus import deduplicate, hold_out, load_domain_corpus, pack_texts

DEMO = Path(__file__).resolve().parents[1] / "hf_distill" / "demo"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(DEMO / "student")


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_directory_with_one_file_per_domain(tmp_path):
    _jsonl(tmp_path / "law.jsonl", [{"text": f"law {i}", "id": i} for i in range(3)])
    _jsonl(tmp_path / "med.jsonl", [{"text": f"med {i}"} for i in range(2)])
    (tmp_path / "notes.txt").write_text("ignored: not a data file")
    corpus = load_domain_corpus(str(tmp_path))
    assert corpus.column_names == ["text", "domain"]
    assert list(zip(corpus["domain"], corpus["text"], strict=True)) == [
        ("law", "law 0"), ("law", "law 1"), ("law", "law 2"), ("med", "med 0"), ("med", "med 1"),
    ]  # fmt: skip


def test_file_with_a_domain_column_nested_or_not(tmp_path):
    _jsonl(tmp_path / "a.jsonl", [{"body": "x", "source": 3}, {"body": "y", "source": 4}])
    corpus = load_domain_corpus(str(tmp_path / "a.jsonl"), domain_column="source", text_column="body")
    assert corpus["source"] == ["3", "4"] and corpus["body"] == ["x", "y"]  # ids become names
    _jsonl(tmp_path / "b.jsonl", [{"text": "x", "meta": {"set": "web"}}, {"text": "y", "meta": {"set": "code"}}])
    corpus = load_domain_corpus(str(tmp_path / "b.jsonl"), domain_column="meta.set")
    assert corpus["meta.set"] == ["web", "code"]


def test_loading_errors_name_the_field_and_value(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"source='\./missing/dir' does not exist"):
        load_domain_corpus("./missing/dir")
    _jsonl(tmp_path / "a.jsonl", [{"text": "x", "source": "a"}])
    with pytest.raises(ValueError, match=r"domain_column='topic' is not a column .*columns: text, source"):
        load_domain_corpus(str(tmp_path / "a.jsonl"), domain_column="topic")
    with pytest.raises(ValueError, match=r"text_column='body'"):
        load_domain_corpus(str(tmp_path / "a.jsonl"), domain_column="source", text_column="body")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="directory without data files"):
        load_domain_corpus(str(tmp_path / "empty"))


def test_hold_out_is_disjoint_per_domain_and_reproducible():
    data = Dataset.from_dict({"text": [f"t{i}" for i in range(30)], "domain": ["a"] * 10 + ["b"] * 20})
    train, held = hold_out(data, 4, seed=3)
    assert sorted(held) == ["a", "b"] and all(len(part) == 4 for part in held.values())
    for name, part in held.items():
        train_texts = {t for t, d in zip(train["text"], train["domain"], strict=True) if d == name}
        assert not train_texts & set(part["text"])
        assert len(train_texts) + 4 == (10 if name == "a" else 20)
    assert hold_out(data, 4, seed=3)[1]["b"]["text"] == held["b"]["text"] != hold_out(data, 4, seed=4)[1]["b"]["text"]
    with pytest.raises(ValueError, match="Domain 'a' has 10 examples, not more than size=10"):
        hold_out(data, 10)


def test_held_out_texts_are_the_seeded_shuffles_head_and_training_keeps_the_rest_in_order():
    data = Dataset.from_dict({"text": [f"t{i}" for i in range(30)], "domain": ["a", "b", "b"] * 10})
    train, held = hold_out(data, 4, seed=3)
    for name in ("a", "b"):
        part = data.filter(lambda d, name=name: d == name, input_columns="domain")
        assert held[name]["text"] == part.shuffle(seed=3)["text"][:4]  # datasets' own shuffle as the reference
    kept = set(held["a"]["text"]) | set(held["b"]["text"])
    assert list(train["text"]) == [t for t in data["text"] if t not in kept]


@pytest.mark.parametrize("num_proc", [None, 2])
def test_deduplicate_keeps_each_texts_first_occurrence_in_order(num_proc):
    texts = ["b", "a", "b", "c", "a", "a", "d", "c"] * 3 + ["e"]
    data = Dataset.from_dict({"text": texts, "domain": [str(i % 3) for i in range(len(texts))]})
    out, removed = deduplicate(data, num_proc=num_proc)
    reference = [
        (t, d) for i, (t, d) in enumerate(zip(data["text"], data["domain"], strict=True)) if t not in texts[:i]
    ]
    assert list(zip(out["text"], out["domain"], strict=True)) == reference and removed == len(texts) - len(reference)
    assert deduplicate(out) == (out, 0)


def _prepare_corpus(folder: Path, rows: int, tokenizer) -> int:
    """Write `rows` texts (4 domains, 1 in 5 a repeat) as Parquet with Arrow, then load, deduplicate, hold out and
    pack them as the recipe does; the peak of the Python allocations (tracemalloc: lists, strings, ints, numpy
    arrays; not Arrow's buffers) during the preparation."""
    folder.mkdir()
    for name in ("code", "dna", "math", "prose"):
        numbers = pc.cast(pa.array(np.arange(rows // 4) % (rows // 5)), pa.string())
        texts = pc.binary_join_element_wise(pa.scalar(f"{name} text number "), numbers, "")
        pq.write_table(pa.table({"text": texts}), folder / f"{name}.parquet")
    tracemalloc.start()
    try:
        corpus, _ = deduplicate(load_domain_corpus(str(folder)))
        train, _ = hold_out(corpus, 8, seed=0)
        assert len(pack_texts(train, tokenizer, 64)) > rows // 10
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_corpus_preparation_builds_no_python_list_of_the_rows(tmp_path, tokenizer, monkeypatch):
    """Tripling the corpus may add far less Python memory than one list of its row numbers would take (8 bytes of
    pointer + 28 of int object per row; a list of its texts takes more): every per-row step runs in Arrow, in
    bounded batches, or in numpy arrays of a few bytes per row."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    small, large = 20_000, 60_000
    _prepare_corpus(tmp_path / "warm-up", 4_000, tokenizer)  # one-time allocations (imports, caches) land here
    growth = _prepare_corpus(tmp_path / "large", large, tokenizer)
    growth -= _prepare_corpus(tmp_path / "small", small, tokenizer)
    list_of_rows = (large - small) * (8 + 28)
    assert growth < list_of_rows / 2, f"{growth / (large - small):.1f} bytes per added row"


def test_pack_texts_matches_a_plain_loop(tokenizer):
    texts = {"a": [f"alpha {i} " * (i % 5 + 1) for i in range(40)], "b": ["beta gamma delta"] * 25}
    data = Dataset.from_dict({"text": texts["a"] + texts["b"], "domain": ["a"] * 40 + ["b"] * 25})
    packed = pack_texts(data, tokenizer, block_size=16)
    eos = tokenizer.eos_token_id
    expected = []
    for name, domain_texts in texts.items():  # one stream per domain, cut into whole blocks
        stream = []
        for text in domain_texts:
            stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
        expected += [(name, stream[i : i + 16]) for i in range(0, len(stream) - 15, 16)]
    assert list(zip(packed["domain"], packed["input_ids"], strict=True)) == expected
    assert packed["labels"] == packed["input_ids"] and all(sum(m) == 16 for m in packed["attention_mask"])
    with pytest.raises(ValueError, match="domain 'a' has fewer than block_size=4096 tokens"):
        pack_texts(data, tokenizer, block_size=4096)


@pytest.mark.parametrize("kind", ["string", "class_label", "int"])
def test_domain_ids_read_from_arrow_match_the_python_labels(kind):
    from datasets import ClassLabel, Value

    from hf_distill.ddk.data import domain_ids, domain_labels

    labels = ["med", "law", "med", "code", "law", "med"]
    data = Dataset.from_dict({"domain": labels, "text": [str(i) for i in range(6)]})
    if kind == "class_label":  # ids whose order is not the names' sorted order; one class never used
        data = data.cast_column("domain", ClassLabel(names=["med", "unused", "law", "code"]))
    elif kind == "int":
        data = data.map(lambda row: {"domain": len(row["domain"])}).cast_column("domain", Value("int64"))
    data = data.select([5, 0, 3, 1, 4, 2])  # through an indices mapping
    names, ids = domain_ids(data, "domain")
    reference = domain_labels(data, "domain")
    assert names == sorted(set(reference)) and [names[i] for i in ids] == reference
