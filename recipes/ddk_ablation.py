"""The DDK ablation: a thin script over `hf_distill.commands.ddk_ablation` (also `hf-distill ablation` once
installed); its module docstring and `--help` say the rest.

Imported (`import ddk_ablation` with `recipes/` on the path), this file is that module itself.
"""

import sys

from hf_distill.commands import ddk_ablation as command

if __name__ == "__main__":
    command.main(sys.argv[1:])
else:
    sys.modules[__name__] = command
