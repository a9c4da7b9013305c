"""DSG-KD: domain-term tagging, word alignment across two tokenizers, word-level losses, and training."""

import pytest
import torch
from dsg_toy import student_tokenizer, teacher_tokenizer

from hf_distill import DomainTermTagger, DSGKDCollator, pool_word_states, word_attention_maps
from hf_distill.dsg_kd.alignment import align_word_spans, span_token_positions


def _words(text, spans):
    return [text[a:b] for a, b in spans]


# ---- tagging ---------------------------------------------------------------------------------------------------


def test_script_rule_finds_english_terms_in_korean_text():
    tagger = DomainTermTagger()
    text = (
        "환자는 어제부터 COVID-19 pneumonia로 입원. 흉부 X-ray(CT)에서 양측 ground-glass opacity 소견, Crohn's "
        "병력 의심; 산소포화도 SpO2 92%, 경과 관찰 필요."
    )
    assert _words(text, tagger(text)) == [
        "COVID-19", "pneumonia", "X-ray", "CT", "ground-glass", "opacity", "Crohn's", "SpO2"
    ]  # fmt: skip
    assert tagger("환자는 COVID-19 pneumonia로 입원.") == [(4, 12), (13, 22)]
    assert tagger("폐렴(pneumonia),발열") == [(3, 12)]  # punctuation on both sides, no spaces


def test_script_rule_edge_cases():
    tagger = DomainTermTagger()
    assert tagger("") == []
    assert tagger("환자는 어제부터 발열 있음.") == []  # no terms
    assert tagger("체온 38.5 도, 혈압 120/80") == []  # digits alone are not terms
    assert tagger("The patient has community-acquired pneumonia.") == []  # Latin text: no domain words
    assert tagger("   ") == []


def test_lexicon_mode_is_case_insensitive_longest_first_and_works_in_latin_text():
    tagger = DomainTermTagger(lexicon=["pneumonia", "ground-glass opacity", "glass", "COVID-19"])
    text = "Ground-Glass Opacity and glass; pneumonias, 폐렴pneumonia로, covid-19."
    assert _words(text, tagger(text)) == ["Ground-Glass Opacity", "glass", "pneumonia", "covid-19"]
    assert tagger("The patient has pneumonia.") == [(16, 25)]  # the lexicon decides, whatever the script
    assert DomainTermTagger(lexicon=["sepsis"])("") == []


def test_regex_mode_and_bad_settings():
    tagger = DomainTermTagger(pattern=r"[A-Z]{2,}")
    assert _words("환자 CT 및 MRI 시행", tagger("환자 CT 및 MRI 시행")) == ["CT", "MRI"]
    with pytest.raises(ValueError, match="not both"):
        DomainTermTagger(lexicon=["a"], pattern="a")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        DomainTermTagger(pattern="([")
    with pytest.raises(ValueError, match="the lexicon is empty"):
        DomainTermTagger(lexicon=[" "])


# ---- alignment -------------------------------------------------------------------------------------------------

TEXT = "환자는 COVID-19 pneumonia로 응급실에 내원함."
SPANS = [(4, 12), (13, 22)]  # "COVID-19", "pneumonia"


@pytest.fixture(scope="module")
def tokenizers():
    return teacher_tokenizer(), student_tokenizer()


def _encode(tokenizer, max_length=None):
    enc = tokenizer(
        TEXT, return_offsets_mapping=True, return_special_tokens_mask=True, truncation=max_length is not None,
        max_length=max_length,
    )  # fmt: skip
    return enc, (enc["offset_mapping"], enc["special_tokens_mask"])


def test_alignment_exact_positions_in_two_different_tokenizations(tokenizers):
    teacher, student = tokenizers
    t_enc, t_view = _encode(teacher)
    s_enc, s_view = _encode(student)
    # WordPiece (lower-cased, the particle stays on the word) vs a small cased BPE (terms in pieces)
    assert t_enc.tokens() == ["[CLS]", "환자는", "covid", "-", "19", "pneumonia로", "응급실에", "내원함", ".", "[SEP]"]
    assert s_enc.tokens()[2:15] == ["C", "O", "V", "I", "D", "-", "1", "9", "pneumo", "n", "i", "a", "로"]
    spans, (t_positions, s_positions) = align_word_spans(SPANS, [t_view, s_view])
    assert spans == SPANS
    assert t_positions == [[2, 3, 4], [5]]
    assert s_positions == [[2, 3, 4, 5, 6, 7, 8, 9], [10, 11, 12, 13]]


def test_alignment_drops_a_word_cut_by_truncation_in_both(tokenizers):
    teacher, student = tokenizers
    _, t_view = _encode(teacher, max_length=13)  # all 10 tokens fit
    s_enc, s_view = _encode(student, max_length=13)  # <s> + 11 tokens + </s>: "pneumonia" cut after "pneumo", "n"
    assert s_enc.tokens()[-3:] == ["pneumo", "n", "</s>"]
    assert span_token_positions(SPANS, *t_view) == [[2, 3, 4], [5]]
    assert span_token_positions(SPANS, *s_view) == [[2, 3, 4, 5, 6, 7, 8, 9], None]
    spans, (t_positions, s_positions) = align_word_spans(SPANS, [t_view, s_view])
    assert spans == [SPANS[0]] and t_positions == [[2, 3, 4]] and s_positions == [[2, 3, 4, 5, 6, 7, 8, 9]]
    _, s_view = _encode(student, max_length=6)  # "COVID-19" cut too, "pneumonia" entirely past the end
    assert align_word_spans(SPANS, [t_view, s_view]) == ([], [[], []])


def test_collator_builds_pools_for_both_tokenizations(tokenizers):
    teacher, student = tokenizers
    collate = DSGKDCollator(student, teacher, max_length=32)
    batch = collate([{"text": TEXT, "label": 1}, {"text": "환자는 어제부터 통증 호소.", "label": 0}])
    assert batch["labels"].tolist() == [1, 0]
    assert batch["word_mask"].tolist() == [[True, True], [False, False]]
    assert batch["teacher_input_ids"].shape[0] == 2 and "teacher_attention_mask" in batch
    expected_student = torch.zeros(2, batch["input_ids"].shape[1])
    expected_student[0, 2:10], expected_student[1, 10:14] = 1 / 8, 1 / 4
    torch.testing.assert_close(batch["word_pool"][0], expected_student)
    expected_teacher = torch.zeros(2, batch["teacher_input_ids"].shape[1])
    expected_teacher[0, 2:5], expected_teacher[1, 5] = 1 / 3, 1.0
    torch.testing.assert_close(batch["teacher_word_pool"][0], expected_teacher)
    assert not batch["word_pool"][1].any() and not batch["teacher_word_pool"][1].any()


def test_slow_tokenizer_is_a_clear_error(tokenizers):
    from transformers import PreTrainedTokenizer

    class CharTokenizer(PreTrainedTokenizer):  # a python ("slow") tokenizer: no offsets mapping
        def __init__(self):
            self.vocab = {"[PAD]": 0, "[UNK]": 1}
            super().__init__(pad_token="[PAD]", unk_token="[UNK]")

        def get_vocab(self):
            return dict(self.vocab)

        @property
        def vocab_size(self):
            return len(self.vocab)

        def _tokenize(self, text):
            return list(text)

        def _convert_token_to_id(self, token):
            return self.vocab.get(token, 1)

    with pytest.raises(ValueError, match="The student tokenizer CharTokenizer is not a fast tokenizer.*use_fast=True"):
        DSGKDCollator(CharTokenizer(), tokenizers[0])


# ---- word-level pooling ----------------------------------------------------------------------------------------


def test_word_pooling_matches_loops():
    torch.manual_seed(0)
    hidden, attn = torch.randn(2, 6, 5), torch.softmax(torch.randn(2, 3, 6, 6), -1)
    words = [[[1, 2], [4]], [[0, 1, 2]]]  # subword positions of each word, per example
    pool = torch.zeros(2, 2, 6)
    for b, example in enumerate(words):
        for w, positions in enumerate(example):
            pool[b, w, positions] = 1 / len(positions)
    states, maps = pool_word_states(hidden, pool), word_attention_maps(attn, pool)
    for b, example in enumerate(words):
        for w, positions in enumerate(example):
            torch.testing.assert_close(states[b, w], hidden[b, positions].mean(0))
            for v, keys in enumerate(example):
                for h in range(3):
                    mass = sum(attn[b, h, i, j] for i in positions for j in keys) / len(positions)
                    torch.testing.assert_close(maps[b, h, w, v], mass)
    assert not states[1, 1].any() and not maps[1, :, 1].any() and not maps[1, :, :, 1].any()


# ---- word-level terms in the trainer ---------------------------------------------------------------------------


def _dsg_trainer(tmp_path, tokenizers, **kwargs):
    from conftest import make_config, tiny_bert_cls

    from hf_distill import DistillationTrainer

    teacher_tok, student_tok = tokenizers
    settings = dict(gamma=0.0, word_hidden_weight=2.0, word_attention_weight=3.0, alpha_ce=0.5, layer_map="1:2,2:4")
    settings.update(kwargs)
    return DistillationTrainer(
        model=tiny_bert_cls(hidden=16, layers=2, heads=2, vocab=len(student_tok), seed=1, num_labels=2),
        teacher_model=tiny_bert_cls(hidden=32, layers=4, heads=4, vocab=len(teacher_tok), seed=2, num_labels=2),
        args=make_config(tmp_path, **settings),
        data_collator=DSGKDCollator(student_tok, teacher_tok, max_length=40),
    )


def _reference_word_terms(trainer, batch):
    """Hidden and attention word terms by loops over examples, words and layer pairs, from raw model outputs."""
    student = trainer.model(**{k: batch[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True,
                            output_attentions=True)  # fmt: skip
    teacher_inputs = {k: batch[f"teacher_{k}"] for k in ("input_ids", "attention_mask")}
    teacher = trainer.teacher(**teacher_inputs, output_hidden_states=True, output_attentions=True)

    def positions(pool, b, w):
        return pool[b, w].nonzero()[:, 0].tolist()

    words = [  # (example, student subword positions, teacher subword positions) of each domain word
        (b, positions(batch["word_pool"], b, w), positions(batch["teacher_word_pool"], b, w))
        for b, w in batch["word_mask"].nonzero().tolist()
    ]
    hidden = attention = 0.0
    for s, t in [(1, 2), (2, 4)]:
        proj = trainer.projector.proj[str(s)]
        for b, sp, tp in words:
            diff = proj(student.hidden_states[s][b, sp].mean(0)) - teacher.hidden_states[t][b, tp].mean(0)
            hidden = hidden + diff.pow(2).mean()
        s_attn, t_attn = student.attentions[s - 1].mean(1), teacher.attentions[t - 1].mean(1)  # heads differ: average
        for b, sp, tp in words:
            row = [  # query word: mean over its subwords of the attention mass on each key word's subwords
                (s_attn[b][sp][:, sk].sum(1).mean() - t_attn[b][tp][:, tk].sum(1).mean()) ** 2
                for bb, sk, tk in words
                if bb == b
            ]
            attention = attention + torch.stack(row).mean()
    return hidden / 2 / len(words), attention / 2 / len(words), len(words)


def test_word_terms_match_a_loop_reference(tmp_path, tokenizers):
    from dsg_toy import notes

    trainer = _dsg_trainer(tmp_path, tokenizers)
    batch = trainer.data_collator([dict(r) for r in notes(4, seed=5)])
    trainer.model.eval()
    loss = trainer.compute_loss(trainer.model, batch)
    logged = {k: v[-1].item() for k, v in trainer._metrics["eval"].items()}
    with torch.no_grad():
        hidden, attention, count = _reference_word_terms(trainer, batch)
        ce = torch.nn.functional.cross_entropy(
            trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
        )
    assert count >= 4  # every note holds a term
    assert logged["loss_word_hidden"] == pytest.approx(hidden.item(), rel=1e-5)
    assert logged["loss_word_attn"] == pytest.approx(attention.item(), rel=1e-5)
    assert loss.item() == pytest.approx(0.5 * ce.item() + 2.0 * hidden.item() + 3.0 * attention.item(), rel=1e-5)


def test_batch_without_domain_words_gives_zero_and_finite_gradients(tmp_path, tokenizers):
    trainer = _dsg_trainer(tmp_path, tokenizers, alpha_ce=1.0)
    rows = [{"text": "환자는 어제부터 통증 호소.", "label": 0}, {"text": "보호자와 함께 내원함.", "label": 1}]
    batch = trainer.data_collator(rows)
    assert not batch["word_mask"].any()
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    logged = {k: v[-1].item() for k, v in trainer._metrics["train"].items()}
    assert logged["loss_word_hidden"] == 0.0 and logged["loss_word_attn"] == 0.0
    assert torch.isfinite(loss)
    grads = [p.grad for p in [*trainer.model.parameters(), *trainer.projector.parameters()] if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


# ---- end to end ------------------------------------------------------------------------------------------------


def test_dsg_kd_moves_word_states_to_the_teacher_and_keeps_the_task_metric(tmp_path, tokenizers):
    from conftest import make_config, tiny_bert_cls
    from dsg_toy import notes, train_teacher

    from hf_distill import DistillationTrainer
    from hf_distill.metrics import classification_metrics

    teacher_tok, student_tok = tokenizers
    teacher = train_teacher(tiny_bert_cls(hidden=32, layers=4, heads=4, vocab=len(teacher_tok), seed=2, num_labels=2),
                            teacher_tok)  # fmt: skip
    train, test = notes(48, seed=7), notes(200, seed=8)
    teacher_accuracy = (
        teacher(**teacher_tok(list(test["text"]), padding=True, return_tensors="pt")).logits.argmax(-1).numpy()
        == test["label"]
    ).mean()  # fmt: skip
    assert teacher_accuracy > 0.95  # the teacher knows what the terms mean

    def run(name, **weights):
        args = make_config(
            tmp_path / name, max_steps=60, per_device_train_batch_size=8, per_device_eval_batch_size=50,
            learning_rate=2e-3, lr_scheduler_type="constant", gamma=0.0, layer_map="1:2,2:4", **weights,
        )  # fmt: skip
        trainer = DistillationTrainer(
            model=tiny_bert_cls(hidden=32, layers=2, heads=2, vocab=len(student_tok), seed=1, num_labels=2),
            teacher_model=teacher if weights else None,
            args=args,
            train_dataset=train,
            eval_dataset=test,
            data_collator=DSGKDCollator(student_tok, teacher_tok, max_length=40),
            compute_metrics=classification_metrics,
        )
        before = trainer.evaluate()
        trainer.train()
        return before, trainer.evaluate()

    _, plain = run("plain")
    before, dsg = run("dsg", word_hidden_weight=1.0, word_attention_weight=1.0)
    assert dsg["eval_loss_word_hidden"] < 0.7 * before["eval_loss_word_hidden"], (before, dsg)  # 1.63 -> 0.73 here
    assert dsg["eval_loss_word_attn"] < before["eval_loss_word_attn"], (before, dsg)
    assert dsg["eval_auroc"] >= plain["eval_auroc"], (plain, dsg)  # 0.80 vs 0.72 here
    assert dsg["eval_f1"] >= plain["eval_f1"], (plain, dsg)


def _one_sgd_step(tmp_path, tokenizers, batch_size, accumulation):
    from datasets import Dataset

    rows = [
        {"text": "환자는 pneumonia로 내원함.", "label": 1},
        {"text": "어제부터 COVID-19 증상으로 sepsis 의심.", "label": 1},
        {"text": "환자는 어제부터 통증 호소.", "label": 0},
        {"text": "검사상 rhinitis 소견.", "label": 0},
        {"text": "보호자와 함께 내원함.", "label": 0},
        {"text": "응급실에 stroke 및 headache 호소.", "label": 1},
        {"text": "소견 확인됨.", "label": 0},
        {"text": "gastritis 증상으로 내원함.", "label": 0},
    ]
    trainer = _dsg_trainer(
        tmp_path / f"{batch_size}x{accumulation}", tokenizers, max_steps=1, optim="sgd", learning_rate=0.5,
        lr_scheduler_type="constant", max_grad_norm=0.0, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
    )  # fmt: skip
    trainer.train_dataset = Dataset.from_list(rows)
    trainer.train()
    params = {f"s.{k}": v for k, v in trainer.model.state_dict().items()}
    params.update({f"p.{k}": v for k, v in trainer.projector.state_dict().items()})
    return params


def test_word_terms_are_normalised_over_the_whole_accumulated_batch(tmp_path, tokenizers):
    # 0, 1 or 2 domain words per note: a per-micro-batch mean would weight the words of each half differently
    full = _one_sgd_step(tmp_path, tokenizers, 8, 1)
    for batch_size, accumulation in ((4, 2), (2, 4)):
        split = _one_sgd_step(tmp_path, tokenizers, batch_size, accumulation)
        for key, value in full.items():
            torch.testing.assert_close(split[key], value, atol=1e-5, rtol=1e-5, msg=key)
