"""``densenet demo --multilabel``: generate the multi-label shapes set (:mod:`densenet.data.shapes`), train a tiny
DenseNet-BC on it through the CSV data set, and predict held-out images against their known labels."""

from __future__ import annotations

import csv
from pathlib import Path

from densenet.cli.train import stopped_line
from densenet.data.shapes import LABELS, write_shapes_dataset
from densenet.deploy.inference import load_model, predict
from densenet.training.engine import BEST_DIR, train
from densenet.training.recipe import TrainConfig

# the recipe under --config files and flags; reaches mean AUROC ≥ 0.95 in minutes on two cores (benchmarks/NOTES.md)
SHAPES_RECIPE: dict[str, object] = {
    "dataset": "csv", "data_dir": "runs/shapes-data", "image_size": 32, "epochs": 12, "batch_size": 32, "lr": 0.1,
    "schedule": "cosine", "augment": "none", "pos_weight": "auto", "workers": 0,
    "model_args": {"block_config": [2, 2], "growth_rate": 8},
}
TRAIN_IMAGES, VAL_IMAGES = 1000, 300


def report_shapes_demo(config: TrainConfig, samples: int) -> int:
    """Write the set into ``config.data_dir`` unless it holds one, train, print the result and ``samples``
    held-out predictions (positives at the saved thresholds) beside the true labels (``?``: unknown)."""
    if config.dataset != "csv" or not config.data_dir:
        raise ValueError("the multi-label demo trains on --dataset csv with a --data-dir")
    data = Path(config.data_dir)
    if not (data / "train.csv").is_file():
        write_shapes_dataset(data, train=TRAIN_IMAGES, val=VAL_IMAGES)
    run = train(config)
    if run.interrupted:
        return stopped_line(run, "demo --multilabel")
    assert run.final is not None
    print(f"multi-label shapes ({', '.join(LABELS)}): final {run.final.headline()} (best mean AUROC "
          f"{run.best_acc:.3f}) after {len(run.history)} epochs, {run.train_seconds:.1f} s of training")
    print(f"run directory {run.run_dir} (best/ with thresholds, metrics.csv, roc_curves.png)")
    with (data / "val.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))[:samples]
    predictions = predict(load_model(run.run_dir / BEST_DIR), [data / row["path"] for row in rows])
    print(f"predictions of best/ for {len(predictions)} held-out images (true labels; ? = unknown):")
    for prediction, row in zip(predictions, rows, strict=True):
        truth = [name + ("?" if row[name] == "" else "") for name in LABELS if row[name] != "0"]
        print(f"  {row['path']}  predicted {', '.join(prediction.positives or []) or 'none'}  "
              f"true {', '.join(truth) or 'none'}")
    return 0
