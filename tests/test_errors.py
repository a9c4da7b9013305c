"""Bad input fails before training with a message naming the field, the value and the fix."""

import math

import pytest
import torch
from conftest import PadCollator, lm_dataset, make_config, tiny_bert_cls, tiny_llama
from transformers import BertConfig, BertForTokenClassification, HfArgumentParser

from hf_distill import DistillationConfig, DistillationTrainer


def _trainer(args, student=None, teacher="default", **kwargs):
    student = student if student is not None else tiny_llama(hidden=16, seed=1)
    teacher = tiny_llama(hidden=32, layers=4, seed=2) if teacher == "default" else teacher
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, data_collator=PadCollator(), **kwargs)


def test_missing_teacher(config_factory):
    with pytest.raises(
        ValueError,
        match=r"teacher_model is missing.*set every teacher term \(gamma, uld_weight, span_kd_weight, "
        r"span_uld_weight, hidden_weight",
    ):
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
    with pytest.raises(ValueError, match=r"every loss weight \(alpha_ce, .*\) is 0, so there is nothing to train on"):
        make_config(tmp_path, alpha_ce=0.0, gamma=0.0)


@pytest.mark.parametrize("temperature", [0.0, -1.0, 1e-30, float("nan"), 1e9])
def test_temperature_out_of_range(tmp_path, temperature):
    with pytest.raises(
        ValueError, match=rf"DistillationConfig.temperature={temperature} must be a finite number >= 0.01"
    ):
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
    with pytest.raises(ValueError, match="DistillationConfig.temperature=-2.0 must be a finite number >= 0.01"):
        HfArgumentParser(DistillationConfig).parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path), "--temperature", "-2", "--report_to", "none"]
        )


# ---- DDK / multi-domain data ---------------------------------------------------------------------------------


def _domains(names=("a", "b", "c"), n=8):
    return {name: lm_dataset(n=n, seed=i) for i, name in enumerate(names)}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ddk_update_steps", 0, r"ddk_update_steps=0 must be an integer >= 1 \(optimizer steps between"),
        ("ddk_update_steps", -5, r"ddk_update_steps=-5 must be an integer >= 1"),
        ("ddk_alpha", 1.5, r"ddk_alpha=1.5 must be a finite number >= 0 and <= 1"),
        ("ddk_alpha", -0.1, r"ddk_alpha=-0.1 must be a finite number >= 0 and <= 1"),
        ("ddk_eval_batches", 0, r"ddk_eval_batches=0 must be an integer >= 1"),
        ("ddk_eval_tokens", 1, r"ddk_eval_tokens=1 must be an integer >= 2 \(held-out label tokens per domain"),
        ("ddk_ratio_temperature", 0.0, r"ddk_ratio_temperature=0.0 must be a finite number > 0 \(1 is the paper"),
        ("ddk_ratio_temperature", math.inf, r"ddk_ratio_temperature=inf must be a finite number > 0"),
        ("ddk_min_weight", -0.1, r"ddk_min_weight=-0.1 must be a finite number >= 0 and <= 1"),
        ("ddk_max_weight", 0.0, r"ddk_max_weight=0.0 must be a finite number > 0 and <= 1"),
        ("ddk_max_weight", 1.5, r"ddk_max_weight=1.5 must be a finite number > 0 and <= 1"),
        ("ddk_gap", "kl", r"ddk_gap='kl' is not supported; choose one of \['perplexity', 'cross_entropy', 'log_"),
        ("ddk_initial_weights", "a=0.5,b=0.6", r"ddk_initial_weights='a=0.5,b=0.6': .*sum to 1 \(they sum to 1.1\)"),
        ("ddk_initial_weights", "a=1.5,b=-0.5", r"ddk_initial_weights=.*weights must be >= 0"),
        ("ddk_initial_weights", "a=0.5,b", r"ddk_initial_weights='a=0.5,b': cannot parse"),
    ],
)
def test_ddk_config_errors(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=r"DistillationConfig\." + message):
        make_config(tmp_path, **{field: value})


def test_ddk_config_from_command_line(tmp_path):
    (args,) = HfArgumentParser(DistillationConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--ddk_update_steps", "100", "--ddk_initial_weights", "a=0.25,b=0.75"]
    )
    assert args.ddk_update_steps == 100 and args.initial_domain_weights == {"a": 0.25, "b": 0.75}
    with pytest.raises(ValueError, match="ddk_alpha=2.0 must be a finite number >= 0 and <= 1"):
        HfArgumentParser(DistillationConfig).parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path), "--ddk_alpha", "2"]
        )


def test_domain_without_training_data(config_factory):
    train = {**_domains(("a", "b")), "c": lm_dataset(n=8).select([])}
    with pytest.raises(ValueError, match="Domain 'c' has no examples"):
        _trainer(config_factory(), train_dataset=train)


def test_initial_weights_name_unknown_or_miss_a_domain(config_factory):
    with pytest.raises(ValueError, match=r"names domains \['d'\] that have no training data.*\['a', 'b', 'c'\]"):
        _trainer(config_factory(ddk_initial_weights="a=0.5,b=0.25,d=0.25"), train_dataset=_domains())
    with pytest.raises(ValueError, match=r"gives no weight to domains \['c'\]"):
        _trainer(config_factory(ddk_initial_weights="a=0.5,b=0.5"), train_dataset=_domains())


def test_ddk_validation_data_errors(config_factory):
    args = config_factory(ddk_update_steps=10)
    with pytest.raises(ValueError, match="DDK needs held-out data of every domain: pass ddk_eval_dataset="):
        _trainer(args, train_dataset=_domains())
    with pytest.raises(ValueError, match=r"ddk_eval_dataset has domains \['d'\] with no training data"):
        _trainer(args, train_dataset=_domains(), ddk_eval_dataset=_domains(("a", "b", "c", "d")))
    with pytest.raises(ValueError, match=r"Domains \['b'\] have no validation data"):
        _trainer(args, train_dataset=_domains(), ddk_eval_dataset=_domains(("a", "c")))
    empty_b = {**_domains(("a", "c")), "b": lm_dataset(n=4).select([])}
    with pytest.raises(ValueError, match=r"Domains \['b'\] have no validation data"):
        _trainer(args, train_dataset=_domains(), ddk_eval_dataset=empty_b)


def test_ddk_needs_domains_and_a_teacher(config_factory):
    with pytest.raises(ValueError, match="train_dataset has no 'domain' column: add one, set domain_column"):
        _trainer(config_factory(ddk_update_steps=10), train_dataset=lm_dataset())
    with pytest.raises(ValueError, match="DDK compares the student with the teacher"):
        _trainer(config_factory(ddk_update_steps=10, gamma=0.0), teacher=None, train_dataset=_domains())


def test_resume_without_ddk_state_is_a_clear_error(config_factory, tmp_path):
    kwargs = dict(train_dataset=_domains(), ddk_eval_dataset=_domains(n=4))
    _trainer(config_factory(max_steps=2, save_strategy="steps", save_steps=2), **kwargs).train()
    checkpoint = str(tmp_path / "out" / "checkpoint-2")  # written without DDK
    with pytest.raises(ValueError, match="The checkpoint has no DDK state"):
        _trainer(config_factory(max_steps=4, ddk_update_steps=2), **kwargs).train(resume_from_checkpoint=checkpoint)


# ---- DSG-KD ------------------------------------------------------------------------------------------------------


def test_dsg_kd_with_token_level_teacher_terms_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"word_hidden_weight=1.0 .* turn on DSG-KD.*set gamma=0 \(now 1.0\)"):
        make_config(tmp_path, word_hidden_weight=1.0)
    with pytest.raises(ValueError, match=r"hidden_weight=0 \(now 2.0\)"):
        make_config(tmp_path, word_attention_weight=1.0, gamma=0.0, hidden_weight=2.0)


def test_dsg_kd_without_its_collator_is_a_clear_error(config_factory):
    trainer = _trainer(config_factory(gamma=0.0, word_hidden_weight=1.0), train_dataset=lm_dataset())
    with pytest.raises(ValueError, match="own tokenization.*use DSGKDCollator"):
        trainer.train()


def test_projections_are_part_of_the_module_a_sharding_backend_wraps(config_factory, monkeypatch):
    # hf_distill 0.1 refused learned projections under DeepSpeed / FSDP (they lived outside the engine); they are now
    # parameters of the student module that the engine wraps, so a sharded backend accepts them
    trainer = _trainer(config_factory(hidden_weight=1.0))  # widths 16 vs 32: a learned projection
    monkeypatch.setattr("hf_distill.training.teacher.shards_parameters", lambda accelerator: True)  # ZeRO-3 / FSDP
    trainer.teacher_setup.check_sharded_backend(trainer.accelerator, trainer.args)
    projections = {id(p) for p in trainer.projector.parameters()}
    assert projections and projections <= {id(p) for p in trainer.model.parameters()}


@pytest.mark.parametrize("logit_loss", ["auto", "fused"])
def test_fused_logits_under_sharded_heads_turn_off_or_are_refused(config_factory, monkeypatch, logit_loss):
    trainer = _trainer(config_factory(logit_loss=logit_loss))
    assert trainer.teacher_setup.fused_logits
    monkeypatch.setattr("hf_distill.training.teacher.shards_parameters", lambda accelerator: True)  # ZeRO-3 / FSDP
    if logit_loss == "auto":
        trainer.teacher_setup.check_sharded_backend(trainer.accelerator, trainer.args)
        assert not trainer.teacher_setup.fused_logits
    else:
        with pytest.raises(ValueError, match=r"logit_loss='fused' reads the output heads' weights"):
            trainer.teacher_setup.check_sharded_backend(trainer.accelerator, trainer.args)
