"""Cross-tokenizer alignment on real tokenizer families built offline: the demo teacher's GPT-2-style byte-level BPE
(no BOS), the shipped Llama-style SentencePiece BPE (`<s>` BOS, `▁` word starts) and DSG-KD's WordPiece
(`[CLS] ... [SEP]`, lower-cased). Every check is against an independent reference written with characters and sets:
ULD's pairs, the spans, the merged-probability losses (float64 loops), ULD per text (and TRL GOLD's `ULDLoss`), and
DDK's bits per byte."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from types import SimpleNamespace

import dsg_toy
import pytest
import torch
from conftest import DEMO, tiny_gpt2, tiny_llama
from tokenizers import Tokenizer, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from hf_distill import CrossTokenizerCollator
from hf_distill.ddk.evaluator import DomainEvaluator
from hf_distill.losses import (
    aligned_positions,
    logit_distillation_loss,
    matched_columns,
    span_kd_loss,
    span_log_probs,
    span_uld_loss,
    uld_loss,
)

UNICODE = [
    "Café naïve résumé — “quoted” words… and more",
    "東京は日本の首都です。人口は約1400万人。",
    "한국어 임상 기록: patient 혈압 120/80, 맥박 72",
    "emoji 🙂👍 and math ∑x² ≤ 10 ± 0.5",
    "Ünïcödé ß ø å Ω α β γ δ",
    "def f(x):\n    return x ** 2  # 二乗",
    "price: 1,234.56 € or ¥7890 or £12",
    "tab\tseparated\tvalues\t42",
    "  leading and trailing spaces  ",
    "multiple   spaces and\nnew\nlines\n\n",
    "naïve code: print('héllo wörld')",
    "3.14159 2.71828 1.41421 0.57721 1.61803",
]


def corpus_texts(per_domain: int = 30, chars: int = 200) -> list[str]:
    texts = []
    for domain in ("prose", "code", "arithmetic", "dna"):
        lines = (DEMO / "corpus" / f"{domain}.jsonl").read_text().splitlines()
        texts += [json.loads(line)["text"][:chars] for line in lines[:per_domain]]
    return texts


TEXTS = corpus_texts() + UNICODE  # 132 texts: prose, code, digits, DNA, Unicode


def gpt2_style() -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(DEMO / "teacher")


def llama_style(bos: bool = True) -> PreTrainedTokenizerFast:
    tok = AutoTokenizer.from_pretrained(DEMO / "llama_tokenizer")
    if bos:
        return tok
    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    backend.post_processor = processors.TemplateProcessing(single="$A", special_tokens=[])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")  # fmt: skip


def wordpiece() -> PreTrainedTokenizerFast:
    return dsg_toy.teacher_tokenizer()


PAIRS = {
    "gpt2-llama": (gpt2_style, llama_style),
    "llama-gpt2": (llama_style, gpt2_style),
    "gpt2-wordpiece": (gpt2_style, wordpiece),
    "llama-wordpiece": (llama_style, wordpiece),
}


# ---- the independent reference ------------------------------------------------------------------------------------


def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's `bytes_to_unicode`, inverted: the byte each character of a byte-level token stands for."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(kept), 0
    for byte in range(256):
        if byte not in kept:
            kept.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(kept, chars, strict=True)}


BYTE_DECODER = _gpt2_byte_decoder()


def ref_byte_offsets(tokenizer, enc, text: str) -> list[tuple[int, int]]:
    """Byte offsets of each token: for a byte-level BPE by adding up the bytes its tokens spell (special tokens
    spell none); otherwise the UTF-8 length of the text before each character offset."""
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    if "ByteLevel" in str(tokenizer.backend_tokenizer.pre_tokenizer):
        out, cursor = [], 0
        for token, special in zip(tokens, enc["special_tokens_mask"], strict=True):
            size = 0 if special else len(token)
            out.append((cursor, cursor + size))
            cursor += size
        assert cursor <= len(text.encode("utf-8"))
        return out
    return [(len(text[:a].encode("utf-8")), len(text[:b].encode("utf-8"))) for a, b in enc["offset_mapping"]]


def ref_side(tokenizer, text: str, max_length: int):
    """(byte offsets, predicted targets, the byte it starts predicting at) of one tokenization, from the tokenizer."""
    enc = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True,
                    return_special_tokens_mask=True)  # fmt: skip
    offsets, special = ref_byte_offsets(tokenizer, enc, text), enc["special_tokens_mask"]
    targets = [i for i in range(1, len(offsets)) if not special[i]]
    begin = offsets[targets[0] - 1][1] if targets else None
    return offsets, targets, begin


def _end_keys(offsets, targets):
    """Each target keyed `(end, n)`: the n-th target of its side to end at that character."""
    seen: dict[int, int] = {}
    keys = []
    for i in targets:
        end = offsets[i][1]
        seen[end] = seen.get(end, 0) + 1
        keys.append((end, seen[end]))
    return keys


def ref_alignment(text: str, student, teacher):
    """Characters first: the first character both sides have a boundary at (from where both predict), the k-th
    targets after it paired; spans cut where the n-th target ending at a character exists on both sides."""
    (s_off, s_tg, s_begin), (t_off, t_tg, t_begin) = student, teacher
    if s_begin is None or t_begin is None:
        return [], []
    s_bounds = {s_begin, *(s_off[i][1] for i in s_tg)}
    t_bounds = {t_begin, *(t_off[i][1] for i in t_tg)}
    c0 = next((c for c in range(max(s_begin, t_begin), len(text.encode()) + 1) if c in s_bounds and c in t_bounds),
              None)  # fmt: skip
    if c0 is None:
        return [], []
    s_after = [i for i in s_tg if s_off[i][1] > c0]
    t_after = [j for j in t_tg if t_off[j][1] > c0]
    pairs = list(zip(s_after, t_after, strict=False))
    s_keys, t_keys = _end_keys(s_off, s_after), _end_keys(t_off, t_after)
    spans, previous = [], (c0, 0)
    for cut in sorted(set(s_keys) & set(t_keys)):
        s_in = [i for i, key in zip(s_after, s_keys, strict=True) if previous < key <= cut]
        t_in = [j for j, key in zip(t_after, t_keys, strict=True) if previous < key <= cut]
        spans.append((s_in, t_in, cut[0] - previous[0]))
        previous = cut
    return pairs, spans


def collated_alignment(batch, b: int):
    """The collator's pairs and spans of row `b`, as token indices (logit position + 1)."""
    s = (batch["uld_student_mask"][b].nonzero().flatten() + 1).tolist()
    t = (batch["uld_teacher_mask"][b].nonzero().flatten() + 1).tolist()
    spans = []
    for g in (batch["span_rows"] == b).nonzero().flatten().tolist():
        s_in = ((batch["span_student"][b] == g).nonzero().flatten() + 1).tolist()
        t_in = ((batch["span_teacher"][b] == g).nonzero().flatten() + 1).tolist()
        spans.append((s_in, t_in, int(batch["span_bytes"][g])))
    return list(zip(s, t, strict=True)), spans


@pytest.mark.parametrize("name", PAIRS)
def test_pairs_and_spans_equal_a_character_reference_on_132_texts(name):
    student_tok, teacher_tok = (make() for make in PAIRS[name])
    collator = CrossTokenizerCollator(student_tok, teacher_tok, max_length=64)
    aligned_rows = spans_seen = multi = 0
    for start in range(0, len(TEXTS), 16):
        texts = TEXTS[start : start + 16]
        batch = collator([{"text": t} for t in texts])
        for b, text in enumerate(texts):
            ref = ref_alignment(text, ref_side(student_tok, text, 64), ref_side(teacher_tok, text, 64))
            assert collated_alignment(batch, b) == ref, (name, text)
            aligned_rows += bool(ref[0])
            spans_seen += len(ref[1])
            multi += sum(len(s) > 1 or len(t) > 1 for s, t, _ in ref[1])
    assert aligned_rows >= 125 and spans_seen > 1500 and multi > 100, (aligned_rows, spans_seen, multi)


def test_a_bos_on_one_side_only_does_not_shift_the_pairs():
    """The same splits, with and without `<s>`: every pair predicts the same characters; pairing the k-th label
    positions (hf_distill <= 0.3) compared token k + 1 with token k."""
    with_bos, without = llama_style(bos=True), llama_style(bos=False)
    texts = TEXTS[:40]
    batch = CrossTokenizerCollator(without, with_bos, max_length=64)([{"text": t} for t in texts])
    for b, text in enumerate(texts):
        s_off = without(text, truncation=True, max_length=64, return_offsets_mapping=True)["offset_mapping"]
        t_off = with_bos(text, truncation=True, max_length=64, return_offsets_mapping=True)["offset_mapping"]
        pairs, spans = collated_alignment(batch, b)
        assert [s_off[s] for s, _ in pairs] == [t_off[t] for _, t in pairs], text
        assert len(pairs) == min(len(s_off) - 1, len(t_off) - 2)  # all the BOS-less side predicts (or truncation)
        assert all(len(s) == len(t) == 1 for s, t, _ in spans) and len(spans) == len(pairs)
    s_keep, t_keep = aligned_positions(batch["labels"][:, 1:] != -100, batch["teacher_labels"][:, 1:] != -100)
    s_first = s_keep[0].nonzero()[0].item() + 1
    t_first = t_keep[0].nonzero()[0].item() + 1
    s_off = without(texts[0], return_offsets_mapping=True)["offset_mapping"]
    t_off = with_bos(texts[0], return_offsets_mapping=True)["offset_mapping"]
    assert s_off[s_first] == t_off[t_first + 1]  # the positional pairing is one token off


def test_prompt_tokens_are_told_by_offsets_and_the_prompts_are_kept_for_generation():
    student_tok, teacher_tok = gpt2_style(), llama_style()
    features = [{"prompt": "Question: what is 12 + 7?", "completion": " Answer: 19."},
                {"prompt": "def add(a, b):", "completion": "\n    return a + b"}]  # fmt: skip
    batch = CrossTokenizerCollator(student_tok, teacher_tok, max_length=48)(features)
    for b, feature in enumerate(features):
        text, cut = feature["prompt"] + feature["completion"], len(feature["prompt"])
        for prefix, tok in (("", student_tok), ("teacher_", teacher_tok)):
            enc = tok(text, return_offsets_mapping=True, return_special_tokens_mask=True)
            expected = [
                i
                for i, ((start, _), special) in enumerate(
                    zip(enc["offset_mapping"], enc["special_tokens_mask"], strict=True)
                )
                if start >= cut and not special
            ]
            labels = batch[prefix + "labels"][b]
            assert (labels != -100).nonzero().flatten().tolist() == expected
            assert labels[expected].tolist() == [enc["input_ids"][i] for i in expected]
        prompt = student_tok(feature["prompt"])["input_ids"]
        assert batch["prompts"][b, -len(prompt) :].tolist() == prompt
        assert batch["prompt_attention_mask"][b].sum() == len(prompt)


# ---- the losses ----------------------------------------------------------------------------------------------------


def _batch(name="gpt2-llama", n=6, max_length=48):
    student_tok, teacher_tok = (make() for make in PAIRS[name])
    collator = CrossTokenizerCollator(student_tok, teacher_tok, max_length=max_length)
    return collator([{"text": t} for t in TEXTS[::21][:n]]), student_tok, teacher_tok


def _merged_reference(logits, spans_of_row, targets, temperature):
    """Float64 loop: per span, p(last | prefix) * prod p(earlier tokens)."""
    merged = []
    for b, positions in spans_of_row:
        p = torch.softmax(logits[b].double() / temperature, -1)
        factor = 1.0
        for pos in positions[:-1]:
            factor = factor * p[pos, targets[b, pos]]
        merged.append(p[positions[-1]] * factor)
    return torch.stack(merged)


def _span_positions(batch, key):
    return [(int(batch["span_rows"][g]), (batch[key][int(batch["span_rows"][g])] == g).nonzero().flatten().tolist())
            for g in range(len(batch["span_rows"]))]  # fmt: skip


def _reference_losses(s_logits, t_logits, batch, temperature, divergence):
    s_targets, t_targets = batch["labels"][:, 1:].clamp_min(0), batch["teacher_labels"][:, 1:].clamp_min(0)
    q_s = _merged_reference(s_logits, _span_positions(batch, "span_student"), s_targets, temperature)
    q_t = _merged_reference(t_logits, _span_positions(batch, "span_teacher"), t_targets, temperature)
    pairs = batch["matched_vocab"]
    kd = 0.0
    for g in range(len(q_s)):
        for s_id, t_id in pairs.tolist():
            ps, pt = q_s[g, s_id], q_t[g, t_id]
            if divergence == "forward_kl":
                kd = kd + pt * (pt.log() - ps.log())
            else:
                kd = kd + ps * (ps.log() - pt.log())
    s_rest = [v for v in range(q_s.shape[1]) if v not in set(pairs[:, 0].tolist())]
    t_rest = [v for v in range(q_t.shape[1]) if v not in set(pairs[:, 1].tolist())]
    uld = 0.0
    for g in range(len(q_s)):
        a = sorted(q_s[g, s_rest], reverse=True)
        c = sorted(q_t[g, t_rest].tolist(), reverse=True)
        width = max(len(a), len(c))
        a, c = a + [0.0] * (width - len(a)), c + [0.0] * (width - len(c))
        uld = uld + sum(abs(x - y) for x, y in zip(a, c, strict=True))
    return temperature**2 * kd, uld


def _ours(s_logits, t_logits, batch, temperature, divergence):
    count = len(batch["span_rows"])
    s = span_log_probs(s_logits, batch["span_student"], batch["labels"][:, 1:].clamp_min(0), count, temperature)
    t = span_log_probs(
        t_logits, batch["span_teacher"], batch["teacher_labels"][:, 1:].clamp_min(0), count, temperature
    )
    cols = matched_columns(batch["matched_vocab"], s.shape[-1], t.shape[-1])
    return span_kd_loss(s, t, cols[0], cols[1], divergence, temperature), span_uld_loss(s, t, cols[2], cols[3])


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_merged_probability_losses_equal_a_float64_loop_value_and_gradient(divergence, temperature):
    batch, student_tok, teacher_tok = _batch()
    assert len(batch["matched_vocab"]) > 50 and len(batch["span_rows"]) > 100
    torch.manual_seed(0)
    s_logits = torch.randn(*batch["span_student"].shape, len(student_tok), dtype=torch.float64) * 2
    t_logits = torch.randn(*batch["span_teacher"].shape, len(teacher_tok), dtype=torch.float64) * 2
    for index in (0, 1):  # span KD, span ULD
        ours_x = s_logits.clone().requires_grad_(True)
        ours = _ours(ours_x, t_logits, batch, temperature, divergence)[index]
        ours.backward()
        ref_x = s_logits.clone().requires_grad_(True)
        ref = _reference_losses(ref_x, t_logits, batch, temperature, divergence)[index]
        ref.backward()
        assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
        torch.testing.assert_close(ours_x.grad, ref_x.grad, rtol=1e-5, atol=1e-9)
        float32 = _ours(s_logits.float(), t_logits.float(), batch, temperature, divergence)[index]
        assert float32.item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_with_one_tokenizer_the_span_term_is_the_token_level_kl(divergence):
    tok = gpt2_style()
    batch = CrossTokenizerCollator(tok, tok, max_length=48)([{"text": t} for t in TEXTS[::11]])
    torch.manual_seed(1)
    s_logits = torch.randn(*batch["input_ids"].shape, len(tok)) * 3
    t_logits = torch.randn(*batch["input_ids"].shape, len(tok)) * 3
    mask = batch["labels"][:, 1:] != -100
    assert len(batch["span_rows"]) == mask.sum()  # one span per predicted token
    assert len(batch["matched_vocab"]) == len(tok)
    count = len(batch["span_rows"])
    s = span_log_probs(s_logits[:, :-1], batch["span_student"], batch["labels"][:, 1:].clamp_min(0), count, 2.0)
    t = span_log_probs(
        t_logits[:, :-1], batch["span_teacher"], batch["teacher_labels"][:, 1:].clamp_min(0), count, 2.0
    )
    cols = matched_columns(batch["matched_vocab"], s.shape[-1], t.shape[-1])
    assert len(cols[2]) == len(cols[3]) == 0  # nothing left for ULD
    ours = span_kd_loss(s, t, cols[0], cols[1], divergence, 2.0, 0.3)
    token_level = logit_distillation_loss(s_logits[:, :-1], t_logits[:, :-1], mask=mask, divergence=divergence,
                                          temperature=2.0, jsd_beta=0.3)  # fmt: skip
    torch.testing.assert_close(ours, token_level, rtol=1e-6, atol=0)
    assert span_uld_loss(s, t, cols[2], cols[3]).item() == 0.0


def _uld_per_text_reference(s_logits, t_logits, batch, temperature):
    """Float64 loop: each text's mean ULD distance over its pairs, then the mean over the texts that have pairs."""
    means = []
    for b in range(len(s_logits)):
        pairs, _ = collated_alignment(batch, b)
        if not pairs:
            continue
        total = 0.0
        for s, t in pairs:
            p = sorted(torch.softmax(s_logits[b, s - 1].double() / temperature, -1).tolist(), reverse=True)
            q = sorted(torch.softmax(t_logits[b, t - 1].double() / temperature, -1).tolist(), reverse=True)
            width = max(len(p), len(q))
            p, q = p + [0.0] * (width - len(p)), q + [0.0] * (width - len(q))
            total += sum(abs(x - y) for x, y in zip(p, q, strict=True))
        means.append(total / len(pairs))
    return sum(means) / len(means)


def _trl_uld(s_logits, t_logits, batch, temperature):
    """TRL GOLD's ULDLoss on the same pairs: the paired positions' logits as each row's answer."""
    gold = pytest.importorskip("trl.experimental.gold.gold_trainer")
    config = SimpleNamespace(
        uld_crossentropy_weight=0.0, uld_distillation_weight=1.0, uld_student_temperature=temperature,
        uld_teacher_temperature=temperature, uld_skip_student_eos=False, uld_skip_teacher_eos=False,
        use_extended_uld=False, uld_token_merge_strategy="observed",
    )  # fmt: skip
    rows = [collated_alignment(batch, b)[0] for b in range(len(s_logits))]
    width = max(len(r) for r in rows)
    s = torch.zeros(len(rows), width, s_logits.shape[-1])
    t = torch.zeros(len(rows), width, t_logits.shape[-1])
    labels = torch.full((len(rows), width), -100)
    for b, pairs in enumerate(rows):
        for k, (i, j) in enumerate(pairs):
            s[b, k], t[b, k], labels[b, k] = s_logits[b, i - 1], t_logits[b, j - 1], 0
    loss = gold.ULDLoss(config)
    return loss(s, t, labels, labels, labels.clamp_min(0), labels.clamp_min(0)).item()


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_uld_per_text_equals_a_float64_loop_and_trl_gold(temperature):
    batch, student_tok, teacher_tok = _batch("llama-gpt2", n=5)
    torch.manual_seed(2)
    s_logits = torch.randn(*batch["input_ids"].shape, len(student_tok)) * 2
    t_logits = torch.randn(*batch["teacher_input_ids"].shape, len(teacher_tok)) * 2
    masks = batch["uld_student_mask"], batch["uld_teacher_mask"]
    texts = uld_loss(s_logits[:, :-1], t_logits[:, :-1], *masks, temperature, 7, normalisation="texts")
    rows = masks[0].any(1).sum().item()
    reference = _uld_per_text_reference(s_logits, t_logits, batch, temperature)
    assert texts.item() / rows == pytest.approx(reference, rel=1e-5)
    tokens = uld_loss(s_logits[:, :-1], t_logits[:, :-1], *masks, temperature, 7)
    assert tokens.item() / masks[0].sum().item() != pytest.approx(reference, rel=1e-4)  # the two differ
    assert texts.item() / rows == pytest.approx(_trl_uld(s_logits, t_logits, batch, temperature), rel=1e-5)


# ---- DDK across tokenizers: bits per byte --------------------------------------------------------------------------


def test_ddk_measures_both_models_in_bits_per_byte_of_the_same_spans():
    batch, student_tok, teacher_tok = _batch("llama-gpt2", n=8, max_length=40)
    student = tiny_llama(vocab=len(student_tok), seed=3).eval()
    teacher = tiny_gpt2(vocab=len(teacher_tok), seed=4).eval()
    accelerator = SimpleNamespace(num_processes=1, process_index=0, device=torch.device("cpu"))
    evaluator = DomainEvaluator(None, lambda d: d, accelerator, 8, 0, "causal_lm", None, 16, nullcontext)
    s_sums, s_bytes = evaluator.row_cross_entropy(student, batch)
    t_sums, t_bytes = evaluator.row_cross_entropy(teacher, batch, teacher=True)
    texts = TEXTS[::21][:8]
    with torch.no_grad():
        s_logp = torch.log_softmax(student(input_ids=batch["input_ids"]).logits.double(), -1)
        t_logp = torch.log_softmax(teacher(input_ids=batch["teacher_input_ids"]).logits.double(), -1)
    for b, text in enumerate(texts):
        _, spans = ref_alignment(text, ref_side(student_tok, text, 40), ref_side(teacher_tok, text, 40))
        s_ids = student_tok(text, truncation=True, max_length=40)["input_ids"]
        t_ids = teacher_tok(text, truncation=True, max_length=40)["input_ids"]
        s_nll = -sum(s_logp[b, i - 1, s_ids[i]].item() for s_in, _, _ in spans for i in s_in)
        t_nll = -sum(t_logp[b, j - 1, t_ids[j]].item() for _, t_in, _ in spans for j in t_in)
        n_bytes = sum(n for _, _, n in spans)
        assert s_bytes[b].item() == t_bytes[b].item() == n_bytes > 0
        assert s_sums[b].item() == pytest.approx(s_nll, rel=1e-5)
        assert t_sums[b].item() == pytest.approx(t_nll, rel=1e-5)
        bits_per_byte = s_sums[b].item() / n_bytes / math.log(2)
        assert 0 < bits_per_byte < 2 * math.log2(len(student_tok))  # a random model: a few bits per byte
