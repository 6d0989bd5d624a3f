"""The generated multi-label shapes set (``densenet.data.shapes``) learnt through the CLI: mean AUROC per epoch.

    python benchmarks/multilabel_shapes.py [--train 1000] [--val 300] [--epochs 12] [--name multilabel_shapes]

Writes the CSV data set, runs ``densenet train --dataset csv`` (a tiny DenseNet-BC, blocks 2-2, growth 8, 32×32,
``--pos-weight auto``) and ``densenet eval --json`` on its ``best/`` as subprocesses, exactly as a user would, and
records the per-epoch mean AUROC, the evaluation of ``best/``, the wall time and the training process's CPU time
(user + system: the honest cost when the machine is shared) in ``benchmarks/results/<name>.json``. The answer is
known: every label is exactly whether its shape was drawn, so a network that learnt the shapes reaches mean AUROC 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from densenet.data.shapes import write_shapes_dataset
from harness import machine, write_json

RECIPE = ["--image-size", "32", "--batch-size", "32", "--lr", "0.1", "--schedule", "cosine", "--augment", "none",
          "--pos-weight", "auto", "--model-arg", "block_config=[2,2]", "--model-arg", "growth_rate=8",
          "--log-every", "0", "--workers", "0"]


def densenet(*args: str) -> str:
    """Run the ``densenet`` CLI of this interpreter; its stdout (stderr passes through)."""
    command = [sys.executable, "-m", "densenet", *args]
    return subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--name", default="multilabel_shapes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        data = write_shapes_dataset(Path(scratch) / "shapes", train=args.train, val=args.val, size=32, seed=0)
        run = Path(scratch) / "run"
        started = time.perf_counter()
        densenet("train", "--dataset", "csv", "--data-dir", str(data), "--epochs", str(args.epochs), "--out",
                 str(run), *RECIPE)
        wall = time.perf_counter() - started
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the train subprocess (the only child so far)
        cpu = usage.ru_utime + usage.ru_stime
        with (run / "metrics.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        report = json.loads(densenet("eval", "--weights", str(run / "best"), "--dataset", "csv", "--data-dir",
                                     str(data), "--json", "--out", scratch))
    curve = [{"epoch": int(row["epoch"]), "train_seconds": float(row["train_seconds"]),
              "mean_auroc": float(row["eval_mean_auroc"]), "mean_ap": float(row["eval_mean_ap"])} for row in rows]
    first = next((row["epoch"] for row in curve if row["mean_auroc"] >= 0.95), None)
    result = {"machine": machine(), "threads": os.environ.get("OMP_NUM_THREADS"), "train_images": args.train,
              "val_images": args.val, "epochs": args.epochs, "recipe": RECIPE, "wall_seconds": round(wall, 1),
              "train_cpu_seconds": round(cpu, 1), "load_average_at_end": os.getloadavg(),
              "first_epoch_mean_auroc_at_least_0.95": first, "curve": curve,
              "best_eval": {key: report[key] for key in ("mean_auroc", "mean_ap", "label_accuracy", "per_label")}}
    print(json.dumps({key: result[key] for key in ("wall_seconds", "train_cpu_seconds",
                                                   "first_epoch_mean_auroc_at_least_0.95")}),
          f"best mean AUROC {report['mean_auroc']:.4f}", f"→ {write_json(args.name, result)}")


if __name__ == "__main__":
    main()
