"""CIFAR-10 on 2 CPU cores against the clock: test accuracy as training time goes by.

    python benchmarks/cifar10_cpu.py [--config configs/cifar10_cpu.yaml] [--budget-minutes 45] [--epochs N]
                                     [--set KEY=VALUE ...] [--name cifar10_cpu]

Trains on the real CIFAR-10 JPEGs (``../shared/data/cifar10-jpeg.tar.gz``, extracted once to
``~/.cache/densenet``, never into the repository) with the recipe of ``--config``: the images are decoded once
into memory (``cache: true``) and augmented as tensors. After every epoch the whole test set is evaluated; the
evaluation time is not counted as training time. Records test accuracy against cumulative training seconds, the
accuracy reached within the budget, and the machine, in ``benchmarks/results/<name>.json`` and a PNG plot. The
recipe's epoch count is what must fit the budget; the script does not stretch or cut the schedule, it reports
what was reached by then.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tarfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import yaml

from densenet.fileio import atomic_path
from densenet.training.engine import train
from densenet.training.recipe import load_config
from harness import RESULTS, ROOT, machine, write_json

ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CACHE = Path(os.environ.get("DENSENET_CACHE", Path.home() / ".cache" / "densenet"))
REFERENCE = "torchvision DenseNet-BC (k=12, 6-6-6, CIFAR stem), plain loop, batch 64: 76% after 48 min on 2 cores"


def cifar10_jpegs(archive: Path, cache: Path) -> Path:
    """The extracted ImageFolder tree ``cifar10-jpeg/{train,test}``, extracting ``archive`` on first use."""
    root = cache / "cifar10-jpeg"
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root
    if not archive.is_file():
        sys.exit(f"cifar10_cpu: {archive} not found (the shared CIFAR-10 JPEG archive)")
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / ".cifar10-jpeg.partial"
    with tarfile.open(archive) as tar:
        tar.extractall(partial, filter="data")
    (partial / "cifar10-jpeg").rename(root)
    partial.rmdir()
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "cifar10_cpu.yaml"))
    parser.add_argument("--budget-minutes", type=float, default=45.0)
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (short probes)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key (value in YAML), e.g. --set batch_size=128")
    parser.add_argument("--name", default="cifar10_cpu", help="results file name")
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    overrides = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.set)}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    data = cifar10_jpegs(args.archive, CACHE)
    out = ROOT / "runs" / f"{args.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    config = load_config(args.config, **{"data_dir": str(data), "out": str(out), **overrides})

    started = time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - started
    budget = args.budget_minutes * 60
    curve, elapsed = [], 0.0
    for row in result.history:
        elapsed += row["train_seconds"]
        curve.append({"epoch": int(row["epoch"]), "train_seconds": round(elapsed, 1),
                      "test_acc": row["eval_acc"], "train_acc": row["train_acc"], "lr": row["lr"],
                      "images_per_second": round(row["images_per_second"], 1)})
    within = [point for point in curve if point["train_seconds"] <= budget]
    summary = {
        "recipe": config.to_dict(),
        "budget_minutes": args.budget_minutes,
        "train_minutes": round(elapsed / 60, 2),
        "wall_minutes_including_eval_and_loading": round(wall / 60, 2),
        "final_test_acc": result.final.top1 if result.final else None,
        "test_acc_within_budget": within[-1]["test_acc"] if within else None,
        "schedule_finished_within_budget": bool(curve) and curve[-1]["train_seconds"] <= budget,
        "curve": curve,
        "run_dir": str(result.run_dir),
        "reference": REFERENCE,
        "machine": machine(),
    }
    path = write_json(args.name, summary)
    plot(curve, budget, RESULTS / f"{args.name}.png")
    print(f"test accuracy {summary['final_test_acc']:.2%} after {summary['train_minutes']:.1f} min of training "
          f"({len(curve)} epochs); within the {args.budget_minutes:g}-minute budget: "
          f"{summary['test_acc_within_budget'] or 0:.2%}; results in {path}")


def plot(curve: list[dict], budget: float, path: Path) -> None:
    """Test accuracy against training minutes, with the budget and the 82% target marked."""
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot([p["train_seconds"] / 60 for p in curve], [100 * p["test_acc"] for p in curve], marker=".",
              label="test accuracy")
    axis.axvline(budget / 60, color="grey", linestyle="--", label="budget")
    axis.axhline(82, color="green", linestyle=":", label="target 82%")
    axis.set_xlabel("training time (minutes, evaluation excluded)")
    axis.set_ylabel("CIFAR-10 test accuracy (%)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()
