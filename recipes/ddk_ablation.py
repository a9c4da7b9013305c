"""The DDK ablation of the paper (arXiv 2407.16154, table 4), on any `recipes/ddk.py` config: DDK vs "w/o FS" (no
factor smoothing: `r = softmax(l_S / l_T)`) vs "equal sampling" (a static uniform mixture), the same steps and data,
over several data seeds.

    python recipes/ddk_ablation.py                                        # the embedded demo, seeds 0 1 2 (~5 min)
    python recipes/ddk_ablation.py --config recipes/configs/smollm2-ddk.yaml --seeds 0 1 2

Each run is `recipes/ddk.py --config CONFIG --seed S` (the held-out split is fixed by `split_seed`, so every run is
measured on the same texts) with the condition's flags; extra arguments after `--` go to every run (the condition's
flags come last, so they win). For each run the
student/teacher perplexity ratio after training is taken per domain; the table gives, per condition, the mean and
standard deviation over seeds of the worst domain's ratio and of the mean ratio (lower is better), and
`ablation.json` keeps every run's numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CONDITIONS = {
    "DDK": [],
    "w/o FS": ["--ddk_smoothing", "false"],
    "equal sampling": ["--ddk_update_steps", "none", "--ddk_initial_weights", "uniform"],
}


def ratios(results: dict) -> dict[str, float]:
    """Student-after / teacher perplexity per domain, from a run's `results.json`."""
    loss = results["loss"]
    return {d: math.exp(loss["student-after"][d] - loss["teacher"][d]) for d in loss["teacher"]}


def run(config: str, output_dir: str, seed: int, flags: list[str], extra: list[str]) -> dict[str, float]:
    command = [sys.executable, os.path.join(HERE, "ddk.py"), "--config", config, "--output_dir", output_dir,
               "--seed", str(seed), "--plot", "false", "--disable_tqdm", "true", *extra, *flags]  # fmt: skip
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    with open(os.path.join(output_dir, "results.json")) as f:
        return ratios(json.load(f))


def _spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=os.path.join(HERE, "configs", "demo.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--output_dir", default="outputs/ddk-ablation")
    options = parser.parse_args(argv)

    runs: dict[str, list[dict[str, float]]] = {}
    for condition in options.conditions:
        for seed in options.seeds:
            folder = os.path.join(options.output_dir, f"{condition.replace(' ', '_').replace('/', '')}-seed{seed}")
            runs.setdefault(condition, []).append(run(options.config, folder, seed, CONDITIONS[condition], extra))
            print(f"{condition}, seed {seed}: " + ", ".join(f"{d} {r:.3f}" for d, r in runs[condition][-1].items()),
                  flush=True)  # fmt: skip
    print(f"\nstudent/teacher perplexity ratio after training ({options.config}; seeds {options.seeds}; mean ± sd)")
    print(f"{'condition':<16}{'worst domain':>18}{'mean of domains':>18}")
    summary = {}
    for condition, rows in runs.items():
        worst, mean = [max(r.values()) for r in rows], [statistics.mean(r.values()) for r in rows]
        summary[condition] = {"worst": worst, "mean": mean, "runs": rows}
        print(f"{condition:<16}{_spread(worst):>18}{_spread(mean):>18}")
    os.makedirs(options.output_dir, exist_ok=True)
    with open(os.path.join(options.output_dir, "ablation.json"), "w") as f:
        json.dump(
            {"config": options.config, "seeds": options.seeds, "extra": extra, "conditions": summary}, f, indent=2
        )
    return summary


if __name__ == "__main__":
    main()
