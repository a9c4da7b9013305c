"""Bad input fails before training with a message naming the field, the value and the fix."""

import pytest
import torch
from conftest import PadCollator, make_config, tiny_bert_cls, tiny_llama
from transformers import BertConfig, BertForTokenClassification, HfArgumentParser

from hf_distill import DistillationConfig, DistillationTrainer


def _trainer(args, student=None, teacher="default", **kwargs):
    student = student if student is not None else tiny_llama(hidden=16, seed=1)
    teacher = tiny_llama(hidden=32, layers=4, seed=2) if teacher == "default" else teacher
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, data_collator=PadCollator(), **kwargs)


def test_missing_teacher(config_factory):
    with pytest.raises(ValueError, match="teacher_model is missing.*set gamma, hidden_weight and attention_weight"):
        _trainer(config_factory(), teacher=None)


def test_no_teacher_needed_for_plain_fine_tuning(config_factory):
    trainer = _trainer(config_factory(gamma=0.0), teacher=None)
    assert trainer.teacher is None


def test_vocab_mismatch_without_tokenizer(config_factory):
    with pytest.raises(ValueError, match=r"Vocab mismatch: student vocab 96 != teacher vocab 128.*processing_class"):
        _trainer(config_factory(), teacher=tiny_llama(hidden=32, vocab=128, seed=2))


def test_vocab_mismatch_tokenizer_larger_than_model(config_factory):
    class FakeTokenizer:
        def __len__(self):
            return 100

    with pytest.raises(ValueError, match=r"Vocab mismatch: the tokenizer has 100 tokens but the student has 96"):
        _trainer(config_factory(), processing_class=FakeTokenizer())


def test_label_count_mismatch_for_classification(config_factory):
    with pytest.raises(ValueError, match="student has 3 labels and the teacher 5"):
        _trainer(config_factory(), student=tiny_bert_cls(16, seed=1), teacher=tiny_bert_cls(32, seed=2, num_labels=5))


@pytest.mark.parametrize("layer_map", ["1:5", "3:1"])
def test_layer_pair_out_of_range(config_factory, layer_map):
    with pytest.raises(
        ValueError,
        match=r"layer_map pair \d:\d is out of range: the student has layers 0..2 and the "
        r"teacher 0..4",
    ):
        _trainer(config_factory(hidden_weight=1.0, layer_map=layer_map))


def test_unparsable_layer_map():
    with pytest.raises(ValueError, match=r"layer_map='1-2' is not valid: use 'uniform', 'last', or"):
        make_config(__import__("pathlib").Path("/tmp"), layer_map="1-2")


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_attention_loss_without_attentions(config_factory, role):
    sdpa = tiny_llama(hidden=16 if role == "student" else 32, layers=2 if role == "student" else 4, eager=False)
    kwargs = {"student": sdpa} if role == "student" else {"teacher": sdpa}
    with pytest.raises(ValueError, match=f"the {role} uses attn_implementation='sdpa'.*attn_implementation=\"eager\""):
        _trainer(config_factory(attention_weight=1.0), **kwargs)


@pytest.mark.parametrize("field", ["alpha_ce", "gamma", "hidden_weight", "attention_weight"])
def test_negative_weight(tmp_path, field):
    with pytest.raises(ValueError, match=rf"DistillationConfig.{field}=-0.5 is negative: loss weights must be >= 0"):
        make_config(tmp_path, **{field: -0.5})


def test_all_weights_zero(tmp_path):
    with pytest.raises(ValueError, match="all 0, so there is nothing to train on"):
        make_config(tmp_path, alpha_ce=0.0, gamma=0.0)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_temperature_not_positive(tmp_path, temperature):
    with pytest.raises(ValueError, match=rf"DistillationConfig.temperature={temperature} must be > 0"):
        make_config(tmp_path, temperature=temperature)


def test_bad_choices(tmp_path):
    with pytest.raises(ValueError, match=r"DistillationConfig.divergence='kl' is not supported; choose one of"):
        make_config(tmp_path, divergence="kl")
    with pytest.raises(ValueError, match=r"DistillationConfig.jsd_beta=1.0 must be strictly between 0 and 1"):
        make_config(tmp_path, divergence="jsd", jsd_beta=1.0)


def test_unsupported_task(config_factory):
    config = BertConfig(
        vocab_size=96, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    with pytest.raises(
        ValueError, match="The student model BertForTokenClassification is not supported.*Supported tasks"
    ):
        _trainer(config_factory(), student=BertForTokenClassification(config))


def test_teacher_task_differs(config_factory):
    with pytest.raises(ValueError, match=r"teacher's task \(sequence_classification\) differs from the student's"):
        _trainer(config_factory(), teacher=tiny_bert_cls(32, seed=2))


def test_missing_labels_is_a_clear_error(config_factory):
    trainer = _trainer(config_factory())
    with pytest.raises(ValueError, match="needs `labels` in every batch"):
        trainer.compute_loss(trainer.model, {"input_ids": torch.ones(1, 4, dtype=torch.long)})


def test_config_parses_from_command_line(tmp_path):
    (args,) = HfArgumentParser(DistillationConfig).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--temperature",
            "2",
            "--divergence",
            "jsd",
            "--layer_map",
            "1:2,2:4",
            "--report_to",
            "none",
        ]
    )
    assert (args.temperature, args.divergence, args.layer_map) == (2.0, "jsd", "1:2,2:4")
    with pytest.raises(ValueError, match="DistillationConfig.temperature=-2.0 must be > 0"):
        HfArgumentParser(DistillationConfig).parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path), "--temperature", "-2", "--report_to", "none"]
        )
