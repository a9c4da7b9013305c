"""The `hf-distill` commands (`ddk`, `dsg-kd`, `on-policy`, `cross-tokenizer`, `ablation`, `cache-build`): the
recipes as importable modules, each with a `main(argv)`. `recipes/*.py` are thin scripts over them;
`hf_distill.cli` dispatches."""

from __future__ import annotations

import os

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(PACKAGE_PARENT, "hf_distill", "demo")  # the embedded demo: corpus, teacher, student, config
DEMO_CONFIG = os.path.join(DEMO, "demo.yaml")


def packaged(path: str | None) -> str | None:
    """A relative path that does not exist from the working directory but does next to the installed package (the
    demo's `hf_distill/demo/...`) is taken from there, so the embedded demo runs from any directory."""
    if path and not os.path.isabs(path) and not os.path.exists(path):
        candidate = os.path.join(PACKAGE_PARENT, path)
        if os.path.exists(candidate):
            return candidate
    return path
