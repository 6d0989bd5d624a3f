"""Inference throughput: ours against torchvision (NCHW and channels-last) and both ONNX exports under
onnxruntime, interleaved in one run with identical weights.

    python benchmarks/inference.py [--model densenet121] [--batch 8] [--threads 2] [--rounds 15]

The same measurement as ``densenet bench MODEL --onnx``; writes ``benchmarks/results/inference.json`` and prints
the table with the ratios the targets are stated in.
"""

from __future__ import annotations

import argparse

from densenet.bench import format_report, run_bench
from harness import machine, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    report = run_bench(args.model, batch=args.batch, onnx=True, threads=args.threads, rounds=args.rounds)
    print(format_report(report))
    speed = {m["label"]: m["images_per_second"] for m in report["measurements"]}
    ratios = {
        "ours / torchvision": speed["ours"] / speed["torchvision"],
        "ours / torchvision channels-last": speed["ours"] / speed["torchvision-channels-last"],
        "onnxruntime: ours / torchvision": speed["onnxruntime-ours"] / speed["onnxruntime-torchvision"],
    }
    for label, ratio in ratios.items():
        print(f"{label}: {ratio:.2f}")
    path = write_json("inference", {"benchmark": "inference", "machine": machine(), **report, "ratios": ratios})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
