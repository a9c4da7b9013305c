"""Cross-tokenizer logit distillation (ULD): the loss against a hand loop, the collator, training across two
tokenizers trained offline (a Llama-style SentencePiece BPE teacher, a GPT-2-style byte-level BPE student)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DEMO, make_config, tiny_gpt2, tiny_llama
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from hf_distill import CrossTokenizerCollator, DistillationConfig, DistillationTrainer, uld_loss
from hf_distill.losses import aligned_positions


def _texts() -> list[str]:
    texts = []
    for domain in ("prose", "arithmetic", "code"):
        with open(DEMO / "corpus" / f"{domain}.jsonl") as f:
            texts += [json.loads(line)["text"][:120] for line in f][:80]
    return texts


def llama_style_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """SentencePiece-like BPE (`▁` marks a word start), `<s>` prepended, as Llama's."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<s>", "</s>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")  # fmt: skip


def gpt2_style_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE as GPT-2's: no special token added to a text, `<|endoftext|>` as EOS and padding."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def pair():
    texts = _texts()
    return texts, llama_style_tokenizer(texts), gpt2_style_tokenizer(texts)


# ---- the loss -------------------------------------------------------------------------------------------------------


def _hand_uld(student, teacher, student_mask, teacher_mask, temperature):
    """Python loops in float64: the k-th label position of each row against the k-th of the other tokenization."""
    total = 0.0
    for b in range(student.shape[0]):
        s_pos = [i for i in range(student.shape[1]) if student_mask[b, i]]
        t_pos = [j for j in range(teacher.shape[1]) if teacher_mask[b, j]]
        for i, j in zip(s_pos, t_pos, strict=False):  # zip stops at the shorter: the paper's truncation
            p = sorted(torch.softmax(student[b, i].double() / temperature, -1).tolist(), reverse=True)
            q = sorted(torch.softmax(teacher[b, j].double() / temperature, -1).tolist(), reverse=True)
            width = max(len(p), len(q))
            p, q = p + [0.0] * (width - len(p)), q + [0.0] * (width - len(q))
            total += sum(abs(a - c) for a, c in zip(p, q, strict=True))
    return total


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("chunk", [1, 3, 256])
def test_uld_equals_a_hand_loop_in_float64(temperature, chunk):
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 7, 11) * 3, torch.randn(3, 5, 17) * 3
    student_mask = torch.rand(3, 7) > 0.3
    teacher_mask = torch.rand(3, 5) > 0.2
    student_mask[2] = False  # a row without labels compares nothing
    value = uld_loss(student, teacher, student_mask, teacher_mask, temperature, chunk)
    assert value.item() == pytest.approx(
        _hand_uld(student, teacher, student_mask, teacher_mask, temperature), rel=1e-5
    )


def test_uld_gradient_equals_autograd_of_a_per_position_reference():
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 6, 13, dtype=torch.float64), torch.randn(2, 4, 9, dtype=torch.float64)
    masks = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 0, 1, 0, 0]]).bool(), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    ours = student.clone().requires_grad_(True)
    uld_loss(ours, teacher, *masks, 1.5, chunk_size=2).backward()
    ref = student.clone().requires_grad_(True)
    total = 0
    for b, pairs in enumerate([[(1, 0), (2, 1), (3, 2)], [(0, 0), (1, 1), (3, 2)]]):  # by hand: k-th with k-th
        for i, j in pairs:
            p = torch.softmax(ref[b, i] / 1.5, -1).sort(descending=True).values
            q = torch.nn.functional.pad(torch.softmax(teacher[b, j] / 1.5, -1).sort(descending=True).values, (0, 4))
            total = total + (p - q).abs().sum()
    total.backward()
    torch.testing.assert_close(ours.grad, ref.grad, rtol=1e-5, atol=1e-6)  # the kernel runs in float32


def test_aligned_positions_pair_the_kth_label_of_each_row():
    student = torch.tensor([[0, 1, 1, 0, 1], [1, 1, 1, 1, 1]]).bool()
    teacher = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]]).bool()
    s, t = aligned_positions(student, teacher)
    assert s.tolist() == [[False, True, True, False, True], [True, True, False, False, False]]
    assert t.tolist() == [[True, True, True, False], [False, False, True, True]]


# ---- the collator and the trainer -----------------------------------------------------------------------------------


def test_collator_gives_each_model_its_own_tokenization_of_the_text(pair):
    texts, teacher_tok, student_tok = pair
    batch = CrossTokenizerCollator(student_tok, teacher_tok, max_length=64)([{"text": t} for t in texts[:3]])
    for i, text in enumerate(texts[:3]):
        for prefix, tok in (("", student_tok), ("teacher_", teacher_tok)):
            ids = tok(text, truncation=True, max_length=64)["input_ids"]
            assert batch[prefix + "input_ids"][i, : len(ids)].tolist() == ids
            labels = batch[prefix + "labels"][i]
            text_ids = tok(text, add_special_tokens=False, truncation=True, max_length=64)["input_ids"]
            assert labels[labels != -100].tolist() == text_ids[: len(labels[labels != -100])]  # BOS, padding out
    assert batch["input_ids"].shape != batch["teacher_input_ids"].shape  # two tokenizations


def _uld_trainer(tmp_path, pair, **kwargs):
    texts, teacher_tok, student_tok = pair
    teacher = tiny_llama(hidden=64, vocab=len(teacher_tok), seed=1)
    student = tiny_gpt2(hidden=32, vocab=len(student_tok), seed=0)
    settings = dict(alpha_ce=0.0, gamma=0.0, uld_weight=1.0, max_steps=40, learning_rate=3e-3, logging_steps=10,
                    per_device_train_batch_size=8, per_device_eval_batch_size=16) | kwargs  # fmt: skip
    data = Dataset.from_list([{"text": t} for t in texts])
    return DistillationTrainer(
        model=student, teacher_model=teacher, args=make_config(tmp_path, **settings),
        train_dataset=data, eval_dataset=data.select(range(0, len(texts), 5)),
        data_collator=CrossTokenizerCollator(student_tok, teacher_tok, max_length=48), processing_class=student_tok,
    )  # fmt: skip


def test_a_gpt2_style_student_learns_from_a_llama_teacher_with_another_vocabulary(tmp_path, pair):
    _, teacher_tok, student_tok = pair
    assert len(teacher_tok) != len(student_tok) and teacher_tok.get_vocab() != student_tok.get_vocab()
    trainer = _uld_trainer(tmp_path, pair)
    before = trainer.evaluate()["eval_loss_uld"]
    trainer.train()
    after = trainer.evaluate()["eval_loss_uld"]
    logged = [h["loss_uld"] for h in trainer.state.log_history if "loss_uld" in h]
    assert len(logged) == 4 and after < 0.6 * before, (before, after, logged)


def test_uld_is_normalised_over_the_aligned_positions(tmp_path, pair):
    """The logged loss_uld of a batch is its ULD sum divided by the number of aligned pairs."""
    trainer = _uld_trainer(tmp_path, pair)
    batch = trainer.data_collator([{"text": t} for t in pair[0][:4]])
    trainer.model.eval()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    with torch.no_grad():
        s = trainer.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t = trainer.teacher(
            input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]
        ).logits
    s_mask, t_mask = batch["uld_student_mask"], batch["uld_teacher_mask"]  # paired by characters
    assert (s_mask.sum(1) == t_mask.sum(1)).all()
    total = _hand_uld(s[:, :-1], t[:, :-1], s_mask, t_mask, 1.0)
    assert loss.item() == pytest.approx(total / s_mask.sum().item(), rel=1e-5)


def test_vocabulary_mismatch_error_points_to_the_cross_tokenizer_term(tmp_path, pair):
    _, teacher_tok, student_tok = pair
    with pytest.raises(ValueError, match=r"Vocab mismatch.*uld_weight > 0 and CrossTokenizerCollator"):
        DistillationTrainer(
            model=tiny_gpt2(vocab=len(student_tok)), teacher_model=tiny_llama(vocab=len(teacher_tok)),
            args=make_config(tmp_path), train_dataset=Dataset.from_list([{"text": "a"}]),
            processing_class=student_tok,
        )  # fmt: skip


def test_uld_without_the_collator_and_with_token_terms_are_clear_errors(tmp_path, pair):
    trainer = _uld_trainer(tmp_path, pair)
    plain = {"input_ids": torch.tensor([[5, 6, 7]]), "labels": torch.tensor([[5, 6, 7]])}
    with pytest.raises(
        ValueError, match="uld_weight=1.0 need batches in which the teacher reads its own.*CrossTokenizerCollator"
    ):
        trainer.compute_loss(trainer.model, plain)
    with pytest.raises(
        ValueError, match=r"uld_weight=1.0 .* turn on DSG-KD / cross-tokenizer terms.*set gamma=0 \(now 1.0\)"
    ):
        DistillationConfig(output_dir=str(tmp_path), uld_weight=1.0, gamma=1.0)
    with pytest.raises(ValueError, match=r"seq_kd=True with uld_weight=1.0: the teacher would generate in its own"):
        DistillationConfig(output_dir=str(tmp_path), uld_weight=1.0, gamma=0.0, lmbda=0.5, seq_kd=True)
    with pytest.raises(ValueError, match=r"uld_normalisation='sentences'.*'tokens', 'texts'"):
        DistillationConfig(output_dir=str(tmp_path), uld_weight=1.0, gamma=0.0, uld_normalisation="sentences")
    with pytest.raises(ValueError, match=r"ddk_update_steps=5 with word_hidden_weight=1.0.*DSG-KD"):
        DistillationConfig(output_dir=str(tmp_path), word_hidden_weight=1.0, gamma=0.0, ddk_update_steps=5)
