#!/usr/bin/env python3
"""Set up and run hf_distill from a fresh clone, with nothing but Python:

    python3 run.py demo [ARGS...]   # the main job: DDK on the embedded demo (accelerate launch recipes/ddk.py ARGS)
    python3 run.py test [ARGS...]   # the test suite (python -m pytest -q ARGS)
    python3 run.py lint             # ruff check + ruff format --check (what CI runs before the tests)

Each verb first makes sure `.venv/` exists and holds the pinned CPU build of torch and this package with its test, dev,
deepspeed and bench (TRL) extras; that is done once and redone only when setup.cfg, pyproject.toml or the torch pin
change (a stamp in `.venv/` records what was installed), so a second call starts at once. Users who manage their own
environment install with `pip install torch==2.13.0 && pip install -e ".[test,deepspeed,bench]"` and run the commands
directly.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
TORCH = "torch==2.13.0"  # the CPU build; an unpinned torch can pull a multi-GB CUDA build
EXTRAS = ".[test,dev,deepspeed,bench]"  # deepspeed: the ZeRO-2/3 runs of the suite; bench: TRL, the reference tests
STAMP = VENV / ".hf_distill-setup"
VERBS = {
    "demo": ["-m", "accelerate.commands.launch", "recipes/ddk.py"],
    "test": ["-m", "pytest", "-q"],
    "lint": None,
}


def _python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _wanted() -> str:
    """What the environment must hold: the packaging files, the torch pin, the extras and this Python."""
    digest = hashlib.sha256(f"{TORCH} {EXTRAS} {sys.version_info[:2]}".encode())
    for name in ("setup.cfg", "pyproject.toml"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def _run(command: list[str | Path]) -> None:
    result = subprocess.run([str(part) for part in command], cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"run.py: `{' '.join(str(p) for p in command)}` failed (exit code {result.returncode}).")


def set_up() -> None:
    """Create `.venv` and install torch and the package, unless the stamp says it is done."""
    if sys.version_info < (3, 10):  # noqa: UP036 - run.py may be started by an older python3
        sys.exit(f"run.py: hf_distill needs Python >= 3.10, this is {sys.version.split()[0]}.")
    wanted = _wanted()
    if _python().exists() and STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    if not _python().exists():
        print(f"run.py: creating {VENV.relative_to(ROOT)}/ ...", flush=True)
        try:
            import venv  # noqa: F401
        except ImportError:
            sys.exit("run.py: this Python has no venv module (Debian/Ubuntu: apt install python3-venv).")
        _run([sys.executable, "-m", "venv", VENV])
    print(f"run.py: installing {TORCH} (CPU) and hf_distill{EXTRAS[1:]} into .venv/ (once) ...", flush=True)
    _run([_python(), "-m", "pip", "install", "--quiet", TORCH])
    _run([_python(), "-m", "pip", "install", "--quiet", "-e", EXTRAS])
    STAMP.write_text(wanted + "\n")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in VERBS:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    verb, rest = argv[0], argv[1:]
    set_up()
    if verb == "lint":
        for check in (["check", "."], ["format", "--check", "."]):
            _run([_python(), "-m", "ruff", *check])
        return 0
    env = {**os.environ, "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "false")}
    return subprocess.run([str(_python()), *VERBS[verb], *rest], cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
