"""The explicit dense block against the plain autograd path on the CPU recipe's small network, interleaved.

    python benchmarks/explicit_small.py [--rounds 9] [--threads 2] [--model NAME --input-size 32 --batch 64
        --seed 0 --memory-format channels_last --output explicit_small] [--allocator glibc-default | densenet-train]
        [--with-aten]

The network is ``configs/cifar10_cpu.yaml``'s (DenseNet-BC, k = 16, blocks 3-6-9, 32 initial maps) at 32×32,
batch 64 — or, with ``--model``, that registered network as registered — channels-last (``--memory-format
contiguous``: NCHW), one training step (forward, cross-entropy, backward, SGD with momentum), in float32 and
under bfloat16 autocast. Both paths hold the same weights; each round times every configuration once, in a new
seeded order (``--seed``: a longer measurement split into several invocations gives each its own orders) after a
short idle time (``densenet.deploy.bench.time_interleaved``). ``--allocator densenet-train`` times under the malloc
setting ``densenet train`` runs with on CPU (``keep_freed_memory``: freed memory reused, not faulted in again
each step); the default is glibc's own. ``--with-aten`` adds the explicit path with ATen's operations in place of
its fused CPU kernels (``DENSENET_FUSED_KERNELS=0`` for those configurations' steps: ``densenet.nn.fused``).
Writes ``benchmarks/results/explicit_small.json`` (with the load average before and after: the machine is shared)
and prints the explicit path's speed relative to the plain one.
"""

from __future__ import annotations

import argparse
import os
import statistics
from contextlib import nullcontext

import torch
import torch.nn.functional as F
import yaml

import densenet
from densenet.deploy.bench import time_interleaved
from densenet.nn import fused
from densenet.training.allocator import keep_freed_memory
from harness import ROOT, machine, print_table, write_json


def _step(model: densenet.DenseNet, x: torch.Tensor, target: torch.Tensor, bf16: bool, fused_kernels: bool = True):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        os.environ[fused.SWITCH] = "1" if fused_kernels else "0"
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = F.cross_entropy(model(x), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", help="a registered name instead of the CPU recipe's network")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--memory-format", choices=("channels_last", "contiguous"), default="channels_last")
    parser.add_argument("--seed", type=int, default=0, help="seed of the interleaved order")
    parser.add_argument("--output", default="explicit_small", help="results file name (benchmarks/results/NAME.json)")
    parser.add_argument("--allocator", choices=("glibc-default", "densenet-train"), default="glibc-default",
                        help="densenet-train: malloc keeps freed memory, as `densenet train` sets it on CPU")
    parser.add_argument("--with-aten", action="store_true",
                        help="also time the explicit path with ATen's operations instead of the fused CPU kernels")
    args = parser.parse_args()
    if args.allocator == "densenet-train" and not keep_freed_memory():
        raise SystemExit("keep_freed_memory() was refused: the densenet-train allocator setting does not apply")
    torch.set_num_threads(args.threads)
    recipe = yaml.safe_load((ROOT / "configs" / "cifar10_cpu.yaml").read_text())
    model_args = {key: value for key, value in recipe["model_args"].items() if key != "memory_efficient"}
    name = args.model or recipe["model"]
    if args.model:
        model_args = {}
    torch.manual_seed(0)
    memory_format = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}[args.memory_format]
    x = torch.randn(args.batch, 3, args.input_size, args.input_size).contiguous(memory_format=memory_format)
    target = torch.arange(args.batch) % 10
    reference = densenet.create_model(name, **model_args)
    runners = {}
    for memory_efficient in (True, False):
        for bf16 in (False, True):
            model = densenet.create_model(name, **model_args, memory_efficient=memory_efficient)
            model.load_state_dict(reference.state_dict())
            model = model.train().to(memory_format=memory_format)
            label = f"{'explicit' if memory_efficient else 'plain'} {'bf16' if bf16 else 'fp32'}"
            runners[label] = (_step(model, x, target, bf16), 0)
            if memory_efficient and args.with_aten:
                aten = densenet.create_model(name, **model_args, memory_efficient=True)
                aten.load_state_dict(reference.state_dict())
                aten = aten.train().to(memory_format=memory_format)
                runners[f"explicit-aten {'bf16' if bf16 else 'fp32'}"] = (_step(aten, x, target, bf16, False), 0)
    load_before = os.getloadavg()
    timings = time_interleaved(runners, rounds=args.rounds, warmup=1, seed=args.seed)
    load_after = os.getloadavg()
    times = timings.seconds
    medians = {label: statistics.median(t) for label, t in times.items()}
    rows = []
    for precision in ("fp32", "bf16"):
        explicit, plain = medians[f"explicit {precision}"], medians[f"plain {precision}"]
        row = [precision, f"{args.batch / explicit:.0f}", f"{args.batch / plain:.0f}", f"{plain / explicit:.2f}"]
        if args.with_aten:
            row.append(f"{plain / medians[f'explicit-aten {precision}']:.2f}")
        rows.append(row)
    print_table(["precision", "explicit img/s", "plain img/s", "explicit ÷ plain",
                 *(["explicit with ATen's ops ÷ plain"] if args.with_aten else [])], rows)
    path = write_json(args.output, {"benchmark": "explicit_small", "machine": machine(), "rounds": args.rounds,
                                    "model": name, "model_args": model_args, "input_size": args.input_size,
                                    "batch": args.batch, "seed": args.seed, "allocator": args.allocator,
                                    "memory_format": args.memory_format, "with_aten": args.with_aten,
                                    "load_average_before": load_before, "load_average_after": load_after,
                                    "seconds": {label: {"median": medians[label], "all": t}
                                                for label, t in times.items()},
                                    "minor_faults": timings.minor_faults})
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
