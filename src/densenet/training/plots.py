"""PNG plots of a run: loss and accuracy curves, and a confusion matrix (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from densenet.fileio import atomic_path


def plot_curves(history: Sequence[dict[str, float]], path: str | Path) -> Path:
    """Loss (left) and accuracy (right) per epoch, training and evaluation, written atomically to ``path``."""
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric, label in ((loss_axis, "loss", "loss"), (acc_axis, "acc", "top-1 accuracy")):
        axis.plot(epochs, [row[f"train_{metric}"] for row in history], marker=".", label="train")
        axis.plot(epochs, [row[f"eval_{metric}"] for row in history], marker=".", label="eval")
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return _save(figure, path)


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path,
                   title: str = "confusion matrix") -> Path:
    """Counts of (true class, predicted class), each row shaded by its share of the class's images."""
    n = len(class_names)
    rows = [[count / max(sum(row), 1) for count in row] for row in confusion]
    side = min(max(4.0, 0.45 * n + 2), 40.0)
    figure, axis = plt.subplots(figsize=(side, side))
    axis.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0)
    if n <= 30:
        axis.set_xticks(range(n), class_names, rotation=90)
        axis.set_yticks(range(n), class_names)
        for t in range(n):
            for p in range(n):
                if confusion[t][p]:
                    axis.text(p, t, str(confusion[t][p]), ha="center", va="center", fontsize=8,
                              color="white" if rows[t][p] > 0.5 else "black")
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    figure.tight_layout()
    return _save(figure, path)


def _save(figure: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format="png", dpi=100)
    finally:
        plt.close(figure)
    return path
