"""The `hf-distill` console script: dispatch, `cache-build` against the library function, and a wheel built and
installed in a fresh venv running the embedded demo from an empty folder."""

import json
import os
import subprocess
import sys
import sysconfig

import pytest
from conftest import DEMO, RECIPE_ENV, ROOT
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_distill import build_teacher_cache, cli
from hf_distill.commands import ddk

SMALL = ["--validation_size", "4", "--block_size", "32", "--per_device_train_batch_size", "4", "--plot", "false",
         "--disable_tqdm", "true", "--ddk_update_steps", "none"]  # fmt: skip


def _corpus(folder, texts=24):
    """The demo corpus, its first `texts` texts per domain."""
    folder.mkdir()
    for path in sorted((DEMO / "corpus").iterdir()):
        (folder / path.name).write_text("".join(path.read_text().splitlines(keepends=True)[:texts]))
    return folder


def test_no_command_lists_the_commands_and_an_unknown_one_is_one_line(capsys):
    cli.main([])
    listed = capsys.readouterr().out
    assert all(
        f"  {name} " in listed for name in ("ddk", "dsg-kd", "on-policy", "cross-tokenizer", "ablation", "cache-build")
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["dkk"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: unknown command 'dkk': choose one of ddk, dsg-kd, on-policy, cross-tokenizer, ablation, cache-build."
    )


def test_cache_build_writes_the_library_cache_of_ddks_training_blocks_and_ddk_trains_from_it(tmp_path, capsys):
    corpus = _corpus(tmp_path / "corpus")
    cache = tmp_path / "cache"
    flags = ["--dataset_name", str(corpus), "--output_dir", str(tmp_path / "out"), *SMALL]
    cli.main(["cache-build", *flags, "--cache_dir", str(cache), "--k", "5"])
    assert f"written to {cache}" in capsys.readouterr().out
    # the reference: the library function on the blocks `ddk` prepares from the same flags
    script, args = ddk.parse_recipe_args((ddk.ScriptArguments, ddk.DistillationConfig), flags, ddk.DEFAULT_CONFIG)
    script.teacher_model, script.student_model = ddk.packaged(script.teacher_model), ddk.packaged(script.student_model)
    tokenizer = AutoTokenizer.from_pretrained(script.student_model)
    blocks = ddk.load_data(script, args, tokenizer)["train"]
    teacher = AutoModelForCausalLM.from_pretrained(script.teacher_model).eval()
    build_teacher_cache(
        teacher, blocks, str(tmp_path / "reference"), tokenizer, k=5, teacher_name=script.teacher_model
    )
    names = sorted(p.name for p in cache.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "reference").iterdir()) and len(blocks) > 20
    for name in names:
        if name.endswith(".safetensors"):
            built, reference = load_file(cache / name), load_file(tmp_path / "reference" / name)
            assert built.keys() == reference.keys() and all(built[k].equal(reference[k]) for k in built)
    summary = ddk.main([*flags, "--teacher_cache", str(cache), "--max_steps", "2"])
    assert summary and (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_wheel_installed_in_a_fresh_venv_runs_the_demo_from_an_empty_folder(tmp_path):
    """`pip wheel .`, a new venv (its dependencies: this environment's site-packages, offline), `pip install` of the
    wheel, then `hf-distill ddk --max_steps 4` in an empty folder (the demo assets come from the installed package),
    and `accelerate launch -m hf_distill.cli ddk` there."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)  # fmt: skip
    wheel = next((tmp_path / "dist").glob("hf_distill-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (tmp_path / site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # after the venv's own
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**RECIPE_ENV, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": ""}
    where = subprocess.run(["python", "-c", "import hf_distill; print(hf_distill.__file__)"], cwd=empty, env=env,
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert where.startswith(site), where  # the installed wheel, not this checkout
    run = subprocess.run(["hf-distill", "ddk", "--max_steps", "4", "--plot", "false", "--disable_tqdm", "true"],
                         cwd=empty, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = empty / "outputs" / "ddk-demo"
    results = json.loads((out / "results.json").read_text())
    domains = sorted(p.stem for p in (DEMO / "corpus").iterdir())
    assert (out / "model.safetensors").is_file() and sorted(results["perplexity"]["student-after"]) == domains
    launched = subprocess.run(["python", "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines",
                               "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hf_distill.cli", "ddk",
                               "--max_steps", "2", "--plot", "false", "--output_dir", "launched"],
                              cwd=empty, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert launched.returncode == 0 and (empty / "launched" / "model.safetensors").is_file(), launched.stderr[-3000:]
