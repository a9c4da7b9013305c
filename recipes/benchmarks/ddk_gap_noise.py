"""How noisy is DDK's per-domain gap at a given evaluation size? The measurement behind `ddk_eval_tokens`' default.

    python recipes/benchmarks/ddk_gap_noise.py --config recipes/configs/smollm2-ddk.yaml
    python recipes/benchmarks/ddk_gap_noise.py --config recipes/configs/smollm2-ddk.yaml --student_model outputs/x

Loads the recipe's data and models as `recipes/ddk.py` does (`--config` and any recipe flag), measures the teacher and
the student on every held-out DDK block of each domain, then, for each token budget, draws `--repeats` random samples
of that many tokens' worth of blocks and prints per domain: the standard error of the log perplexity ratio
`ce_S - ce_T` that DDK logs (`ddk/ratio_se` of `ddk_gap="log_perplexity"`, the mean over samples), the spread it
estimates (the standard deviation of the log ratio across the samples: of a finite set of held-out blocks, so it
shrinks toward 0 as the budget approaches all of them), and what that noise does to the update: the
factor `exp(se)` by which it can move a domain's weight under the log-perplexity gap, and `exp(ratio * se)` under the
paper's `g = exp(ppl_S / ppl_T)`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import ddk  # noqa: E402  (recipes/ddk.py)

from hf_distill.ddk import mean_standard_error  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--repeats", type=int, default=500)
    options, recipe_argv = parser.parse_known_args()
    try:
        trainer, _, data = ddk.build(recipe_argv)  # the config must turn DDK on (its held-out blocks are measured)
    except ddk.RecipeError as error:
        raise SystemExit(f"error: {error}") from None
    evaluator, held_out = trainer.domain_evaluator, data["ddk_validation"]
    names = list(held_out)
    batches = evaluator.collate(held_out)  # every block
    teacher = evaluator.block_losses(trainer.teacher, batches, names)
    student = evaluator.block_losses(trainer.model, batches, names)
    rng = np.random.default_rng(0)
    print(f"teacher / student: {trainer.teacher.name_or_path} / {trainer.student.name_or_path}")
    header = f"{'domain':<14}{'tokens':>7}{'blocks':>7}{'log ratio':>10}{'se':>8}{'sd':>8}{'exp(se)':>9}"
    print(header + f"{'ratio':>9}{'exp(ratio*se)':>15}")
    for name, s, t in zip(names, student, teacher, strict=True):
        sums_s, sums_t, counts = np.array(s.sums), np.array(t.sums), np.array(s.counts)
        per_block = counts.mean()
        for tokens in options.tokens:
            blocks = min(len(counts), max(2, math.ceil(tokens / per_block)))
            errors, values = [], []
            for _ in range(options.repeats):
                pick = rng.choice(len(counts), blocks, replace=False)
                n = counts[pick].sum()
                values.append((sums_s[pick].sum() - sums_t[pick].sum()) / n)
                errors.append(mean_standard_error(sums_s[pick] - sums_t[pick], counts[pick]))
            full = (sums_s.sum() - sums_t.sum()) / counts.sum()
            se, ratio = float(np.mean(errors)), math.exp(full)
            print(f"{name:<14}{int(blocks * per_block):>7}{blocks:>7}{full:>10.3f}{se:>8.3f}{np.std(values):>8.3f}"
                  f"{math.exp(se):>9.2f}{ratio:>9.2f}{math.exp(min(ratio * se, 700)):>15.3g}")  # fmt: skip
        if blocks == len(counts):
            print(f"{'':<14}(all {len(counts)} held-out blocks; hold out more texts for larger budgets)")


if __name__ == "__main__":
    main()
