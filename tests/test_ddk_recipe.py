"""recipes/ddk.py: the README's main command on the embedded demo, the cpu accelerate config with 2 processes, and
one-line errors for bad input before training."""

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import DEMO, RECIPE, ROOT
from conftest import RECIPE_ENV as ENV
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_distill import PROJECTOR_NAME, DomainStream
from hf_distill.recipe_tools.corpus import hold_out, load_domain_corpus, pack_texts

sys.path.insert(0, str(ROOT / "recipes"))
import ddk  # noqa: E402


def _launch(args, timeout=600):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _naive_losses(model_dir, validation_size=48, seed=0):
    """Mean token cross-entropy per domain of a saved model on the recipe's held-out texts, by a plain loop over
    the blocks with the model's own loss (an independent reference for the recipe's table)."""
    corpus = load_domain_corpus(str(DEMO / "corpus"))
    _, held_out = hold_out(corpus, validation_size, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    losses = {}
    for name, texts in held_out.items():
        blocks = pack_texts(texts, tokenizer, 128, domain_column=None)
        with torch.no_grad():
            values = [model(input_ids=torch.tensor([b]), labels=torch.tensor([b])).loss for b in blocks["input_ids"]]
        losses[name] = float(torch.stack(values).mean())  # equal-length blocks: the mean of means is the token mean
    return losses


@pytest.mark.slow
def test_demo_default_runs_offline_prints_the_table_and_favours_the_lagging_domains(tmp_path):
    """Acceptance 1: README's first command (`accelerate launch recipes/ddk.py`) on the embedded default."""
    out = tmp_path / "demo"
    proc = _launch(["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend",
                    "no", str(RECIPE), "--output_dir", str(out), "--disable_tqdm", "true"])  # fmt: skip
    assert "Per-domain perplexity on the held-out texts" in proc.stdout
    assert f"Done: student saved to {out}" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    before, after, teacher = (results["loss"][k] for k in ("student-before", "student-after", "teacher"))
    assert set(after) == {"arithmetic", "code", "dna", "prose"}
    for domain in after:
        assert after[domain] < before[domain], domain
        assert f"{math.exp(after[domain]):.3f}" in proc.stdout
    # the table's student-after column matches a plain loop over the saved student
    reference = _naive_losses(str(out))
    for domain, value in reference.items():
        assert after[domain] == pytest.approx(value, rel=1e-4), domain
    # DDK favours where the student lagged the teacher: the two domains with the largest before/teacher gap end with
    # more weight than each of the two others
    gap = sorted(after, key=lambda d: before[d] - teacher[d], reverse=True)
    final = {d: values[-1] for d, values in results["ddk_weights"].items()}
    assert min(final[d] for d in gap[:2]) > max(final[d] for d in gap[2:]), (gap, final)
    assert results["ddk_steps"] == list(range(0, 320, 40)) and all(  # no update at the last step (320)
        v[0] == 0.25 for v in results["ddk_weights"].values()
    )
    assert (out / "ddk_weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "lm_head.weight" in load_file(str(out / "model.safetensors")) and (out / "tokenizer.json").is_file()
    assert not (out / PROJECTOR_NAME).exists()


@pytest.mark.slow
def test_cpu_accelerate_config_runs_the_recipe_on_two_processes(tmp_path):
    """Acceptance 2: recipes/accelerate_configs/cpu.yaml, reduced steps."""
    out = tmp_path / "ddp"
    config = ROOT / "recipes" / "accelerate_configs" / "cpu.yaml"
    proc = _launch(["--config_file", str(config), "--main_process_port", "29531", str(RECIPE), "--output_dir",
                    str(out), "--max_steps", "12", "--ddk_update_steps", "6", "--disable_tqdm", "true"])  # fmt: skip
    assert proc.stdout.count("Done: student saved") == 1 and "2 process(es)" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["ddk_steps"] == [0, 6]  # none at the last step (12)
    # the table is computed over both processes' shares of the held-out blocks: it equals the single-process loop
    reference = _naive_losses(str(out))
    for domain, value in reference.items():
        assert results["loss"]["student-after"][domain] == pytest.approx(value, rel=1e-4), domain


# ---- bad input: one line on stderr, exit 2, nothing trained -----------------------------------------------------


def _bad(capsys, tmp_path, *args):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        ddk.main(["--output_dir", str(out), "--max_steps", "2", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress bars of datasets may come first
    errors = [line for line in err if "error" in line.lower()]
    assert errors == [err[-1]] and err[-1].startswith("error: "), err
    assert not (out / "model.safetensors").exists()
    return err[-1]


def test_missing_dataset_path_is_one_line(capsys, tmp_path):
    line = _bad(capsys, tmp_path, "--dataset_name", str(tmp_path / "nowhere"))
    assert line.startswith("error: --dataset_name") and "nowhere" in line and "does not exist" in line


def test_unknown_domain_column_is_one_line(capsys, tmp_path):
    data = tmp_path / "corpus.jsonl"
    data.write_text("".join(json.dumps({"text": f"t{i}", "source": "a"}) + "\n" for i in range(10)))
    line = _bad(capsys, tmp_path, "--dataset_name", str(data), "--domain_column", "topic")
    assert "domain_column='topic'" in line and "source" in line


def test_teacher_student_vocabulary_mismatch_is_one_line(capsys, tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(DEMO / "teacher", teacher)
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    tokenizer.add_tokens(["<extra_token>"])
    tokenizer.save_pretrained(teacher)
    line = _bad(capsys, tmp_path, "--teacher_model", str(teacher))
    assert "different vocabularies" in line and "385 vs 384" in line


def test_push_to_hub_while_offline_is_one_line_before_anything_loads(capsys, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    loads = []
    monkeypatch.setattr(ddk, "load_or_refuse", lambda *a, **k: loads.append(a))
    line = _bad(capsys, tmp_path, "--push_to_hub", "true", "--hub_model_id", "someone/student")
    assert line.startswith("error: --push_to_hub true, but the Hub is offline (HF_HUB_OFFLINE=1)") and not loads


def test_yaml_key_that_is_not_a_field_is_one_line(capsys, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("dataset_name: hf_distill/demo/corpus\nlearning_rat: 0.001\n")
    line = _bad(capsys, tmp_path, "--config", str(config))
    assert "'learning_rat' is not a field" in line and str(config) in line


def test_invalid_distillation_value_is_one_line(capsys, tmp_path):
    line = _bad(capsys, tmp_path, "--ddk_alpha", "1.5")
    assert "ddk_alpha" in line and "1.5" in line


# ---- phases, teacher passes, the split, the static control -------------------------------------------------------

FAST = ["--max_steps", "8", "--ddk_update_steps", "4", "--ddk_eval_batches", "2", "--per_device_train_batch_size",
        "8", "--per_device_eval_batch_size", "4", "--validation_size", "16", "--max_eval_batches", "2", "--plot",
        "false", "--disable_tqdm", "true"]  # fmt: skip


def _counted_run(monkeypatch, argv):
    """Run the recipe in-process; return its trainer and the batches each `block_losses` call evaluated."""
    from hf_distill.ddk.evaluator import DomainEvaluator

    captured, calls = {}, []
    build, block_losses = ddk.build, DomainEvaluator.block_losses

    def capture(argv=None):
        captured["trainer"], script, captured["data"] = build(argv)
        return captured["trainer"], script, captured["data"]

    def count(self, model, batches, names, teacher=False):
        calls.append((model, sum(len(b) for b in batches)))
        return block_losses(self, model, batches, names, teacher)

    monkeypatch.setattr(ddk, "build", capture)
    monkeypatch.setattr(DomainEvaluator, "block_losses", count)
    ddk.main(argv)
    return captured["trainer"], captured["data"], calls


def test_each_phase_prints_a_line_and_the_teacher_evaluates_each_held_out_batch_once(monkeypatch, capsys, tmp_path):
    trainer, data, calls = _counted_run(monkeypatch, ["--output_dir", str(tmp_path / "ddk"), *FAST])
    out, err = capsys.readouterr()
    for phase in ("table: teacher on 4 domains", "table: student before", "training, DDK every 4 steps",
                  "table: student after"):  # fmt: skip
        assert sum(phase in line for line in out.splitlines() if line.startswith("[phase] ")) == 1, phase
    assert [line.split(" (")[0] for line in err.splitlines() if line.startswith("DDK update at step")] == [
        "DDK update at step 4"
    ]  # fmt: skip (none at the last step, 8)
    table = trainer.domain_evaluator.collate(data["validation"], 2)
    own = trainer.domain_evaluator.collate(data["ddk_validation"], 2, trainer.args.ddk_eval_tokens)
    teacher_calls = [n for model, n in calls if model is trainer.teacher]
    assert teacher_calls == [sum(map(len, table)), sum(map(len, own))]  # the table's once, DDK's once
    assert all("step" in h for h in trainer.state.log_history)


def test_held_out_texts_depend_on_split_seed_only_never_occur_in_training_and_table_and_ddk_are_disjoint():
    argv = ["--validation_size", "16", "--ddk_validation_size", "12", "--block_size", "32"]
    texts = {seed: ddk.build([*argv, "--seed", seed])[2]["texts"] for seed in ("1", "2")}
    other = ddk.build([*argv, "--split_seed", "5"])[2]["texts"]
    for part in ("table", "ddk"):
        assert {d: t["text"] for d, t in texts["1"][part].items()} == {
            d: t["text"] for d, t in texts["2"][part].items()
        }
    assert {d: t["text"] for d, t in texts["1"]["table"].items()} != {d: t["text"] for d, t in other["table"].items()}
    train = set(texts["1"]["train"]["text"])
    for domain in texts["1"]["table"]:
        table, own = set(texts["1"]["table"][domain]["text"]), set(texts["1"]["ddk"][domain]["text"])
        assert len(table) == 16 and len(own) == 12 and not table & own and not (table | own) & train
    assert len(train) == len(texts["1"]["train"])  # no text twice
    workers = ddk.build([*argv, "--seed", "1", "--preprocessing_num_workers", "2"])[2]
    assert workers["texts"]["train"]["text"] == texts["1"]["train"]["text"]  # the same split, in 2 processes
    assert workers["train"]["input_ids"] == ddk.build([*argv, "--seed", "1"])[2]["train"]["input_ids"]


def test_a_static_mixture_runs_through_the_recipe_without_any_ddk_evaluation(monkeypatch, tmp_path, capsys):
    argv = ["--output_dir", str(tmp_path / "static"), *FAST, "--ddk_update_steps", "none", "--ddk_initial_weights",
            "arithmetic=0.4,code=0.2,dna=0.2,prose=0.2", "--plot", "false"]  # fmt: skip
    trainer, data, calls = _counted_run(monkeypatch, argv)
    assert trainer.ddk_callback is None and data["ddk_validation"] is None
    assert [model is trainer.teacher for model, _ in calls] == [True, False, False]  # the table only
    results = json.loads((tmp_path / "static" / "results.json").read_text())
    assert results["ddk_steps"] == [0] and results["ddk_weights"]["arithmetic"] == [0.4]
    assert not [h for h in trainer.state.log_history if any(k.startswith("ddk/") for k in h)]
    # --plot false: no plot written, and the closing line does not claim one
    (done,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Done: ")]
    assert not (tmp_path / "static" / "ddk_weights.png").exists() and "ddk_weights.png" not in done


PICKS = (("worst", lambda ratios: max(ratios.values())), ("mean", lambda ratios: sum(ratios.values()) / len(ratios)))


def _paired_reference(values, baseline):
    """Per-seed differences and scipy's paired t statistic: an independent recomputation of the ablation's summary."""
    from scipy import stats

    differences = [v - b for v, b in zip(values, baseline, strict=True)]
    return differences, float(stats.ttest_rel(values, baseline).statistic)


def test_the_ablation_summary_pairs_the_seeds_as_scipy_does():
    import ddk_ablation

    rng = np.random.default_rng(0)
    runs = {
        name: {seed: {d: float(rng.uniform(1, 3)) for d in ("x", "y", "z")} for seed in (0, 1, 2, 5)}
        for name in ("A", "B")
    }
    del runs["A"][5]  # a run cut short: A has 3 seeds, the baseline 4
    summary = ddk_ablation.summarise(runs, "B")
    for metric, pick in PICKS:
        values = [pick(runs["A"][seed]) for seed in (0, 1, 2)]
        baseline = [pick(runs["B"][seed]) for seed in (0, 1, 2)]
        differences, t = _paired_reference(values, baseline)
        cell = summary["A"][metric]["vs_baseline"]
        assert cell["seeds"] == [0, 1, 2] and cell["df"] == 2
        assert cell["differences"] == pytest.approx(differences, rel=1e-12)
        assert cell["t"] == pytest.approx(t, rel=1e-9)
        assert summary["A"][metric]["sd"] == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    assert "vs_baseline" not in summary["B"]["worst"]
    text = ddk_ablation.table(summary, "B")
    assert "paired difference from 'B'" in text and "t = " in text


@pytest.mark.slow
def test_the_ablation_keeps_each_runs_log_interleaves_seeds_and_reports_paired_differences(tmp_path, capsys):
    import ddk_ablation

    short = ["--max_steps", "5", "--ddk_update_steps", "2", "--validation_size", "8", "--ddk_validation_size", "8",
             "--block_size", "64", "--per_device_train_batch_size", "4"]  # fmt: skip
    argv = ["--seeds", "0", "1", "--conditions", "equal sampling", "--condition",
            "DDK T=4: --ddk_ratio_temperature 4", "--output_dir", str(tmp_path), "--", *short]  # fmt: skip
    summary = ddk_ablation.main(argv)
    out = capsys.readouterr().out
    names = ["equal sampling", "DDK T=4"]
    order = [
        line.split(", seed ")[0] + f"/{line.split(', seed ')[1][0]}" for line in out.splitlines() if ", seed " in line
    ]
    assert order == [f"{name}/{seed}" for seed in (0, 1) for name in names]  # every condition of seed 0 first
    ablation = json.loads((tmp_path / "ablation.json").read_text())
    assert ablation["summary"] == json.loads(json.dumps(summary)) and ablation["baseline"] == "equal sampling"
    folders = {"equal sampling": "equal_sampling", "DDK T=4": "DDK_T_4"}
    per_run = {}
    for name in names:
        for seed in (0, 1):
            folder = tmp_path / f"{folders[name]}-seed{seed}"
            log = (folder / "run.log").read_text()
            assert "[phase] training" in log and "Per-domain perplexity" in log
            assert ("DDK update at step 2" in log) == (name != "equal sampling")
            assert ("DDK update at step 4" in log) == (name != "equal sampling")  # none at the last step (5)
            assert ("--ddk_ratio_temperature" in json.loads((folder / "command.json").read_text())) == (
                name == "DDK T=4"
            )
            results = json.loads((folder / "results.json").read_text())
            loss = results["loss"]
            per_run[name, seed] = {d: math.exp(loss["student-after"][d] - loss["teacher"][d]) for d in loss["teacher"]}
    name = "DDK T=4"
    for metric, pick in PICKS:
        values = [pick(per_run[name, seed]) for seed in (0, 1)]
        baseline = [pick(per_run["equal sampling", seed]) for seed in (0, 1)]
        differences, t = _paired_reference(values, baseline)
        cell = summary[name][metric]["vs_baseline"]
        assert summary[name][metric]["values"] == {"0": pytest.approx(values[0]), "1": pytest.approx(values[1])}
        assert cell["differences"] == pytest.approx(differences, rel=1e-12)
        assert cell["t"] == pytest.approx(t, rel=1e-9) or (math.isnan(cell["t"]) and math.isnan(t))
    assert "paired difference from 'equal sampling'" in out
    # run again: every run is found done with the same command and reused, not repeated
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/results.json")}
    assert ddk_ablation.main(argv) == summary
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/results.json")} == stamps


def test_streaming_holds_out_each_domains_first_texts_and_trains_on_a_stream_of_the_rest(monkeypatch, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    files = {}  # the texts of each domain in reading order: `code` as a folder of two shards, the others one file
    for path in sorted((DEMO / "corpus").glob("*.jsonl")):
        lines = path.read_text().splitlines(keepends=True)
        if path.stem == "code":
            (corpus / "code").mkdir()
            (corpus / "code" / "part-0.jsonl").write_text("".join(lines[: len(lines) // 2]))
            (corpus / "code" / "part-1.jsonl").write_text("".join(lines[len(lines) // 2 :]))
        else:
            shutil.copy(path, corpus / path.name)
        files[path.stem] = [json.loads(line)["text"] for line in lines]
    argv = ["--output_dir", str(tmp_path / "stream"), *FAST, "--dataset_name", str(corpus), "--streaming", "true",
            "--ddk_validation_size", "12", "--logging_steps", "1"]  # fmt: skip
    trainer, data, _ = _counted_run(monkeypatch, argv)
    texts = data["texts"]
    for domain, stream in texts["train"].items():
        table, own = list(texts["table"][domain]["text"]), list(texts["ddk"][domain]["text"])
        distinct = list(dict.fromkeys(files[domain]))
        assert table + own == distinct[:28]  # 16 for the table, then 12 for DDK: the first distinct texts
        assert {row["text"] for row in stream} == set(distinct[28:])  # every other text, and no held-out one
    assert isinstance(trainer.train_dataset, DomainStream) and trainer.state.global_step == 8
    results = json.loads((tmp_path / "stream" / "results.json").read_text())
    assert results["ddk_steps"] == [0, 4] and set(results["perplexity"]["student-after"]) == set(files)
    shares = [h for h in trainer.state.log_history if "domain_share/code" in h]
    assert len(shares) == 8 and all(abs(sum(h[f"domain_share/{d}"] for d in files) - 1) < 1e-6 for h in shares)


def test_streaming_needs_a_directory_of_per_domain_sources(capsys, tmp_path):
    (tmp_path / "one.jsonl").write_text('{"text": "a", "domain": "x"}\n')
    with pytest.raises(SystemExit):
        ddk.main(["--dataset_name", str(tmp_path / "one.jsonl"), "--streaming", "true"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: --dataset_name") and "streaming reads one source per domain" in err
