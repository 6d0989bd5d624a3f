"""A run directory's records: the resolved recipe (YAML), metrics per epoch (CSV and TensorBoard) and plots."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from densenet.fileio import write_text
from densenet.training.metrics import EvalResult
from densenet.training.multilabel import MultiLabelResult
from densenet.training.plots import plot_confusion, plot_curves, plot_roc_curves
from densenet.training.recipe import TrainConfig

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
CURVES_FILE = "curves.png"
CONFUSION_FILE = "confusion_matrix.png"
ROC_FILE = "roc_curves.png"
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "eval_loss", "eval_acc", "eval_top5", "lr", "train_seconds",
                  "images_per_second", "skipped_images")


class RunLog:
    """Writes a run's records into ``directory``; every file is replaced atomically.

    Args:
        directory: the run directory (created if missing).
        first_epoch: the epoch the run (re)starts at; TensorBoard events from later epochs of an interrupted
            attempt are purged so that curves do not double back.
    """

    def __init__(self, directory: str | Path, first_epoch: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.directory / TENSORBOARD_DIR), purge_step=first_epoch + 1)

    def write_config(self, config: TrainConfig) -> None:
        """The resolved recipe as ``config.yaml``."""
        config.save(self.directory / CONFIG_FILE)

    def write_epoch(self, history: Sequence[dict[str, float]]) -> None:
        """Rewrite ``metrics.csv`` from ``history`` and add its last row to TensorBoard."""
        buffer = io.StringIO()
        columns = metric_columns(history[-1])
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({key: row.get(key, "") for key in columns} for row in history)
        write_text(self.directory / METRICS_FILE, buffer.getvalue())
        row = history[-1]
        step = int(row["epoch"])
        for key in columns[1:]:
            self.writer.add_scalar(key.replace("_", "/", 1), row[key], step)
        self.writer.flush()

    def write_plots(self, history: Sequence[dict[str, float]], final: EvalResult | MultiLabelResult | None) -> None:
        """``curves.png`` (loss and accuracy per epoch) and ``confusion_matrix.png`` of the final evaluation
        (multi-label: ``roc_curves.png``, one ROC curve per label)."""
        if history:
            plot_curves(history, self.directory / CURVES_FILE)
        if isinstance(final, MultiLabelResult):
            plot_roc_curves(final, self.directory / ROC_FILE, title=f"final evaluation: {final.headline()}")
        elif final is not None:
            plot_confusion(final.confusion, final.class_names, self.directory / CONFUSION_FILE,
                           title=f"confusion matrix (top-1 {final.top1:.2%})")

    def close(self) -> None:
        """Flush and close TensorBoard's event file."""
        self.writer.close()


def metric_columns(row: dict[str, float]) -> list[str]:
    """The columns of ``metrics.csv``: :data:`METRIC_COLUMNS`, then the task's own (multi-label: the mean and
    per-label AUROC and AP) in the row's order."""
    return [*METRIC_COLUMNS, *(key for key in row if key not in METRIC_COLUMNS)]
