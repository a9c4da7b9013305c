"""The DDK ablation (arXiv 2407.16154, table 4) on any `recipes/ddk.py` config, kept as a scientist needs it: every
run's full log next to its `results.json`, conditions interleaved per seed (a run cut short leaves paired results),
and the paired differences against a baseline condition, per seed, with their t statistic.

    python recipes/ddk_ablation.py                                        # the embedded demo, seeds 0 1 2
    python recipes/ddk_ablation.py --config recipes/configs/smollm2-ddk.yaml --seeds 0 1 2
    python recipes/ddk_ablation.py --conditions DDK "equal sampling" --condition "DDK-8k: --ddk_eval_tokens 8192"

Built-in conditions (`--conditions` picks among them, in this order; default: the first three):

- `DDK`: hf_distill's defaults (the smoothed update on the log of the perplexity ratio, measured on `ddk_eval_tokens`
  held-out tokens per domain);
- `DDK (paper)`: the paper's update, `g = exp(ppl_S / ppl_T)` (`--ddk_gap perplexity`), on the same measurements;
- `equal sampling`: a static uniform mixture (`--ddk_update_steps none`), the paper's control;
- `w/o FS`: no factor smoothing, `r = softmax(l_S / l_T)` (the paper's other ablation).

`--condition "NAME: FLAGS"` (repeatable) adds a condition of your own: `recipes/ddk.py` flags, after those of every
run. Extra arguments after `--` go to every run (before the condition's flags, so the condition's win).

For each seed, every condition runs once (`recipes/ddk.py --config CONFIG --seed S`, the held-out split fixed by
`split_seed`, so all runs are measured on the same texts) into `OUTPUT_DIR/<condition>-seed<S>/`, which keeps the run's
`results.json`, `run.log` (its stdout and stderr: the `[phase]` lines, every `DDK update` line and the final table) and
`command.json`. A run whose folder already holds a `results.json` of the same command is not run again, so an
interrupted ablation continues where it stopped. For each run the student/teacher perplexity ratio after training is
taken per domain (1.0 = the teacher's perplexity; lower is better); the summary gives, per condition, the mean and
standard deviation over seeds of the worst domain's ratio and of the mean over domains, and, for each other condition,
its difference from `--baseline` seed by seed with the paired t statistic (mean difference over its standard error,
`n - 1` degrees of freedom). `ablation.json` keeps all of it, rewritten after every run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
from typing import Any

from . import DEMO_CONFIG

CONDITIONS = {
    "DDK": [],
    "DDK (paper)": ["--ddk_gap", "perplexity"],
    "equal sampling": ["--ddk_update_steps", "none", "--ddk_initial_weights", "uniform"],
    "w/o FS": ["--ddk_smoothing", "false"],
}
DEFAULT_CONDITIONS = ["DDK", "DDK (paper)", "equal sampling"]
METRICS = ("worst", "mean")


def ratios(results: dict) -> dict[str, float]:
    """Student-after / teacher perplexity per domain, from a run's `results.json`."""
    loss = results["loss"]
    return {d: math.exp(loss["student-after"][d] - loss["teacher"][d]) for d in loss["teacher"]}


def metrics(per_domain: dict[str, float]) -> dict[str, float]:
    """The worst domain's ratio and the mean ratio over domains."""
    return {"worst": max(per_domain.values()), "mean": statistics.mean(per_domain.values())}


def folder_name(condition: str, seed: int) -> str:
    """A run's folder: the condition's name with spaces, slashes and punctuation made file-safe, and the seed."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in condition.replace(" ", "_"))
    return f"{safe}-seed{seed}"


def parse_condition(text: str) -> tuple[str, list[str]]:
    """`"NAME: --flag value ..."` -> `(NAME, [--flag, value, ...])`."""
    name, sep, flags = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"--condition {text!r}: write it as 'NAME: --flag value ...'.")
    return name.strip(), shlex.split(flags)


def run(config: str, output_dir: str, seed: int, flags: list[str], extra: list[str]) -> dict[str, float]:
    """One `recipes/ddk.py` run, its output in `output_dir/run.log`; returns its per-domain ratios."""
    command = ["-m", "hf_distill.cli", "ddk", "--config", config, "--output_dir", output_dir, "--seed", str(seed),
               "--plot", "false", "--disable_tqdm", "true", *extra, *flags]  # fmt: skip
    os.makedirs(output_dir, exist_ok=True)
    results_path, command_path = os.path.join(output_dir, "results.json"), os.path.join(output_dir, "command.json")
    if os.path.exists(results_path) and os.path.exists(command_path):
        with open(command_path) as f:
            if json.load(f) == command:  # done before, with the same command: keep it
                with open(results_path) as g:
                    return ratios(json.load(g))
    if os.path.exists(results_path):
        os.remove(results_path)
    with open(command_path, "w") as f:
        json.dump(command, f, indent=2)
    log_path = os.path.join(output_dir, "run.log")
    with open(log_path, "w") as log:
        log.write("$ " + shlex.join([sys.executable, *command]) + "\n")
        log.flush()
        environment = {**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}  # the log keeps lines, not bars
        done = subprocess.run(
            [sys.executable, *command], stdout=log, stderr=subprocess.STDOUT, text=True, env=environment
        )
    if done.returncode != 0:
        with open(log_path) as log:
            tail = log.read()[-3000:]
        raise SystemExit(f"{shlex.join(command)} failed (exit code {done.returncode}; log: {log_path}):\n{tail}")
    with open(results_path) as f:
        return ratios(json.load(f))


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


def paired(values: dict[int, float], baseline: dict[int, float]) -> dict[str, Any]:
    """Per-seed differences `values - baseline` over the seeds both have, their mean, sd and paired t statistic."""
    seeds = [seed for seed in values if seed in baseline]
    differences = [values[seed] - baseline[seed] for seed in seeds]
    mean, sd = (statistics.mean(differences), _sd(differences)) if differences else (math.nan, math.nan)
    t = mean / (sd / math.sqrt(len(differences))) if len(differences) > 1 and sd > 0 else math.nan
    return {"seeds": seeds, "differences": differences, "mean": mean, "sd": sd, "t": t, "df": len(differences) - 1}


def summarise(runs: dict[str, dict[int, dict[str, float]]], baseline: str | None) -> dict[str, Any]:
    """
    The summary of an ablation from each run's per-domain ratios (`runs[condition][seed]`): per condition and metric,
    the values per seed, mean and sd, and (for the conditions other than `baseline`) the paired differences.
    """
    summary: dict[str, Any] = {}
    for condition, by_seed in runs.items():
        entry: dict[str, Any] = {"runs": {str(seed): ratios for seed, ratios in by_seed.items()}}
        for metric in METRICS:
            values = {seed: metrics(ratios)[metric] for seed, ratios in by_seed.items()}
            entry[metric] = {
                "values": {str(seed): value for seed, value in values.items()},
                "mean": statistics.mean(values.values()) if values else math.nan,
                "sd": _sd(list(values.values())),
            }
            if baseline is not None and condition != baseline and baseline in runs:
                reference = {seed: metrics(ratios)[metric] for seed, ratios in runs[baseline].items()}
                entry[metric]["vs_baseline"] = paired(values, reference)
        summary[condition] = entry
    return summary


def table(summary: dict[str, Any], baseline: str | None) -> str:
    """The summary as text: mean ± sd per condition, then the paired differences against `baseline`."""

    def spread(cell: dict[str, Any]) -> str:
        return f"{cell['mean']:.3f} ± {cell['sd']:.3f}" if not math.isnan(cell["sd"]) else f"{cell['mean']:.3f}"

    width = max([len(c) for c in summary] + [9]) + 2
    lines = [f"{'condition':<{width}}{'runs':>5}{'worst domain':>18}{'mean of domains':>18}"]
    for condition, entry in summary.items():
        runs = len(entry["runs"])
        lines.append(f"{condition:<{width}}{runs:>5}{spread(entry['worst']):>18}{spread(entry['mean']):>18}")
    if baseline is not None and baseline in summary:
        lines += ["", f"paired difference from {baseline!r} (per seed; mean ± sd; t with n - 1 df)"]
        for condition, entry in summary.items():
            if condition == baseline:
                continue
            for metric in METRICS:
                cell = entry[metric].get("vs_baseline")
                if not cell or not cell["differences"]:
                    continue
                per_seed = ", ".join(f"{s}: {d:+.3f}" for s, d in zip(cell["seeds"], cell["differences"], strict=True))
                sd = "" if math.isnan(cell["sd"]) else f" ± {cell['sd']:.3f}"
                t = "" if math.isnan(cell["t"]) else f", t = {cell['t']:+.2f} ({cell['df']} df)"
                lines.append(f"{condition:<{width}}{metric:<6} {cell['mean']:+.3f}{sd}{t}   [seed {per_seed}]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--config", default=DEMO_CONFIG)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--conditions", nargs="*", default=DEFAULT_CONDITIONS, choices=list(CONDITIONS))
    parser.add_argument("--condition", type=parse_condition, action="append", default=[], metavar="'NAME: FLAGS'")
    parser.add_argument("--baseline", default="equal sampling", help="the condition the others are compared with")
    parser.add_argument("--output_dir", default="outputs/ddk-ablation")
    options = parser.parse_args(argv)

    conditions = {name: CONDITIONS[name] for name in options.conditions}
    for name, flags in options.condition:
        if name in conditions:
            parser.error(f"--condition {name!r}: a condition of that name is already in the ablation.")
        conditions[name] = flags
    baseline = options.baseline if options.baseline in conditions else None
    if options.baseline and baseline is None:
        print(f"(no paired differences: the baseline {options.baseline!r} is not among the conditions)")
    runs: dict[str, dict[int, dict[str, float]]] = {name: {} for name in conditions}
    summary: dict[str, Any] = {}
    os.makedirs(options.output_dir, exist_ok=True)
    for seed in options.seeds:  # interleaved: every condition of a seed before the next seed
        for condition, flags in conditions.items():
            folder = os.path.join(options.output_dir, folder_name(condition, seed))
            runs[condition][seed] = run(options.config, folder, seed, flags, extra)
            shown = ", ".join(f"{d} {r:.3f}" for d, r in runs[condition][seed].items())
            print(f"{condition}, seed {seed}: {shown}   ({os.path.join(folder, 'run.log')})", flush=True)
            summary = summarise(runs, baseline)
            with open(os.path.join(options.output_dir, "ablation.json"), "w") as f:
                json.dump(
                    {"config": options.config, "seeds": options.seeds, "extra": extra, "baseline": baseline,
                     "conditions": {name: flags for name, flags in conditions.items()}, "summary": summary},
                    f, indent=2,
                )  # fmt: skip
    print(f"\nstudent/teacher perplexity ratio after training ({options.config}; seeds {options.seeds}; mean ± sd)")
    print(table(summary, baseline))
    return summary


if __name__ == "__main__":
    main()
