"""Peak training memory against depth: DenseNet-BC (k = 12) at 32×32, batch 64, ours against the reference.

    python benchmarks/depth_scaling.py [--budget-gib 8] [--depths 100 190 250 ...] [--allocator glibc-default]

Each depth ``L`` (three blocks of ``(L − 4)/6`` bottleneck layers) runs one training step in a fresh process for
the explicit block (``memory_efficient=True``) and for the plain autograd reference; a worker is stopped once its
resident set passes 1.5× the budget. Depths for one implementation stop after the first one that exceeds the
budget. Records the closed-form prediction beside each measurement, and the deepest network each
implementation trained inside the budget. Writes ``benchmarks/results/depth_scaling.json`` and a PNG plot.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from densenet.analysis import summarize
from densenet.config import DenseNetConfig
from harness import ALLOCATORS, RESULTS, machine, measure_peak_memory, print_table, write_json

IMPLEMENTATIONS = {"ours": True, "reference": False}


def bc_config(depth: int) -> DenseNetConfig:
    """DenseNet-BC of depth ``L`` with k = 12: three blocks of ``(L − 4)/6`` layers, 2k initial maps, θ = 0.5."""
    layers = (depth - 4) // 6
    return DenseNetConfig(growth_rate=12, block_config=(layers,) * 3, num_init_features=24, bn_size=4,
                          compression=0.5, num_classes=10, stem="cifar")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-gib", type=float, default=8.0)
    parser.add_argument("--depths", type=int, nargs="+",
                        default=[100, 130, 160, 190, 220, 250, 400, 550, 700, 1000, 1300, 1600])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--allocator", choices=sorted(ALLOCATORS), default="glibc-default")
    args = parser.parse_args()
    budget = int(args.budget_gib * 2**30)

    results: dict[str, list[dict]] = {name: [] for name in IMPLEMENTATIONS}
    for name, memory_efficient in IMPLEMENTATIONS.items():
        for depth in args.depths:
            config = bc_config(depth)
            memory = summarize(config, 32, args.batch).activation_memory
            predicted = memory.memory_efficient if memory_efficient else memory.reference
            spec = {"impl": "ours", "config": config.to_dict(), "memory_efficient": memory_efficient,
                    "batch": args.batch, "input_size": 32}
            measured = measure_peak_memory(spec, args.allocator, limit_bytes=int(1.5 * budget))
            peak = measured.get("peak_above_baseline_bytes")
            fits = peak is not None and peak <= budget
            results[name].append({"depth": depth, "layers_per_block": (depth - 4) // 6, "fits": fits,
                                  "predicted_saved_bytes": predicted, **measured})
            shown = f"{peak / 2**30:.2f} GiB" if peak is not None else "over 1.5× budget"
            print(f"{name:9s} L={depth:5d}: {shown} (closed-form saved tensors {predicted / 2**30:.2f} GiB)",
                  flush=True)
            if not fits:
                break

    deepest = {name: max((r["depth"] for r in rows if r["fits"]), default=None) for name, rows in results.items()}
    table = [[name, r["depth"], f"{r['peak_above_baseline_bytes'] / 2**30:.2f}" if r.get("peak_above_baseline_bytes")
              else "> 1.5× budget", f"{r['predicted_saved_bytes'] / 2**30:.2f}", "yes" if r["fits"] else "no"]
             for name, rows in results.items() for r in rows]
    print()
    print_table(["implementation", "depth L", "peak GiB", "closed-form saved GiB", f"≤ {args.budget_gib} GiB"], table)
    ratio = deepest["ours"] / deepest["reference"] if deepest["ours"] and deepest["reference"] else None
    print(f"\ndeepest inside {args.budget_gib} GiB: ours L={deepest['ours']}, reference L={deepest['reference']}"
          + (f" ({ratio:.1f}×)" if ratio else ""))

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, rows in results.items():
        measured = [r for r in rows if r.get("peak_above_baseline_bytes")]
        axis.plot([r["depth"] for r in measured], [r["peak_above_baseline_bytes"] / 2**30 for r in measured], "o-",
                  label=f"{name} (measured peak)")
        axis.plot([r["depth"] for r in rows], [r["predicted_saved_bytes"] / 2**30 for r in rows], ":",
                  label=f"{name} (closed-form saved tensors)")
    axis.axhline(args.budget_gib, color="grey", linestyle="--", label=f"{args.budget_gib:g} GiB budget")
    axis.set_xlabel("depth L (DenseNet-BC, k = 12, 32×32, batch 64)")
    axis.set_ylabel("peak training memory above baseline (GiB)")
    axis.set_title(f"Training memory against depth ({args.allocator})")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot = RESULTS / "depth_scaling.png"
    figure.savefig(plot.with_suffix(".tmp.png"), dpi=120, bbox_inches="tight")
    plot.with_suffix(".tmp.png").replace(plot)
    path = write_json("depth_scaling", {"benchmark": "depth_scaling", "machine": machine(), "batch": args.batch,
                                        "budget_bytes": budget, "allocator": args.allocator, "results": results,
                                        "deepest_within_budget": deepest, "depth_ratio": ratio})
    print(f"wrote {path} and {plot}")


if __name__ == "__main__":
    main()
