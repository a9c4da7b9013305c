"""`recipes/cross_tokenizer.py` (`hf-distill cross-tokenizer`) on its embedded demo, offline: a student on the
Llama-style tokenizer learns from the demo teacher on its byte-level BPE, DDK re-weighting on bits per byte."""

from __future__ import annotations

import json

import pytest
from conftest import DEMO, recipe_error_line
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_distill.commands import cross_tokenizer


def test_the_demo_trains_a_student_on_another_tokenizer_and_saves_it(tmp_path, capsys):
    out = tmp_path / "ct"
    cross_tokenizer.main(["--output_dir", str(out), "--max_steps", "30", "--ddk_update_steps", "10"])
    printed = capsys.readouterr().out
    assert "per-domain bits per byte" in printed
    results = json.loads((out / "results.json").read_text())
    bits = results["bits_per_byte"]
    domains = ["arithmetic", "code", "dna", "prose"]
    assert sorted(bits["teacher"]) == domains
    for domain in domains:
        assert bits["student-after"][domain] < 0.9 * bits["student-before"][domain], (domain, bits)
        assert bits["teacher"][domain] < bits["student-after"][domain]
    updates = [h for h in results["log_history"] if "ddk/weight/prose" in h]
    assert len(updates) == 2 and all("ddk/bpb_T/prose" in h for h in updates)
    assert any("loss_span_kd" in h and "loss_span_uld" in h for h in results["log_history"])
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(DEMO / "llama_tokenizer").get_vocab()
    student = AutoModelForCausalLM.from_pretrained(out)
    assert student.config.vocab_size == len(tokenizer) != len(AutoTokenizer.from_pretrained(DEMO / "teacher"))
    assert (out / "README.md").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "no/such/dir"], "--dataset 'no/such/dir' is not a directory"),
        (["--seq_kd", "true", "--lmbda", "0.5"], "seq_kd=True with span_kd_weight=1.0, span_uld_weight=1.0"),
        (["--uld_normalisation", "words"], "uld_normalisation='words'"),
    ],
)
def test_bad_settings_are_one_line_before_anything_is_written(tmp_path, capsys, argv, message):
    out = tmp_path / "ct"
    line = recipe_error_line(capsys, cross_tokenizer.main, ["--output_dir", str(out), *argv])
    assert message in line
    assert not out.exists()
