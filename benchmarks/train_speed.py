"""Training throughput: ours against torchvision's DenseNet, interleaved in one process.

    python benchmarks/train_speed.py [--model densenet121] [--batch 16] [--rounds 7]

Every configuration holds the same weights. Each round times one training step (forward, cross-entropy,
backward, SGD step) of every configuration, in a new seeded random order after a short idle time
(``densenet.deploy.bench.time_interleaved``), so a change in machine load hits all of them alike and none always follows
the same neighbour; the median over rounds, after a warm-up round, gives images per second. Writes
``benchmarks/results/train_speed.json`` and prints the ratios to torchvision's default.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import densenet
from densenet.analysis import summarize
from densenet.deploy.bench import time_interleaved, train_step
from harness import TRAINING_CONFIGURATIONS, build_model, machine, print_table, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--batch", type=int, nargs="+", default=[16])
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    labels = sorted(TRAINING_CONFIGURATIONS)
    parser.add_argument("--only", nargs="+", choices=labels, default=labels)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    models = {label: build_model({**TRAINING_CONFIGURATIONS[label], "name": args.model}) for label in args.only}
    reference_state = next(iter(models.values())).state_dict()
    for model in models.values():
        model.load_state_dict(reference_state)
    optimizers = {label: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for label, m in models.items()}
    summary = summarize(densenet.get_config(args.model), args.input_size)

    results: dict[str, dict] = {}
    for batch in args.batch:
        x = torch.randn(batch, 3, args.input_size, args.input_size)
        target = torch.randint(0, 1000, (batch,))
        steps = {label: (train_step(model, optimizers[label], x, target), 0) for label, model in models.items()}
        times = time_interleaved(steps, rounds=args.rounds, warmup=1).seconds
        results[str(batch)] = {label: {"median_step_seconds": statistics.median(t), "step_seconds": t,
                                       "images_per_second": batch / statistics.median(t)}
                               for label, t in times.items()}

    rows = []
    for batch, by_label in results.items():
        base = by_label.get("torchvision", next(iter(by_label.values())))["images_per_second"]
        for label, result in by_label.items():
            # training ≈ 3× the forward multiply-accumulates (forward, input gradient, weight gradient); torchvision
            # runs its transition convs before the pool (summary.macs), ours after (summary.macs_executed)
            macs = summary.macs if label.startswith("torchvision") else summary.macs_executed
            speed = result["images_per_second"]
            rows.append([batch, label, f"{speed:.2f}", f"{speed / base:.2f}", f"{3 * 2 * macs * speed / 1e9:.0f}"])
    print()
    print_table(["batch", "configuration", "img/s", "÷ torchvision", "GFLOP/s (3× fwd)"], rows)
    path = write_json("train_speed", {"benchmark": "train_speed", "machine": machine(), "model": args.model,
                                      "input_size": args.input_size, "rounds": args.rounds, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
