"""Channels-last or not, for signals (1D) and volumes (3D): one training step and one optimized inference batch.

    python benchmarks/layout_nd.py [--rounds 9] [--threads 2]

The explicit path keeps each dense block's buffer channels-last in every dimension; what the input layout decides is
how the stem's convolution and max-pool run (and the transitions' convs read the buffer either way). Each
configuration holds the same weights and is timed interleaved (``densenet.deploy.bench.time_interleaved``): for each
dimension, the explicit training step with the input channels-last (``channels_last_3d`` for volumes; the channel
axis moved last for signals, which have no memory format) and as it comes (contiguous ``(N, C, *spatial)``), and
``optimize_for_inference(channels_last=True/False)``. Writes ``benchmarks/results/layout_nd.json``.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

import densenet
from densenet.deploy.bench import time_interleaved
from densenet.deploy.optimize import optimize_for_inference
from densenet.nn.dims import channels_last
from harness import machine, print_table, write_json

# DenseNet-121 with one input channel and two classes: MONAI's tutorial setting for volumes, and an ECG-like signal
CASES = {1: {"batch": 8, "side": 1024}, 3: {"batch": 2, "side": 32}}


def _train_step(model: densenet.DenseNet, optimizer: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor):
    """Forward with ``x`` in the layout it has (``model.features`` directly, skipping forward_features' choice)."""
    def step() -> None:
        logits = model.forward_head(F.relu(model.features(x)))
        loss = F.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def _infer(model: torch.nn.Module, x: torch.Tensor):
    def run() -> None:
        with torch.inference_mode():
            model(x)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dims", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, dict] = {}
    rows = []
    for dims in args.dims:
        case = CASES[dims]
        torch.manual_seed(0)
        model = densenet.create_model("densenet121", spatial_dims=dims, in_chans=1, num_classes=2).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
        x = torch.randn(case["batch"], 1, *[case["side"]] * dims)
        target = torch.arange(case["batch"]) % 2
        eval_model = densenet.create_model("densenet121", spatial_dims=dims, in_chans=1, num_classes=2).eval()
        runners = {
            "train channels-last": (_train_step(model, optimizer, channels_last(x), target), 0),
            "train contiguous": (_train_step(model, optimizer, x.contiguous(), target), 0),
            "inference channels-last": (_infer(optimize_for_inference(eval_model, True), x), 0),
            "inference contiguous": (_infer(optimize_for_inference(eval_model, False), x), 0),
        }
        times = time_interleaved(runners, rounds=args.rounds, warmup=1).seconds
        results[str(dims)] = {**case, "seconds": {label: {"median": statistics.median(t), "all": t}
                                                   for label, t in times.items()}}
        for label, t in times.items():
            rows.append([dims, f"{case['batch']}×1×{'×'.join([str(case['side'])] * dims)}", label,
                         f"{statistics.median(t):.3f}"])
    print_table(["d", "input", "configuration", "median s"], rows)
    path = write_json("layout_nd", {"benchmark": "layout_nd", "machine": machine(), "rounds": args.rounds,
                                    "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
