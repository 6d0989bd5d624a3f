"""Classification metrics accumulated over batches: loss, top-1, top-5, per-class accuracy, confusion matrix."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class EvalResult:
    """Metrics of one pass over a data set.

    Attributes:
        samples: images counted.
        loss: mean per-image loss, from the sums given to :meth:`Accumulator.update`.
        top1: fraction whose highest-scoring class is the target.
        top5: fraction whose target is among the ``min(5, classes)`` highest-scoring classes.
        per_class: top-1 accuracy of each class (``nan`` for a class with no image; ``None`` in :meth:`to_dict`).
        confusion: ``confusion[t][p]`` counts images of class ``t`` predicted as ``p``.
        class_names: the classes, in index order.
    """

    samples: int
    loss: float
    top1: float
    top5: float
    per_class: list[float]
    confusion: list[list[int]]
    class_names: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (strict JSON: no NaN); per-class accuracy keyed by class name, ``None`` for a class with
        no image."""
        return {
            "samples": self.samples,
            "loss": self.loss,
            "top1": self.top1,
            "top5": self.top5,
            "per_class": {name: None if math.isnan(accuracy) else accuracy
                          for name, accuracy in zip(self.class_names, self.per_class, strict=True)},
            "class_names": self.class_names,
            "confusion": self.confusion,
        }


class Accumulator:
    """Sums of loss, top-k hits and the confusion matrix over batches, packed in one tensor so that processes
    can add theirs with a single ``all_reduce``."""

    def __init__(self, class_names: list[str]) -> None:
        self.class_names = list(class_names)
        n = len(class_names)
        # [loss sum, top-5 hits, confusion matrix (n × n)], in float64: exact for counts below 2^53.
        self.totals = torch.zeros(2 + n * n, dtype=torch.float64)

    def update(self, logits: Tensor, targets: Tensor, loss_sum: float | Tensor = 0.0) -> None:
        """Add a batch: ``logits (B, n)``, ``targets (B,)`` and the batch's summed loss."""
        n = len(self.class_names)
        logits = logits.detach().float().cpu()
        targets = targets.detach().cpu()
        k = min(5, n)
        top = logits.topk(k, dim=1).indices  # (B, k)
        self.totals[0] += float(loss_sum)
        self.totals[1] += (top == targets[:, None]).any(dim=1).sum().item()
        pairs = targets * n + top[:, 0]  # (B,) flat index of (target, prediction)
        self.totals[2:] += torch.bincount(pairs, minlength=n * n).double()

    def result(self) -> EvalResult:
        """The metrics of everything added so far.

        Raises:
            ValueError: nothing was added (e.g. every image of the split was unreadable).
        """
        n = len(self.class_names)
        confusion = self.totals[2:].round().long().view(n, n)
        samples = int(confusion.sum())
        if not samples:
            raise ValueError("no image was evaluated: every image of the evaluation split was unreadable or the "
                             "split is empty")
        per_class_total = confusion.sum(1)
        diagonal = confusion.diagonal()
        per_class = [float(c) / float(t) if t else float("nan") for c, t in zip(diagonal, per_class_total, strict=True)]
        return EvalResult(
            samples=samples,
            loss=float(self.totals[0]) / samples,
            top1=float(diagonal.sum()) / samples,
            top5=float(self.totals[1]) / samples,
            per_class=per_class,
            confusion=confusion.tolist(),
            class_names=self.class_names,
        )
