"""Cross-tokenizer distillation: a thin script over `hf_distill.commands.cross_tokenizer` (also
`hf-distill cross-tokenizer` once installed); its module docstring and `--help` say the rest.

Imported (`import cross_tokenizer` with `recipes/` on the path), this file is that module itself.
"""

import sys

from hf_distill.commands import cross_tokenizer as command

if __name__ == "__main__":
    command.main(sys.argv[1:])
else:
    sys.modules[__name__] = command
