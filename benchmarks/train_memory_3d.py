"""3-D training memory and speed: our DenseNet-121 against MONAI's, and the largest cube each trains within 8 GiB.

    python benchmarks/train_memory_3d.py [--sizes 96 128] [--batch 2] [--rounds 5] [--budget-gib 8]

DenseNet-121 with ``spatial_dims=3``, 1 input channel, 2 classes, batch 2, in three configurations: ours with the
explicit memory-linear block (``ours``), ours through the plain autograd path (``ours-reference``) and MONAI's
``DenseNet121`` (``monai``).

1. **Peak memory**: for each cube side and configuration, one fresh process runs one training step (forward,
   cross-entropy, backward, SGD step); the result is peak RSS above the process baseline
   (``harness.measure_peak_memory``, glibc's default allocator), one process at a time.
2. **Step time**: the configurations in one process, holding the same weights (MONAI's state dict loaded into ours
   with ``load_weights``), one step each per round in a seeded random order after an idle pause
   (``time_interleaved``); the median over the rounds after a warm-up round.
3. **Largest cube within the budget**: each configuration's peak is ``a + b·side³`` (every saved activation is
   proportional to the voxels), fitted through the sizes of step 1; the side where it reaches the budget is the
   prediction. Then measured: the prediction rounded down to a multiple of 8, moved by 8 until one side fits and
   the next does not (at most ``--probes`` processes per configuration; the watchdog stops a process past
   ``--limit-gib`` of resident memory). ``ours-reference`` is left out of this step.

Writes ``benchmarks/results/train_memory_3d.json`` and prints the tables.
"""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any

import torch

from densenet.deploy.bench import time_interleaved, train_step
from densenet.weights import load_weights
from harness import build_model, machine, measure_peak_memory, print_table, write_json

MIB, GIB = 2**20, 2**30
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "ours": {"impl": "ours", "memory_efficient": True},
    "ours-reference": {"impl": "ours", "memory_efficient": False},
    "monai": {"impl": "monai"},
}
MODEL = {"name": "densenet121", "spatial_dims": 3, "in_chans": 1, "num_classes": 2}
ALLOCATOR = "glibc-default"
STEP = 8  # cube sides probed in multiples of 8


def spec_for(label: str, side: int, args: argparse.Namespace) -> dict[str, Any]:
    return {**CONFIGURATIONS[label], **MODEL, "batch": args.batch, "input_size": side, "threads": args.threads}


def peak(label: str, side: int, args: argparse.Namespace) -> dict[str, Any]:
    """One training step of ``label`` at ``side``³ in a fresh process; its result, printed as it comes."""
    result = measure_peak_memory(spec_for(label, side, args), ALLOCATOR, limit_bytes=int(args.limit_gib * GIB),
                                 timeout=args.timeout)
    shown = ("stopped past the limit" if result.get("exceeded_limit") else "timed out" if result.get("timed_out")
             else f"{result['peak_above_baseline_bytes'] / MIB:,.0f} MiB, {result['step_seconds']:.1f} s")
    print(f"peak {label:15s} {side:4d}³: {shown}", flush=True)
    return result


def fits(result: dict[str, Any], budget: float) -> bool:
    return not result.get("exceeded_limit") and not result.get("timed_out") and \
        result["peak_above_baseline_bytes"] <= budget


def predicted_side(by_side: dict[int, dict[str, Any]], budget: float) -> dict[str, float]:
    """Fit ``peak = a + b·side³`` through the smallest and largest measured sides; the side at ``budget``."""
    small, large = min(by_side), max(by_side)
    p_small, p_large = (by_side[s]["peak_above_baseline_bytes"] for s in (small, large))
    slope = (p_large - p_small) / (large**3 - small**3)  # bytes per voxel of the batch's input cube
    intercept = p_small - slope * small**3
    return {"bytes_per_voxel": slope, "intercept_bytes": intercept,
            "side": ((budget - intercept) / slope) ** (1 / 3)}


def largest_cube(label: str, prediction: float, args: argparse.Namespace) -> dict[str, Any]:
    """Probe sides in steps of 8 from the prediction until one fits the budget and the next does not."""
    budget = args.budget_gib * GIB
    side, probes = max(STEP, math.floor(prediction / STEP) * STEP), {}
    while len(probes) < args.probes:
        probes[side] = peak(label, side, args)
        ok = fits(probes[side], budget)
        side = side + STEP if ok else side - STEP
        if side in probes:
            break
    fitting = [s for s, result in probes.items() if fits(result, budget)]
    failing = [s for s, result in probes.items() if not fits(result, budget)]
    largest = max(fitting, default=None)
    verified = largest is not None and largest + STEP in failing
    return {"probes": {str(s): r for s, r in probes.items()}, "largest_fitting_side": largest,
            "bracketed": verified}


def step_times(sizes: list[int], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Median step seconds per configuration and side, interleaved in this process with the same weights."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {label: build_model(spec_for(label, sizes[0], args)) for label in CONFIGURATIONS}
    for label, model in models.items():
        if label != "monai":
            load_weights(model, models["monai"].state_dict(), name="MONAI's DenseNet121")
    optimizers = {label: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for label, m in models.items()}
    results: dict[str, dict[str, Any]] = {}
    for side in sizes:
        x = torch.randn(args.batch, MODEL["in_chans"], side, side, side)
        target = torch.randint(0, MODEL["num_classes"], (args.batch,))
        steps = {label: (train_step(model, optimizers[label], x, target), 0) for label, model in models.items()}
        times = time_interleaved(steps, rounds=args.rounds, warmup=1).seconds
        results[str(side)] = {label: {"median_step_seconds": statistics.median(t), "step_seconds": t}
                              for label, t in times.items()}
        print(f"speed {side}³: " + ", ".join(f"{label} {statistics.median(t):.2f} s" for label, t in times.items()),
              flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget-gib", type=float, default=8.0)
    parser.add_argument("--limit-gib", type=float, default=9.0, help="stop a worker past this resident memory")
    parser.add_argument("--probes", type=int, default=3, help="at most this many processes per largest-cube search")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one worker may take")
    parser.add_argument("--skip-largest", action="store_true")
    args = parser.parse_args()
    sizes = sorted(args.sizes)

    memory = {label: {side: peak(label, side, args) for side in sizes} for label in CONFIGURATIONS}
    speed = step_times(sizes, args)
    rows = []
    for side in sizes:
        base = memory["monai"][side]["peak_above_baseline_bytes"]
        base_time = speed[str(side)]["monai"]["median_step_seconds"]
        for label in CONFIGURATIONS:
            used, seconds = memory[label][side]["peak_above_baseline_bytes"], speed[str(side)][label]
            rows.append([f"{side}³", label, f"{used / MIB:,.0f}", f"{used / base:.2f}",
                         f"{seconds['median_step_seconds']:.2f}", f"{seconds['median_step_seconds'] / base_time:.2f}"])
    print()
    print_table(["cube", "configuration", "peak MiB", "÷ MONAI", "median step s", "÷ MONAI"], rows)

    largest: dict[str, Any] = {}
    if len(sizes) >= 2 and not args.skip_largest:
        for label in ("ours", "monai"):
            prediction = predicted_side(memory[label], args.budget_gib * GIB)
            print(f"{label}: {prediction['bytes_per_voxel']:.0f} B per input voxel, predicted largest cube "
                  f"{prediction['side']:.0f}³ within {args.budget_gib:g} GiB", flush=True)
            largest[label] = {"prediction": prediction, **largest_cube(label, prediction["side"], args)}
        ours, theirs = largest["ours"]["largest_fitting_side"], largest["monai"]["largest_fitting_side"]
        if ours and theirs:
            print(f"largest cube at batch {args.batch} within {args.budget_gib:g} GiB: ours {ours}³, MONAI {theirs}³ "
                  f"({ours / theirs:.2f}× the side)")

    import monai

    path = write_json("train_memory_3d", {
        "benchmark": "train_memory_3d", "machine": machine(), "monai": monai.__version__, "model": MODEL,
        "batch": args.batch, "threads": args.threads, "allocator": ALLOCATOR, "rounds": args.rounds,
        "budget_bytes": args.budget_gib * GIB,
        "memory": {label: {str(side): result for side, result in by_side.items()} for label, by_side in memory.items()},
        "speed": speed, "largest_cube": largest,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
