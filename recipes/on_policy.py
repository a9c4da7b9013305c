"""On-policy distillation: a thin script over `hf_distill.commands.on_policy` (also `hf-distill on-policy` once
installed); its module docstring and `--help` say the rest.

Imported (`import on_policy` with `recipes/` on the path), this file is that module itself.
"""

import sys

from hf_distill.commands import on_policy as command

if __name__ == "__main__":
    command.main(sys.argv[1:])
else:
    sys.modules[__name__] = command
