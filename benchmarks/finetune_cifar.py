"""A pretrained-style start against training from scratch, on the real CIFAR-10 JPEGs, same budget.

    python benchmarks/finetune_cifar.py [--source-epochs 4] [--epochs 4] [--name finetune_cifar]

ImageNet weights cannot be downloaded on the development machine, so the start is made here: a model trained by
the tool on CIFAR-10's classes 0–4 (airplane … deer) is the starting point for classes 5–9 (dog … truck). Both
target runs use ``configs/cifar10_cpu.yaml`` with the same epochs, seed and data; one starts from scratch, the
other with ``--init-from`` the source run's ``best/`` (its classes differ, so its head is replaced). Test
accuracy per epoch of both runs goes into ``benchmarks/results/<name>.json`` and one plot.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from cifar10_cpu import ARCHIVE, CACHE, cifar10_jpegs
from densenet.fileio import atomic_path
from densenet.training.engine import train
from densenet.training.recipe import load_config
from harness import RESULTS, ROOT, machine, write_json

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def class_subset(root: Path, classes: tuple[str, ...], name: str) -> Path:
    """An ImageFolder tree of ``classes`` only, made of symbolic links into the extracted CIFAR-10 tree."""
    subset = CACHE / name
    for split in ("train", "test"):
        (subset / split).mkdir(parents=True, exist_ok=True)
        for label in classes:
            link = subset / split / label
            if not link.exists():
                link.symlink_to(root / split / label, target_is_directory=True)
    return subset


def run(data: Path, out: Path, epochs: int, **overrides: object) -> dict:
    """One training run with the CPU recipe; its per-epoch test accuracy and training time."""
    config = load_config(ROOT / "configs" / "cifar10_cpu.yaml", data_dir=str(data), out=str(out), epochs=epochs,
                         **overrides)
    started = time.perf_counter()
    result = train(config)
    curve, elapsed = [], 0.0
    for row in result.history:
        elapsed += row["train_seconds"]
        curve.append({"epoch": int(row["epoch"]), "train_seconds": round(elapsed, 1), "test_acc": row["eval_acc"]})
    return {"final_test_acc": result.final.top1 if result.final else None, "curve": curve,
            "wall_minutes": round((time.perf_counter() - started) / 60, 2), "run_dir": str(result.run_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source-epochs", type=int, default=4, help="epochs on classes 0-4 (the start)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each run on classes 5-9")
    parser.add_argument("--name", default="finetune_cifar")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    root = cifar10_jpegs(ARCHIVE, CACHE)
    source, target = class_subset(root, CLASSES[:5], "cifar10-0to4"), class_subset(root, CLASSES[5:], "cifar10-5to9")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = ROOT / "runs" / f"{args.name}-{stamp}"
    start = run(source, runs / "source-0to4", args.source_epochs)
    scratch = run(target, runs / "scratch-5to9", args.epochs)
    finetuned = run(target, runs / "finetuned-5to9", args.epochs, init_from=str(runs / "source-0to4" / "best"))
    summary = {"source": start, "scratch": scratch, "finetuned": finetuned,
               "finetuned_minus_scratch": round(finetuned["final_test_acc"] - scratch["final_test_acc"], 4),
               "recipe": "configs/cifar10_cpu.yaml", "machine": machine()}
    path = write_json(args.name, summary)
    plot(scratch["curve"], finetuned["curve"], RESULTS / f"{args.name}.png")
    print(f"classes 5-9 after {args.epochs} epochs: from scratch {scratch['final_test_acc']:.2%}, fine-tuned from "
          f"the classes 0-4 model {finetuned['final_test_acc']:.2%}; results in {path}")


def plot(scratch: list[dict], finetuned: list[dict], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(6, 4))
    for curve, label in ((scratch, "from scratch"), (finetuned, "fine-tuned from the classes 0-4 model")):
        axis.plot([p["epoch"] for p in curve], [100 * p["test_acc"] for p in curve], marker="o", label=label)
    axis.set(xlabel="epoch", ylabel="test accuracy on classes 5-9 (%)",
             title="CIFAR-10 classes 5-9, same recipe and budget")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
