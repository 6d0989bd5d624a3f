"""3-D training memory and speed: our DenseNet-121 against MONAI's, and the largest cube each trains within 8 GiB.

    python benchmarks/train_memory_3d.py [--phases memory speed largest] [--sizes 96 128] [--batch 2] [--rounds 5]
        [--budget-gib 8] [--allocator densenet-train | glibc-default | glibc-mmap-128k] [--repeats 1]
        [--output train_memory_3d]

DenseNet-121 with ``spatial_dims=3``, 1 input channel, 2 classes, batch 2, in three configurations: ours with the
explicit memory-linear block (``ours``), ours through the plain autograd path (``ours-reference``) and MONAI's
``DenseNet121`` (``monai``).

1. **Peak memory**: for each cube side and configuration, one fresh process runs one training step (forward,
   cross-entropy, backward, SGD step); the result is peak RSS above the process baseline
   (``harness.measure_peak_memory``, under ``--allocator``: glibc's default; ``densenet-train``, what ``densenet
   train`` sets on CPU, ``keep_freed_memory``; or a fixed 128 KiB mmap threshold that makes peak RSS track live
   tensors — the same setting for every configuration), one process at a time; with ``--repeats`` the median of
   that many processes.
2. **Step time**: the configurations in one process, holding the same weights (MONAI's state dict loaded into ours
   with ``load_weights``), one step each per round in a seeded random order after an idle pause
   (``time_interleaved``); the median over the rounds after a warm-up round.
3. **Largest cube within the budget**: each configuration's peak is ``a + b·side³`` (every saved activation is
   proportional to the voxels), fitted through the sizes of step 1; the side where it reaches the budget is the
   prediction. Then measured: the prediction rounded down to a multiple of 8, moved by 8 until one side fits and
   the next does not (at most ``--probes`` processes per configuration; the watchdog stops a process past
   ``--limit-gib`` of resident memory). ``ours-reference`` is left out of this step.

Each phase (``--phases``; they may run as separate commands) updates its entries of
``benchmarks/results/<--output>.json``; the tables are printed from that file.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from densenet.deploy.bench import time_interleaved, train_step
from densenet.weights import load_weights
from harness import ALLOCATORS, RESULTS, build_model, machine, measure_peak_memory, print_table, write_json

MIB, GIB = 2**20, 2**30
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "ours": {"impl": "ours", "memory_efficient": True},
    "ours-reference": {"impl": "ours", "memory_efficient": False},
    "monai": {"impl": "monai"},
}
MODEL = {"name": "densenet121", "spatial_dims": 3, "in_chans": 1, "num_classes": 2}
STEP = 8  # cube sides probed in multiples of 8
PHASES = ("memory", "speed", "largest")


def spec_for(label: str, side: int, args: argparse.Namespace) -> dict[str, Any]:
    return {**CONFIGURATIONS[label], **MODEL, "batch": args.batch, "input_size": side, "threads": args.threads}


def median_peak(label: str, side: int, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`peak` ``--repeats`` times, each in a fresh process: the run with the median peak, and every run's peak
    (under glibc's default allocator a 2-thread step's peak moves by tens of MiB from run to run: which arena a
    thread's allocation lands in depends on timing)."""
    runs = [peak(label, side, args) for _ in range(args.repeats)]
    if any(run.get("exceeded_limit") or run.get("timed_out") for run in runs):
        return next(run for run in runs if run.get("exceeded_limit") or run.get("timed_out"))
    runs.sort(key=lambda run: run["peak_above_baseline_bytes"])
    return {**runs[len(runs) // 2], "repeat_peaks_bytes": [run["peak_above_baseline_bytes"] for run in runs]}


def peak(label: str, side: int, args: argparse.Namespace) -> dict[str, Any]:
    """One training step of ``label`` at ``side``³ in a fresh process; its result, printed as it comes."""
    result = measure_peak_memory(spec_for(label, side, args), args.allocator, limit_bytes=int(args.limit_gib * GIB),
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


def largest_cube(label: str, prediction: float, args: argparse.Namespace,
                 known: dict[int, dict[str, Any]] | None = None,
                 record: Callable[[dict[int, dict[str, Any]]], None] | None = None) -> dict[str, Any]:
    """Probe sides in steps of 8 from the prediction (or ``--start-side``) until one fits the budget and the next
    does not, at most ``--probes`` new processes; ``known`` probes (an earlier run's) are reused, not repeated.
    ``record`` gets the probes after each new one (a probe near the budget takes many minutes: an interrupted
    search keeps what it measured)."""
    budget = args.budget_gib * GIB
    probes = dict(known or {})
    side, new = max(STEP, math.floor((args.start_side or prediction) / STEP) * STEP), 0
    while new < args.probes:
        if side not in probes:
            probes[side], new = peak(label, side, args), new + 1
            if record:
                record(probes)
        ok = fits(probes[side], budget)
        following = side + STEP if ok else side - STEP
        if following in probes and fits(probes[following], budget) != ok:
            break
        side = following
    fitting = [s for s, result in probes.items() if fits(result, budget)]
    failing = [s for s, result in probes.items() if not fits(result, budget)]
    largest = max(fitting, default=None)
    return {"probes": {str(s): r for s, r in sorted(probes.items())}, "largest_fitting_side": largest,
            "bracketed": largest is not None and largest + STEP in failing}


def cpu_timed(step: Callable[[], Any], log: list[float]) -> Callable[[], Any]:
    """``step`` that also appends the process's CPU seconds it took to ``log`` (all threads: on a machine others
    load, CPU time moves less than wall time; at one thread it is the work done)."""
    def timed() -> Any:
        start = time.process_time()
        result = step()
        log.append(time.process_time() - start)
        return result
    return timed


def step_times(sizes: list[int], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Median step seconds per configuration and side, interleaved in this process with the same weights."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {label: build_model(spec_for(label, sizes[0], args)) for label in args.configurations}
    if "monai" in models:  # the same weights everywhere: MONAI's state dict, read by load_weights
        for label, model in models.items():
            if label != "monai":
                load_weights(model, models["monai"].state_dict(), name="MONAI's DenseNet121")
    optimizers = {label: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for label, m in models.items()}
    results: dict[str, dict[str, Any]] = {}
    for side in sizes:
        x = torch.randn(args.batch, MODEL["in_chans"], side, side, side)
        target = torch.randint(0, MODEL["num_classes"], (args.batch,))
        cpu: dict[str, list[float]] = {label: [] for label in models}
        steps = {label: (cpu_timed(train_step(model, optimizers[label], x, target), cpu[label]), 0)
                 for label, model in models.items()}
        times = time_interleaved(steps, rounds=args.rounds, warmup=1).seconds
        results[str(side)] = {label: {"median_step_seconds": statistics.median(t), "step_seconds": t,
                                      "median_cpu_seconds": statistics.median(cpu[label][1:]),
                                      "cpu_seconds": cpu[label][1:]}
                              for label, t in times.items()}
        print(f"speed {side}³: " + ", ".join(f"{label} {statistics.median(t):.2f} s (CPU "
                                            f"{results[str(side)][label]['median_cpu_seconds']:.2f} s)"
                                            for label, t in times.items()), flush=True)
    return results


def update_results(name: str, **entries: Any) -> None:
    """Set ``entries`` in ``benchmarks/results/<name>.json``, keeping what other phases wrote there (read just
    before writing, so phases run as separate commands fill one file)."""
    import monai

    path = RESULTS / f"{name}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update({"benchmark": "train_memory_3d", "machine": machine(), "monai": monai.__version__, "model": MODEL},
                **entries)
    write_json(name, data)


def print_tables(name: str) -> None:
    """Memory and speed, ratios to MONAI, from the results file."""
    data = json.loads((RESULTS / f"{name}.json").read_text())
    memory, speed = data.get("memory", {}), data.get("speed", {})
    rows = []
    for side in sorted({side for by_side in memory.values() for side in by_side} | set(speed), key=int):
        base = memory.get("monai", {}).get(side, {}).get("peak_above_baseline_bytes")
        base_time = speed.get(side, {}).get("monai", {}).get("median_step_seconds")
        for label in CONFIGURATIONS:
            used = memory.get(label, {}).get(side, {}).get("peak_above_baseline_bytes")
            seconds = speed.get(side, {}).get(label, {}).get("median_step_seconds")
            cpu = speed.get(side, {}).get(label, {}).get("median_cpu_seconds")
            base_cpu = speed.get(side, {}).get("monai", {}).get("median_cpu_seconds")
            if used is None and seconds is None:
                continue
            rows.append([f"{side}³", label, "-" if used is None else f"{used / MIB:,.0f}",
                         "-" if used is None or not base else f"{used / base:.2f}",
                         "-" if seconds is None else f"{seconds:.2f}",
                         "-" if seconds is None or not base_time else f"{seconds / base_time:.2f}",
                         "-" if cpu is None else f"{cpu:.2f}",
                         "-" if cpu is None or not base_cpu else f"{cpu / base_cpu:.2f}"])
    print()
    print_table(["cube", "configuration", "peak MiB", "÷ MONAI", "median step s", "÷ MONAI", "median CPU s",
                 "÷ MONAI"], rows)
    for label, found in data.get("largest_cube", {}).items():
        print(f"{label}: predicted {found['prediction']['side']:.0f}³, largest measured to fit "
              f"{found['largest_fitting_side']}³ (bracketed by a failing side: {found['bracketed']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--configurations", nargs="+", choices=list(CONFIGURATIONS), default=list(CONFIGURATIONS),
                        help="for the memory and speed phases")
    parser.add_argument("--largest-of", nargs="+", choices=("ours", "monai"), default=["ours", "monai"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1, help="memory phase: processes per configuration (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget-gib", type=float, default=8.0)
    parser.add_argument("--limit-gib", type=float, default=9.0, help="stop a worker past this resident memory")
    parser.add_argument("--probes", type=int, default=3, help="at most this many processes per largest-cube search")
    parser.add_argument("--start-side", type=int, help="first side the largest-cube search probes")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one worker may take")
    parser.add_argument("--allocator", choices=sorted(ALLOCATORS), default="densenet-train",
                        help="malloc settings of every worker (default: what `densenet train` sets, keep_freed_memory)")
    parser.add_argument("--output", default="train_memory_3d", help="results file name (benchmarks/results/NAME.json)")
    args = parser.parse_args()
    sizes = sorted(args.sizes)
    settings = {"batch": args.batch, "threads": args.threads, "allocator": args.allocator, "repeats": args.repeats,
                "budget_bytes": args.budget_gib * GIB}

    if "memory" in args.phases:
        memory = {label: {str(side): median_peak(label, side, args) for side in sizes}
                  for label in args.configurations}
        update_results(args.output, settings=settings, memory=memory)
    if "speed" in args.phases:
        update_results(args.output, speed=step_times(sizes, args), speed_rounds=args.rounds)
    if "largest" in args.phases:
        memory = json.loads((RESULTS / f"{args.output}.json").read_text())["memory"]
        for label in args.largest_of:
            prediction = predicted_side({int(side): r for side, r in memory[label].items()}, args.budget_gib * GIB)
            print(f"{label}: {prediction['bytes_per_voxel']:.0f} B per input voxel, predicted largest cube "
                  f"{prediction['side']:.0f}³ within {args.budget_gib:g} GiB", flush=True)
            data = json.loads((RESULTS / f"{args.output}.json").read_text())
            known = data.get("largest_cube", {}).get(label, {}).get("probes", {})

            def record(probes: dict[int, dict[str, Any]], label: str = label, prediction: dict = prediction) -> None:
                done = json.loads((RESULTS / f"{args.output}.json").read_text()).get("largest_cube", {})
                update_results(args.output, largest_cube={**done, label: {
                    "prediction": prediction, "probes": {str(s): r for s, r in sorted(probes.items())},
                    "largest_fitting_side": None, "bracketed": False, "search_finished": False}})

            found = {"prediction": prediction,
                     **largest_cube(label, prediction["side"], args, {int(s): r for s, r in known.items()}, record)}
            update_results(args.output, largest_cube={**data.get("largest_cube", {}), label: found})
    print_tables(args.output)
    print(f"wrote {RESULTS / args.output}.json")


if __name__ == "__main__":
    main()
