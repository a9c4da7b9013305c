"""`hf-distill`: the command-line entry point (`hf-distill COMMAND [ARGS]`, `python -m hf_distill.cli COMMAND`,
`accelerate launch -m hf_distill.cli COMMAND`).

Commands: `ddk` (the main job; the embedded demo by default), `dsg-kd`, `on-policy`, `cross-tokenizer`, `ablation`
(the DDK ablation), `cache-build` (the teacher's outputs on the training blocks, once). `hf-distill COMMAND --help`
lists its flags.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "ddk": ("ddk", "DDK distillation: the main job (the embedded demo without --config)"),
    "dsg-kd": ("dsg_kd", "DSG-KD: a general student from a domain-specific teacher on another tokenizer"),
    "on-policy": ("on_policy", "on-policy distillation (GKD) on the student's own completions"),
    "cross-tokenizer": ("cross_tokenizer", "a student on another tokenizer: span-aligned KD, DDK in bits per byte"),
    "ablation": ("ddk_ablation", "the DDK ablation: conditions x seeds, paired differences"),
    "cache-build": ("cache_build", "the teacher's top-k outputs on the training blocks, written once"),
}


def usage() -> str:
    lines = ["usage: hf-distill COMMAND [ARGS]   (hf-distill COMMAND --help for its flags)", "", "commands:"]
    lines += [f"  {name:<16} {about}" for name, (_, about) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run `argv[0]`'s command with the other arguments; no command or `--help` prints the commands, an unknown one
    exits with code 2 and one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    name, *rest = argv
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}: choose one of {', '.join(COMMANDS)}.", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(f"hf_distill.commands.{COMMANDS[name][0]}")
    sys.argv = [f"hf-distill {name}", *rest]  # argparse's usage line names the command
    module.main(rest)


if __name__ == "__main__":
    main()
