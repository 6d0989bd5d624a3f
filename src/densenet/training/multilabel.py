"""Multi-label classification (one sigmoid per label, as CheXNet's 14 findings): the masked binary cross-entropy,
per-label positive weights, per-label AUROC and average precision (scikit-learn), and decision thresholds.

Targets are ``float32 (N, L)`` with ``nan`` where a label is unknown (an empty CSV cell); an unknown entry adds
nothing to the loss, the metrics or the thresholds.

Masked BCE (logits ``x``, targets ``y ∈ {0, 1}``, known entries ``K``, positive weights ``w_l``, ``σ`` the sigmoid)::

    ℓ = (1 / |K|) · Σ_{(i, l) ∈ K}  −[ w_l · y_il · log σ(x_il) + (1 − y_il) · log(1 − σ(x_il)) ]

(``w_l = 1`` without positive weights; ``ℓ = 0`` when no entry of the batch is known). ``--pos-weight auto`` sets
``w_l = negatives_l / positives_l`` over the known training entries (torch's ``pos_weight`` of
``binary_cross_entropy_with_logits``), so that each label's positives weigh as much as its negatives.

Thresholds: for each label the one that maximises F1 = 2·precision·recall / (precision + recall) on the validation
split's known entries (positive iff ``p ≥ threshold``; candidates are the validation probabilities, scikit-learn's
``precision_recall_curve``); 0.5 for a label without a known positive there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger("densenet")

DEFAULT_THRESHOLD = 0.5


def known(targets: Tensor) -> Tensor:
    """``bool``, shaped like ``targets``: which entries are known (not ``nan``)."""
    return ~torch.isnan(targets)


def masked_bce_sum(logits: Tensor, targets: Tensor, pos_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(Σ_K BCE, |K|)``: the summed binary cross-entropy over the known entries and their count.

    ``logits``, ``targets``: ``(B, L)``; ``pos_weight``: ``(L,)`` or ``None``.
    """
    mask = known(targets)
    filled = torch.where(mask, targets, torch.zeros_like(targets))  # any value: masked out below
    losses = F.binary_cross_entropy_with_logits(logits, filled, pos_weight=pos_weight, reduction="none")  # (B, L)
    return torch.where(mask, losses, torch.zeros_like(losses)).sum(), mask.sum()


class MaskedBCE(nn.Module):
    """The masked binary cross-entropy ``ℓ`` of the module docstring, the mean over the batch's known entries."""

    def __init__(self, pos_weight: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """``(B, L)``, ``(B, L)`` → scalar."""
        weight = None if self.pos_weight is None else self.pos_weight.to(logits.device)
        total, count = masked_bce_sum(logits, targets, weight)
        return total / count.clamp_min(1)


def positive_weights(labels: Tensor, names: Sequence[str]) -> Tensor:
    """``w_l = negatives_l / positives_l`` over the known entries of the training labels ``(N, L)``: ``(L,)``.

    Raises:
        ValueError: a label has no known positive or no known negative in the training split (no weight balances
            it; the message names it).
    """
    mask = known(labels)
    positives = ((labels == 1) & mask).sum(0).double()
    negatives = ((labels == 0) & mask).sum(0).double()
    lacking = [name for name, p, n in zip(names, positives.tolist(), negatives.tolist(), strict=True) if not p or not n]
    if lacking:
        raise ValueError(f"--pos-weight auto: the training split has no known positive or no known negative for "
                         f"{', '.join(lacking)}; drop the label or train without --pos-weight")
    return (negatives / positives).float()


def correct_labels(logits: Tensor, targets: Tensor) -> Tensor:
    """The batch's label accuracy at probability 0.5 (logit 0) over its known entries, times its images: summed
    over batches and divided by the images, the training accuracy of the epoch line."""
    mask = known(targets)
    right = ((logits >= 0) == (targets == 1)) & mask
    return right.sum() / mask.sum().clamp_min(1) * len(targets)


def _sklearn_metrics(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """AUROC and average precision of one label's known entries; ``nan`` when they hold one class only."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    if labels.size == 0 or labels.min() == labels.max():
        return math.nan, math.nan
    return float(roc_auc_score(labels, scores)), float(average_precision_score(labels, scores))


def label_metrics(probabilities: Tensor, targets: Tensor) -> tuple[list[float], list[float]]:
    """Per-label AUROC and average precision (scikit-learn's ``roc_auc_score``, ``average_precision_score``) over
    each label's known entries; ``nan`` for a label whose known entries are all positive or all negative.

    ``probabilities``, ``targets``: ``(N, L)``.
    """
    aurocs, aps = [], []
    for column in range(targets.shape[1]):
        scores, labels = known_column(probabilities, targets, column)
        auroc, ap = _sklearn_metrics(scores, labels)
        aurocs.append(auroc)
        aps.append(ap)
    return aurocs, aps


def known_column(probabilities: Tensor, targets: Tensor, column: int) -> tuple[np.ndarray, np.ndarray]:
    """One label's probabilities and 0/1 targets where the target is known."""
    mask = known(targets[:, column])
    return (probabilities[mask, column].double().numpy(), targets[mask, column].long().numpy())


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The probability threshold (positive iff ``p ≥ t``) with the highest F1 on these entries; 0.5 without a
    positive. Ties go to the higher threshold (fewer positives called)."""
    from sklearn.metrics import precision_recall_curve

    if not (labels == 1).any():
        return DEFAULT_THRESHOLD
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = np.flatnonzero(f1 == f1.max())[-1]  # thresholds ascend: the last of the ties is the highest
    return float(thresholds[best])


def choose_thresholds(probabilities: Tensor, targets: Tensor) -> list[float]:
    """Each label's max-F1 threshold (:func:`best_f1_threshold`) on its known entries. ``(N, L)`` → ``L`` values."""
    return [best_f1_threshold(*known_column(probabilities, targets, column)) for column in range(targets.shape[1])]


def nanmean(values: Sequence[float]) -> float:
    """The mean of the values that are not ``nan`` (``nan`` if none is)."""
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


@dataclass
class MultiLabelResult:
    """Metrics of one pass of a multi-label model over a data set.

    Attributes:
        samples: images counted.
        loss: mean masked BCE per known entry (no positive weights: comparable across runs).
        accuracy: fraction of known entries right at probability 0.5.
        auroc, ap: per-label AUROC and average precision (``nan``: the label's known entries hold one class).
        thresholds: per-label max-F1 thresholds chosen on this data.
        class_names: the labels, in output order.
        probabilities, targets: ``(N, L)`` sigmoid outputs and targets (``nan`` = unknown), for ROC curves.
    """

    samples: int
    loss: float
    accuracy: float
    auroc: list[float]
    ap: list[float]
    thresholds: list[float]
    class_names: list[str]
    probabilities: Tensor = field(repr=False)
    targets: Tensor = field(repr=False)

    @property
    def mean_auroc(self) -> float:
        """Mean AUROC over the labels that have one (the best checkpoint's criterion)."""
        return nanmean(self.auroc)

    @property
    def mean_ap(self) -> float:
        """Mean average precision over the labels that have one."""
        return nanmean(self.ap)

    def headline(self) -> str:
        """``mean AUROC 0.971, mean AP 0.952``."""
        return f"mean AUROC {self.mean_auroc:.3f}, mean AP {self.mean_ap:.3f}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (strict JSON: ``None`` for an undefined metric)."""
        def plain(value: float) -> float | None:
            return None if math.isnan(value) else value

        return {
            "task": "multi_label", "samples": self.samples, "loss": self.loss, "label_accuracy": self.accuracy,
            "mean_auroc": plain(self.mean_auroc), "mean_ap": plain(self.mean_ap),
            "per_label": {name: {"auroc": plain(auroc), "ap": plain(ap), "best_f1_threshold": threshold}
                          for name, auroc, ap, threshold in zip(self.class_names, self.auroc, self.ap,
                                                                self.thresholds, strict=True)},
            "class_names": self.class_names,
        }


class MultiLabelAccumulator:
    """Collects logits and targets over batches (AUROC needs every score, not sums); :meth:`result` computes the
    metrics. ``gathered`` replaces the collection by every process's (see :meth:`parts`)."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = list(class_names)
        self.logits: list[Tensor] = []
        self.targets: list[Tensor] = []

    def update(self, logits: Tensor, targets: Tensor) -> None:
        """Add a batch: ``logits``, ``targets`` ``(B, L)``."""
        self.logits.append(logits.detach().float().cpu())
        self.targets.append(targets.detach().float().cpu())

    def parts(self) -> tuple[Tensor, Tensor]:
        """This process's logits and targets, ``(N, L)`` each."""
        width = len(self.class_names)
        return (torch.cat(self.logits) if self.logits else torch.empty(0, width),
                torch.cat(self.targets) if self.targets else torch.empty(0, width))

    def gathered(self, parts: Sequence[tuple[Tensor, Tensor]]) -> None:
        """Replace the collection by ``parts`` (every process's :meth:`parts`)."""
        self.logits = [logits for logits, _ in parts]
        self.targets = [targets for _, targets in parts]

    def result(self) -> MultiLabelResult:
        """The metrics of everything added.

        Raises:
            ValueError: nothing was added.
        """
        logits, targets = self.parts()
        if not len(targets):
            raise ValueError("no image was evaluated: every image of the evaluation split was unreadable or the "
                             "split is empty")
        total, count = masked_bce_sum(logits, targets)
        probabilities = torch.sigmoid(logits)  # (N, L)
        right, entries = correct_labels(logits, targets), len(targets)
        auroc, ap = label_metrics(probabilities, targets)
        return MultiLabelResult(len(targets), float(total / max(int(count), 1)), float(right) / entries, auroc, ap,
                                choose_thresholds(probabilities, targets), self.class_names, probabilities, targets)
