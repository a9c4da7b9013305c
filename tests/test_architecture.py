"""The shape of the code: a loss-term registry that a term from outside the package joins with one declaration and
one function, a trainer composed of objects (no mixins), and every registered term read by the config's checks."""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import PadCollator, lm_dataset, make_config, tiny_llama
from transformers import Trainer

import hf_distill
from hf_distill import DistillationConfig, DistillationTrainer, LossTerm, register_loss_term, unregister_loss_term

PACKAGE = Path(hf_distill.__file__).parent


# ---- a term from outside the package ------------------------------------------------------------------------------


def l1_last_hidden(x) -> torch.Tensor:
    """Sum over the attended tokens of the mean |h| of the student's last hidden state."""
    per_token = x.student.hidden_states[-1].float().abs().mean(-1)
    return (per_token * x.attention_mask).sum()


@dataclass
class L1Config(DistillationConfig):
    l1_weight: float = field(default=0.0, metadata={"help": "Weight of the L1 penalty on the last hidden state."})


@pytest.fixture
def l1_term():
    term = register_loss_term(
        LossTerm("l1_last", "loss_l1", "l1_weight", "attended_tokens", {"hidden_states"}, l1_last_hidden)
    )
    yield term
    unregister_loss_term("l1_last")


def _l1_trainer(tmp_path, **kwargs):
    settings = dict(output_dir=str(tmp_path / "l1"), per_device_train_batch_size=4, learning_rate=1e-2,
                    report_to="none", logging_steps=1, save_strategy="no", use_cpu=True, disable_tqdm=True,
                    seed=0, **{"l1_weight": 2.0, "gamma": 1.0, **kwargs})  # fmt: skip
    return DistillationTrainer(
        model=tiny_llama(hidden=16, seed=1), teacher_model=tiny_llama(hidden=32, layers=4, seed=2),
        args=L1Config(**settings), train_dataset=lm_dataset(n=48), data_collator=PadCollator(),
    )  # fmt: skip


def test_a_term_registered_from_outside_trains_and_logs_its_own_value(tmp_path, l1_term):
    trainer = _l1_trainer(tmp_path, max_steps=1)
    batch = PadCollator()([lm_dataset(n=4, seed=3)[i] for i in range(4)])
    trainer.model.eval()
    loss = trainer.compute_loss(trainer.model, batch)
    logged = {k: v[-1].item() for k, v in trainer._metrics["eval"].items()}
    with torch.no_grad():  # independent reference: the model's own outputs, a loop over tokens
        out = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            output_hidden_states=True)  # fmt: skip
        tokens = [(b, t) for b, t in batch["attention_mask"].nonzero().tolist()]
        l1 = sum(out.hidden_states[-1][b, t].abs().mean().item() for b, t in tokens) / len(tokens)
    assert logged["loss_l1"] == pytest.approx(l1, rel=1e-5)
    assert loss.item() == pytest.approx(logged["loss_ce"] + logged["loss_kd"] + 2.0 * l1, rel=1e-5)

    trainer = _l1_trainer(tmp_path, max_steps=30, alpha_ce=0.0, gamma=0.0)  # the L1 term alone: it must fall
    trainer.train()
    values = [h["loss_l1"] for h in trainer.state.log_history if "loss_l1" in h]
    assert len(values) == 30 and values[-1] < 0.7 * values[0]
    assert not any("loss_ce" in h or "loss_kd" in h for h in trainer.state.log_history)
    card = trainer.model_card()
    assert "l1_weight=2.0" in str(card)


def test_a_registered_term_is_checked_by_the_config_and_needs_its_field(tmp_path, l1_term):
    with pytest.raises(ValueError, match=r"L1Config.l1_weight=-1.0 is negative"):
        L1Config(output_dir=str(tmp_path), l1_weight=-1.0)
    with pytest.raises(ValueError, match=r"every loss weight \(alpha_ce, gamma, .*l1_weight\) is 0"):
        L1Config(output_dir=str(tmp_path), alpha_ce=0.0, gamma=0.0)
    with pytest.raises(ValueError, match=r"'l1_last' \(weight field 'l1_weight'\) .* DistillationConfig has no such"):
        make_config(tmp_path)
    with pytest.raises(ValueError, match="already registered"):
        register_loss_term(l1_term)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_weight_that_is_not_a_finite_number_is_refused(tmp_path, value):
    with pytest.raises(ValueError, match=rf"DistillationConfig.gamma={value} is not a loss weight"):
        make_config(tmp_path, gamma=value)


def test_the_builtin_terms_are_declared_once_each():
    terms = {t.name: t for t in hf_distill.registered_terms()}
    assert list(terms) == ["ce", "kd", "cached_kd", "uld", "uld_texts", "span_kd", "span_uld", "hidden", "attention",
                           "word_hidden", "word_attention"]  # fmt: skip
    weights = {name: t.weight for name, t in terms.items()}
    assert weights == {"ce": "alpha_ce", "kd": "gamma", "cached_kd": "gamma", "uld": "uld_weight",
                       "uld_texts": "uld_weight", "span_kd": "span_kd_weight", "span_uld": "span_uld_weight",
                       "hidden": "hidden_weight", "attention": "attention_weight", "word_hidden": "word_hidden_weight",
                       "word_attention": "word_attention_weight"}  # fmt: skip
    config = make_config(Path("/tmp"), hidden_weight=1.0)
    assert [t.name for t in config.loss_terms] == ["ce", "kd", "hidden"]
    assert config.loss_weights == {"loss_ce": 1.0, "loss_kd": 1.0, "loss_uld": 0.0, "loss_span_kd": 0.0,
                                   "loss_span_uld": 0.0, "loss_hidden": 1.0, "loss_attn": 0.0,
                                   "loss_word_hidden": 0.0, "loss_word_attn": 0.0}  # fmt: skip
    texts = make_config(Path("/tmp"), gamma=0.0, uld_weight=1.0, uld_normalisation="texts")
    assert [t.name for t in texts.loss_terms] == ["ce", "uld_texts"]


# ---- composition, not inheritance ---------------------------------------------------------------------------------


def _classes():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                yield path.relative_to(PACKAGE), node


def test_no_mixins_and_the_trainer_inherits_from_trainer_only():
    assert not [f"{path}:{node.name}" for path, node in _classes() if "Mixin" in node.name]
    assert DistillationTrainer.__bases__ == (Trainer,)
    assert "_clip_grad_norm" not in vars(DistillationTrainer)
    assert "create_optimizer" not in vars(DistillationTrainer)


def test_trainer_hooks_are_overridden_in_one_file_only():
    subclasses = [
        f"{path}:{node.name}"
        for path, node in _classes()
        if any(getattr(base, "id", getattr(base, "attr", None)) == "Trainer" for base in node.bases)
    ]
    assert subclasses == ["training/trainer.py:DistillationTrainer"]


def test_no_callback_zeroes_projection_gradients_and_projections_share_the_optimizer(tmp_path):
    trainer = DistillationTrainer(
        model=tiny_llama(hidden=16, seed=1), teacher_model=tiny_llama(hidden=32, layers=4, seed=2),
        args=make_config(tmp_path, hidden_weight=1.0, max_steps=2), train_dataset=lm_dataset(),
        data_collator=PadCollator(),
    )  # fmt: skip
    trainer.train()
    callbacks = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert not [name for name in callbacks if "Projector" in name or "Grad" in name], callbacks
    optimized = [id(p) for group in trainer.optimizer.param_groups for p in group["params"]]
    trainable = [id(p) for p in trainer.model.parameters() if p.requires_grad]
    assert sorted(optimized) == sorted(trainable) and len(trainer.optimizer.param_groups) == 2  # decay / no decay
    assert {id(p) for p in trainer.projector.parameters()} <= set(optimized)


# ---- the architecture page matches the code -----------------------------------------------------------------------


def _architecture_page() -> str:
    readme = (PACKAGE.parent / "README.md").read_text()
    return readme[readme.index("## Architecture") :]


def test_the_architecture_page_maps_every_module_and_term():
    page = _architecture_page()
    assert len(page.splitlines()) <= 120
    modules = [p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"]
    modules = [m for m in modules if m.parts[0] not in ("metrics",)]  # the metrics folder is listed as a whole
    unlisted = []
    for module in modules:
        folder = f"`{module.parts[0]}/`" if len(module.parts) > 1 else None
        listed_folder = folder is not None and folder in page
        if f"`{module.as_posix()}`" not in page and f"`{module.name}`" not in page and not listed_folder:
            unlisted.append(str(module))
    assert not unlisted
    for term in hf_distill.registered_terms():
        assert f"| `{term.name}` | `{term.log_name}` | `{term.weight}` |" in page, term.name
    overrides = (
        "_save", "_load_from_checkpoint", "_set_signature_columns_if_needed", "_get_train_sampler", "_save_rng_state",
        "_load_optimizer_and_scheduler", "_load_rng_state",
    )  # fmt: skip
    for method in overrides:
        assert method in vars(DistillationTrainer) and f"| `{method}` (override)" in page
    private = {name for name in vars(DistillationTrainer) if name.startswith("_") and not name.startswith("__")}
    own = {"_adjust_args", "_attach_domains", "_metrics", "_data_seed", "_stream_state_path"}  # our own helpers
    assert {name for name in private - own if hasattr(Trainer, name)} == set(overrides)
