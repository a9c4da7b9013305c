"""Bad data rows, each reproduced: before training, one `error:` line naming the file (and shard, row, domain where
known), exit code 2 and nothing written; or, where a bad row can only be met mid-stream, handled and said once."""

import json
import logging
import sys
from pathlib import Path

import pytest
from conftest import ROOT, recipe_error_line

from hf_distill.recipe_tools.streaming import hold_out_stream, stream_domain_sources

sys.path.insert(0, str(ROOT / "recipes"))
import ddk  # noqa: E402

DOMAINS = ("prose", "code", "arithmetic", "dna")
TEXTS = {d: [json.loads(line)["text"] for line in (ROOT / "hf_distill/demo/corpus" / f"{d}.jsonl").open()][:60]
         for d in DOMAINS}  # fmt: skip


def _lines(rows):
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def _per_domain(folder, change=None):
    """One JSON Lines file per domain; `change(domain, rows)` edits the rows (dicts) of each before writing."""
    folder.mkdir()
    for d in DOMAINS:
        rows = [{"text": t} for t in TEXTS[d]]
        (folder / f"{d}.jsonl").write_bytes(_lines(change(d, rows) if change else rows))
    return folder


def _one_file(path, domain_of):
    """One JSON Lines file with a domain column: `domain_of(i, domain)` gives row i's value."""
    rows = [
        {"text": t, "domain": domain_of(i, d)} for i, (d, t) in enumerate((d, t) for d in DOMAINS for t in TEXTS[d])
    ]
    path.write_bytes(_lines(rows))
    return path


def _shards(folder, change=None):
    """Per domain a folder of 3 JSON Lines shards (rows i::3); `change(domain, shard, lines)` edits the raw lines."""
    for d in DOMAINS:
        (folder / d).mkdir(parents=True)
        for i in range(3):
            lines = [json.dumps({"text": t}).encode() + b"\n" for t in TEXTS[d][i::3]]
            (folder / d / f"shard{i}.jsonl").write_bytes(b"".join(change(d, i, lines) if change else lines))
    return folder


def _set(domain, index, row):
    def change(d, rows):
        if d == domain:
            rows[index] = row
        return rows

    return change


def _line(domain, shard, index, line):
    def change(d, i, lines):
        if (d, i) == (domain, shard):
            lines[index] = line
        return lines

    return change


def _same_texts(d, i, lines):  # the dna domain: 4 distinct texts, every one held out
    return [json.dumps({"text": f"ACGTACGTAC{k % 4}"}).encode() + b"\n" for k in range(20)] if d == "dna" else lines


CASES = {  # name: (make the data in a folder, streaming, what the line must say)
    "row without text": (lambda f: _per_domain(f / "c", _set("code", 10, {"other": 1})), False,
                         "text_column='text': 1 of the 60 rows of '{f}/c/code.jsonl' have no value (null or missing), "
                         "the first is row 10 (line 11): fill or remove them."),
    "text null": (lambda f: _per_domain(f / "c", _set("dna", 59, {"text": None})), False,
                  "1 of the 60 rows of '{f}/c/dna.jsonl' have no value (null or missing), the first is row 59"),
    "text a number": (lambda f: _per_domain(f / "c", lambda d, rows: [{"text": i} for i, _ in enumerate(rows)]),
                      False, "text_column='text' of '{f}/c/arithmetic.jsonl' holds int64 values, not text"),
    "some domains null": (lambda f: _one_file(f / "c.jsonl", lambda i, d: None if i % 50 == 7 else d), False,
                          "domain_column='domain': 5 of the 240 rows of '{f}/c.jsonl' have no value (null or "
                          "missing), the first is row 7 (line 8)"),
    "every domain null": (lambda f: _one_file(f / "c.jsonl", lambda i, d: None), False,
                          "domain_column='domain': 240 of the 240 rows of '{f}/c.jsonl' have no value"),
    "non-UTF-8 row in a shard": (lambda f: _shards(f / "s", _line("code", 2, 5, b'{"text": "caf\xe9"}\n')), True,
                                 "Domain 'code' of source='{f}/s': '{f}/s/code/shard2.jsonl' is not UTF-8 text "
                                 "(byte "),
    "empty shard": (lambda f: _shards(f / "s", lambda d, i, lines: [] if (d, i) == ("dna", 1) else lines), True,
                    "Domain 'dna' of source='{f}/s': '{f}/s/dna/shard1.jsonl' is empty."),
    "held-out row without text": (lambda f: _shards(f / "s", _line("code", 0, 2, b'{"text": null}\n')), True,
                                  "Domain 'code': row 2 of shard '{f}/s/code/shard0.jsonl', line 3 has no text "
                                  "(text_column='text' is None): fill or remove it."),
    "shard starting without text": (lambda f: _shards(f / "s", _line("prose", 1, 0, b'{"other": 3}\n')), True,
                                    "Domain 'prose' of source='{f}/s': shard '{f}/s/prose/shard1.jsonl': its first "
                                    "row has no text (text_column='text' is None; columns: other, text)"),
    "broken JSON at a shard's start": (lambda f: _shards(f / "s", _line("code", 0, 1, b'{"text": \n')), True,
                                       "Domain 'code' of source='{f}/s': shard '{f}/s/code/shard0.jsonl' could not be "
                                       "read: "),
    "every text held out": (lambda f: _shards(f / "s", _same_texts), True,
                            "Domain 'dna': every one of its texts is held out (4 distinct), so it has nothing to "
                            "train on"),
    "fewer texts than held out": (lambda f: _shards(f / "s", lambda d, i, lines: lines[:1] if d == "arithmetic"
                                                    else lines), True,
                                  "Domain 'arithmetic' has 3 distinct texts, fewer than the 4 to hold out per domain"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_data_row_is_one_line_naming_the_file_before_training(capsys, tmp_path, case):
    make, streaming, expected = CASES[case]
    data = make(tmp_path)
    out = tmp_path / "out"
    argv = ["--dataset_name", str(data), "--output_dir", str(out), "--validation_size", "4", "--ddk_update_steps",
            "none", "--block_size", "8", "--streaming", str(streaming).lower()]  # fmt: skip
    line = recipe_error_line(capsys, ddk.main, argv)
    assert expected.format(f=tmp_path) in line, line
    assert line.startswith(f"error: --dataset_name {data}") and not out.exists()


def test_a_training_row_without_text_met_mid_stream_is_skipped_with_one_warning(tmp_path, caplog):
    """Only the held-out head of a stream is read before training: a bad row further on is skipped (said once per
    domain), and the stream is every other text, in order, minus the held-out ones."""
    folder = _shards(tmp_path / "s", _line("code", 0, 7, b'{"text": null}\n'))
    sources = stream_domain_sources(str(folder))
    with caplog.at_level(logging.WARNING):
        train, held = hold_out_stream(sources, 2)
        trained = [row["text"] for row in train["code"]]
    expected = [t for i in range(3) for k, t in enumerate(TEXTS["code"][i::3]) if (i, k) != (0, 7)]
    assert held["code"]["text"] == expected[:2] and trained == [t for t in expected[2:] if t not in expected[:2]]
    warned = [r.getMessage() for r in caplog.records if "has no text" in r.getMessage()]
    assert warned == ["Domain 'code': a training row has no text (None); such rows are skipped."]


def test_shards_are_named_in_the_order_the_stream_reads_them(tmp_path):
    folder = _shards(tmp_path / "s")
    assert [Path(p).name for p in sorted((folder / "code").iterdir())] == [
        "shard0.jsonl",
        "shard1.jsonl",
        "shard2.jsonl",
    ]
    stream = stream_domain_sources(str(folder))["code"]
    assert [row["text"] for row in stream] == [t for i in range(3) for t in TEXTS["code"][i::3]]
