"""The multi-label sections of ``densenet report``: per-label ROC curves, AUROC / average precision / saved
threshold per label (scikit-learn, over each label's known entries), and the most confidently wrong label decisions
with the Grad-CAM map of that label.

A decision is the label's probability against its saved threshold (``config.json``'s ``thresholds``, 0.5 without
one); an unknown entry (``nan``) is neither right nor wrong. "Most confidently wrong" ranks the wrong decisions by
how far the probability lies from the truth, ``|p − y|``.
"""

from __future__ import annotations

import base64
import html
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from densenet.data.images import ImageFiles, ImageTensors
from densenet.explain.api import explain
from densenet.explain.cam import label_thresholds
from densenet.explain.write import panels
from densenet.training.multilabel import MultiLabelResult, label_metrics, nanmean

Batch = Callable[[list[int]], tuple[torch.Tensor, list[int]]]  # split indices → (images, indices read)


def roc_uri(targets: np.ndarray, probabilities: np.ndarray, names: list[str]) -> str:
    """Every label's ROC curve over its known entries (:func:`~densenet.training.plots.plot_roc_curves`, the figure
    ``densenet eval`` writes) as a ``data:image/png;base64`` URI."""
    from densenet.training.plots import plot_roc_curves

    scores, labels = torch.from_numpy(probabilities), torch.from_numpy(targets)
    auroc, ap = label_metrics(scores, labels)
    result = MultiLabelResult(len(targets), math.nan, math.nan, auroc, ap, [], names, scores, labels)
    with tempfile.TemporaryDirectory() as directory:
        path = plot_roc_curves(result, Path(directory) / "roc.png", title="ROC curves (best weights)")
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def label_table(targets: np.ndarray, probabilities: np.ndarray, names: list[str], thresholds: np.ndarray,
                table: Callable[[list[str], list[list[object]]], str]) -> str:
    """AUROC and average precision per label (scikit-learn over the known entries, as training reports them), their
    means, and the saved thresholds with the label accuracy they give."""
    auroc, ap = label_metrics(torch.from_numpy(probabilities), torch.from_numpy(targets))
    known = ~np.isnan(targets)  # (M, L)
    rows = [[name, "—" if math.isnan(a) else f"{a:.3f}", "—" if math.isnan(p) else f"{p:.3f}",
             f"{thresholds[column]:.3f}", int(known[:, column].sum()), int((targets[:, column] == 1).sum())]
            for column, (name, a, p) in enumerate(zip(names, auroc, ap, strict=True))]
    decided = probabilities >= thresholds  # (M, L)
    accuracy = float((decided == (targets == 1))[known].mean())
    mean = (f"<p>mean AUROC <b>{nanmean(auroc):.3f}</b>, mean AP <b>{nanmean(ap):.3f}</b>, label accuracy at the "
            f"saved thresholds {accuracy:.2%} on {len(targets)} evaluation images</p>")
    return mean + table(["label", "AUROC", "AP", "threshold", "known", "positive"], rows)


def wrong_label_cards(model: torch.nn.Module, batch: Batch, indices: list[int], targets: np.ndarray,
                      probabilities: np.ndarray, names: list[str], count: int, png: Callable[[object], str]) -> str:
    """The ``count`` most confidently wrong (image, label) decisions, each with the Grad-CAM map of that label."""
    from matplotlib.figure import Figure

    thresholds = label_thresholds(model, len(names)).numpy()
    known = ~np.isnan(targets)
    wrong = known & ((probabilities >= thresholds) != (targets == 1))  # (M, L)
    distance = np.where(wrong, np.abs(probabilities - np.nan_to_num(targets)), -1.0)
    order = np.argsort(-distance, axis=None, kind="stable")[:count]
    picked = [divmod(int(flat), len(names)) for flat in order if distance.flat[flat] >= 0]
    if not picked:
        return "<p>Every known label of every evaluation image was decided correctly.</p>"
    images, _ = batch([indices[row] for row, _ in picked])
    explanations = explain(model, images, targets=[column for _, column in picked])
    cards = []
    for (row, column), explanation in zip(picked, explanations, strict=True):
        figure = Figure(figsize=(2.4, 2.4))
        axis = figure.subplots()
        axis.imshow(panels(explanation.image, explanation.heatmap)[0][1])
        axis.set_axis_off()
        figure.tight_layout(pad=0.1)
        truth = "present" if targets[row, column] == 1 else "absent"
        caption = (f"#{indices[row]}: <b>{html.escape(names[column])}</b> {truth}, probability "
                   f"{probabilities[row, column]:.1%} (threshold {thresholds[column]:.2f})")
        cards.append(f'<figure><img alt="heatmap" src="{png(figure)}"><figcaption>{caption}</figcaption></figure>')
    return '<div class="cards">' + "".join(cards) + "</div>"


def label_targets(split: ImageTensors | ImageFiles, indices: list[int]) -> np.ndarray:
    """The ``(M, L)`` label matrix (``nan`` = unknown) of ``indices``."""
    if isinstance(split, ImageTensors):
        return split.targets[indices].float().numpy()
    return torch.stack([split.samples[i][1] for i in indices]).float().numpy()
