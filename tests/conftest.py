"""Shared fixtures: tiny models built from configs, synthetic data, a padding collator. No network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the demo toys (DSG-KD notes and tokenizers) live with the demo assets, shared by tests and notebooks
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes" / "demo"))
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest
import torch
from datasets import Dataset
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from hf_distill import DistillationConfig

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "hf_distill" / "demo"
RECIPE = ROOT / "recipes" / "ddk.py"
# the environment of a recipe run in a subprocess: offline, CPU, one thread
RECIPE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
              "OMP_NUM_THREADS": "1"}  # fmt: skip
VOCAB = 96


def launch_two(script, *args, port, check=True):
    """`script ARGS` on two gloo processes (accelerate 1.15 runs `--cpu --num_processes 2` as ONE process without
    mpirun; `--multi_gpu` uses torchrun), in the recipes' offline CPU environment; asserts success when `check`."""
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
         str(script), *map(str, args)],
        capture_output=True, text=True, env=RECIPE_ENV, timeout=300,
    )  # fmt: skip
    assert not check or proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def recipe_error_line(capsys, main, argv, code=2):
    """Run a recipe's `main(argv)` in-process; it must exit with `code` and one `error: ...` line, the last on
    stderr (no traceback). Returns that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ") or "Traceback" in line]
    assert len(errors) == 1 and errors[0] == err[-1], err[-6:]
    return err[-1]


def tiny_llama(hidden=32, layers=2, heads=4, vocab=VOCAB, seed=0, eager=True):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=64,
        initializer_range=0.2,
        attn_implementation="eager" if eager else "sdpa",
    )
    return LlamaForCausalLM(config)


def tiny_qwen2(hidden=32, layers=2, heads=4, vocab=VOCAB, seed=0):
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.2,
        attn_implementation="eager",
    )
    return Qwen2ForCausalLM(config)


def tiny_gpt2(hidden=32, layers=2, heads=4, vocab=VOCAB, seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=0.2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="eager",
    )
    return GPT2LMHeadModel(config)


def _bert_config(hidden, layers, heads, vocab, **kwargs):
    return BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=64,
        initializer_range=0.2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
        **kwargs,
    )


def tiny_bert_mlm(hidden=32, layers=2, heads=4, vocab=VOCAB, seed=0):
    torch.manual_seed(seed)
    return BertForMaskedLM(_bert_config(hidden, layers, heads, vocab))


def tiny_bert_cls(hidden=32, layers=2, heads=4, vocab=VOCAB, seed=0, num_labels=3):
    torch.manual_seed(seed)
    return BertForSequenceClassification(_bert_config(hidden, layers, heads, vocab, num_labels=num_labels))


def lm_dataset(n=32, min_len=6, max_len=20, vocab=VOCAB, seed=0):
    """Random token sequences of uneven lengths (so batches need padding)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        rows.append({"input_ids": torch.randint(1, vocab, (length,), generator=g).tolist()})
    return Dataset.from_list(rows)


def cls_dataset(n=32, num_labels=3, vocab=VOCAB, seed=0):
    ds = lm_dataset(n=n, vocab=vocab, seed=seed)
    return ds.map(lambda row, i: {"labels": i % num_labels}, with_indices=True)


class PadCollator:
    """Right-pads `input_ids` with 0, builds `attention_mask` and the labels of the task."""

    def __init__(self, task="causal_lm", mask_every=3):
        self.task, self.mask_every = task, mask_every

    def __call__(self, rows):
        length = max(len(r["input_ids"]) for r in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[i, : len(r["input_ids"])] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if self.task == "causal_lm":
            batch["labels"] = ids.masked_fill(mask == 0, -100)
        elif self.task == "masked_lm":
            labels = ids.masked_fill(mask == 0, -100)
            keep = torch.zeros_like(ids, dtype=torch.bool)
            keep[:, :: self.mask_every] = True
            labels = labels.masked_fill(~keep, -100)
            batch["labels"] = labels
            batch["input_ids"] = ids.masked_fill(keep & (mask == 1), 1)
        else:
            batch["labels"] = torch.tensor([r["labels"] for r in rows])
        return batch


def make_config(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-3,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        data_seed=0,
    )
    defaults.update(kwargs)
    return DistillationConfig(**defaults)


@pytest.fixture
def config_factory(tmp_path):
    return lambda **kwargs: make_config(tmp_path, **kwargs)
