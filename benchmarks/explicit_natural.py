"""Explicit block against the plain path on every registered model at its natural input size: the merged table.

    python benchmarks/explicit_natural.py [--prefix explicit_natural] [--output explicit_natural]

Reads the per-invocation results ``benchmarks/results/<prefix>_<model>_s<seed>.json`` that
``benchmarks/explicit_small.py --model NAME --input-size S --batch B --seed N`` wrote (one invocation per model and
seed, each short enough for the shared benchmark lock), pools every configuration's step times over a model's
invocations (same model, size and batch required), and writes ``benchmarks/results/<output>.json`` with, per model
and precision, the ratio of medians ``median(plain) ÷ median(explicit)`` (> 1: the explicit path is faster), the
median of the rounds' own ratios (a round times every configuration once), each invocation's ratio of medians and
its load averages. No timing happens here.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from typing import Any

from harness import RESULTS, print_table, write_json

PRECISIONS = ("fp32", "bf16")


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One model's invocations pooled: the ratio of the pooled medians and each invocation's ratio."""
    shapes = {(run["input_size"], run["batch"]) for run in runs}
    if len(shapes) != 1:
        raise ValueError(f"{runs[0]['model']}: invocations at different sizes or batches {sorted(shapes)}")
    pooled: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for label, seconds in run["seconds"].items():
            pooled[label].extend(seconds["all"])
    medians = {label: statistics.median(times) for label, times in pooled.items()}
    ratios = {p: medians[f"plain {p}"] / medians[f"explicit {p}"] for p in PRECISIONS}
    # each round ran every configuration once, close in time: the round's own ratio cancels a load that changed
    # between invocations, which the ratio of pooled medians does not
    paired = {p: statistics.median(plain / explicit for plain, explicit in
                                   zip(pooled[f"plain {p}"], pooled[f"explicit {p}"], strict=True))
              for p in PRECISIONS}
    per_run = [{"seed": run.get("seed"), "rounds": run["rounds"],
                "ratios": {p: run["seconds"][f"plain {p}"]["median"] / run["seconds"][f"explicit {p}"]["median"]
                           for p in PRECISIONS},
                "load_average_before": run.get("load_average_before"),
                "load_average_after": run.get("load_average_after")} for run in runs]
    input_size, batch = shapes.pop()
    return {"input_size": input_size, "batch": batch, "rounds": len(pooled["plain fp32"]),
            "median_seconds": medians, "explicit_over_plain": ratios, "median_round_ratio": paired,
            "invocations": per_run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default="explicit_natural")
    parser.add_argument("--output", default="explicit_natural")
    args = parser.parse_args()
    pattern = re.compile(rf"{re.escape(args.prefix)}_(.+)_s\d+\.json")
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in sorted(RESULTS.glob(f"{args.prefix}_*_s*.json")):
        if pattern.fullmatch(path.name):
            run = json.loads(path.read_text())
            by_model[run["model"]].append(run)
    if not by_model:
        raise SystemExit(f"no {args.prefix}_*_s*.json in {RESULTS}")
    merged = {model: merge(runs) for model, runs in sorted(by_model.items())}
    rows = [[model, f"{m['input_size']}²", m["batch"], m["rounds"],
             *(f"{m['explicit_over_plain'][p]:.2f} / {m['median_round_ratio'][p]:.2f} ("
               + ", ".join(f"{run['ratios'][p]:.2f}" for run in m["invocations"]) + ")" for p in PRECISIONS)]
            for model, m in merged.items()]
    print_table(["model", "size", "batch", "rounds", *(f"{p} pooled / rounds' median (per invocation)"
                                                       for p in PRECISIONS)], rows)
    print(f"wrote {write_json(args.output, {'benchmark': 'explicit_natural', 'models': merged})}")


if __name__ == "__main__":
    main()
