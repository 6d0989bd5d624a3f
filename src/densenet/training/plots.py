"""PNG plots of a run: loss and accuracy curves, a confusion matrix, and per-label ROC curves of a multi-label
model (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from densenet.fileio import atomic_path
from densenet.training.multilabel import MultiLabelResult, known_column


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


def plot_roc_curves(result: MultiLabelResult, path: str | Path, title: str = "ROC curves",
                    columns: Sequence[int] | None = None) -> Path:
    """One ROC curve per label (scikit-learn's ``roc_curve`` over the label's known entries), its AUROC in the
    legend, and the chance diagonal; a label whose known entries hold one class is listed without a curve.
    ``columns``: the labels to draw (default: all)."""
    from sklearn.metrics import roc_curve

    figure, axis = plt.subplots(figsize=(7, 6))
    for column in range(len(result.class_names)) if columns is None else columns:
        name, auroc = result.class_names[column], result.auroc[column]
        scores, labels = known_column(result.probabilities, result.targets, column)
        if math.isnan(auroc):
            axis.plot([], [], label=f"{name} (no AUROC: one class only)")
            continue
        false_positive, true_positive, _ = roc_curve(labels, scores)
        axis.plot(false_positive, true_positive, label=f"{name} (AUROC {auroc:.3f})")
    axis.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1)
    axis.set_xlabel("false positive rate (1 − specificity)")
    axis.set_ylabel("true positive rate (sensitivity)")
    axis.set_title(title)
    axis.legend(loc="lower right", fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)
