"""Inference throughput: ours against torchvision (NCHW and channels-last) and both ONNX exports under
onnxruntime, with identical weights, timed twice: interleaved in one process, and each configuration in fresh
processes of its own (as it runs when deployed).

    python benchmarks/inference.py [--model densenet121] [--batch 8] [--threads 2] [--rounds 15] [--warmup 3]

The same measurements as ``densenet bench MODEL --onnx`` and ``densenet bench MODEL --onnx --isolated``; writes
``benchmarks/results/inference.json`` and prints both tables with the ratios the targets are stated in. Why both:
in one shared process a model's speed depends on the heap the others left (torchvision's page faults per batch
differ several-fold between the two), see ``benchmarks/NOTES.md``.
"""

from __future__ import annotations

import argparse
from typing import Any

from densenet.deploy.bench import format_report, run_bench
from harness import machine, write_json


def target_ratios(report: dict[str, Any]) -> dict[str, float]:
    """The ratios the issue's targets are stated in."""
    speed = {m["label"]: m["images_per_second"] for m in report["measurements"]}
    return {
        "ours / torchvision": speed["ours"] / speed["torchvision"],
        "ours / torchvision channels-last": speed["ours"] / speed["torchvision-channels-last"],
        "onnxruntime: ours / torchvision": speed["onnxruntime-ours"] / speed["onnxruntime-torchvision"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    # per process in the isolated timing: measured, onnxruntime's first 2–3 runs in a fresh process are 10–30% slower
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    results: dict[str, Any] = {}
    for mode, isolated in (("one_process", False), ("isolated", True)):
        # peak memory is measured in child processes either way: once, with the first
        report = run_bench(args.model, batch=args.batch, onnx=True, threads=args.threads, rounds=args.rounds,
                           warmup=args.warmup, memory=not isolated, isolated=isolated)
        ratios = target_ratios(report)
        print(format_report(report))
        for label, ratio in ratios.items():
            print(f"{label}: {ratio:.2f}")
        print()
        results[mode] = {**report, "ratios": ratios}
    path = write_json("inference", {"benchmark": "inference", "machine": machine(), **results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
