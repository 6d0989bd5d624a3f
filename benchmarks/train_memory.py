"""Peak training memory: ours against torchvision's DenseNet, each configuration in its own process.

    python benchmarks/train_memory.py [--model densenet121] [--batch 16] [--input-size 224]

For each allocator setting (glibc default, fixed 128 KiB mmap threshold) and each configuration (torchvision
with ``memory_efficient`` False / True, ours with the explicit block and with the plain autograd reference),
one fresh process runs one training step; the result is peak RSS above the process baseline. Writes
``benchmarks/results/train_memory.json`` and prints a table with the ratios to torchvision.
"""

from __future__ import annotations

import argparse

import densenet
from densenet.analysis import summarize
from harness import ALLOCATORS, TRAINING_CONFIGURATIONS, machine, measure_peak_memory, print_table, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    predicted = summarize(densenet.get_config(args.model), args.input_size, args.batch).activation_memory
    results: dict[str, dict] = {}
    for allocator in ALLOCATORS:
        results[allocator] = {}
        for label, base in TRAINING_CONFIGURATIONS.items():
            spec = {**base, "name": args.model, "batch": args.batch, "input_size": args.input_size,
                    "threads": args.threads}
            result = measure_peak_memory(spec, allocator, limit_bytes=20 * 2**30)
            results[allocator][label] = result
            print(f"{allocator:16s} {label:30s} {result['peak_above_baseline_bytes'] / 2**20:8.0f} MiB", flush=True)

    rows = []
    for allocator, by_label in results.items():
        default = by_label["torchvision"]["peak_above_baseline_bytes"]
        efficient = by_label["torchvision-memory-efficient"]["peak_above_baseline_bytes"]
        for label, result in by_label.items():
            peak = result["peak_above_baseline_bytes"]
            rows.append([allocator, label, f"{peak / 2**20:,.0f}", f"{peak / default:.2f}", f"{peak / efficient:.2f}"])
    print()
    print_table(["allocator", "configuration", "peak MiB", "÷ torchvision", "÷ torchvision mem-eff"], rows)
    print(f"\nclosed form (densenet.analysis), tensors saved for backward at batch {args.batch}: "
          f"explicit block {predicted.memory_efficient / 2**20:,.0f} MiB, "
          f"plain autograd {predicted.reference / 2**20:,.0f} MiB")
    path = write_json("train_memory", {
        "benchmark": "train_memory", "machine": machine(), "model": args.model, "batch": args.batch,
        "input_size": args.input_size, "threads": args.threads, "allocators": ALLOCATORS, "results": results,
        "closed_form_saved_bytes": {"memory_efficient": predicted.memory_efficient, "reference": predicted.reference},
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
