"""DSG-KD distillation: a thin script over `hf_distill.commands.dsg_kd` (also `hf-distill dsg-kd` once
installed); its module docstring and `--help` say the rest.

Imported (`import dsg_kd` with `recipes/` on the path), this file is that module itself.
"""

import sys

from hf_distill.commands import dsg_kd as command

if __name__ == "__main__":
    command.main(sys.argv[1:])
else:
    sys.modules[__name__] = command
