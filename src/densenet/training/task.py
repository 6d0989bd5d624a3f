"""What the engine asks of the kind of problem it trains: the seam between the engine and single-label
(softmax, cross-entropy, top-1) or multi-label (sigmoids, masked BCE, AUROC) classification.

A :class:`Task` gives the training loss (``criterion``), the accuracy count of a training batch, an evaluation
accumulator, the evaluation's columns of ``metrics.csv``, the number the best checkpoint is chosen by, and what the
saved weights carry from an evaluation (the multi-label thresholds). The engine, the loop and ``eval`` call these
and never branch on the task themselves.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densenet.data.csv_table import label_matrix
from densenet.data.images import Split
from densenet.meta import MULTI_LABEL, SINGLE_LABEL, ModelMeta
from densenet.training import distributed
from densenet.training.distributed import Context
from densenet.training.metrics import Accumulator, EvalResult
from densenet.training.multilabel import (
    MaskedBCE,
    MultiLabelAccumulator,
    MultiLabelResult,
    correct_labels,
    positive_weights,
)

logger = logging.getLogger("densenet")

Result = EvalResult | MultiLabelResult


class TaskAccumulator(Protocol):
    """Evaluation over batches: add batches, combine the processes' shares, compute the result."""

    def update(self, logits: Tensor, targets: Tensor) -> None: ...

    def reduce(self, context: Context) -> None: ...

    def result(self) -> Any: ...


class Task(Protocol):
    """The parts of training and evaluation that depend on the kind of problem."""

    name: str
    metric_name: str  # what :meth:`score` is, for the log
    score_column: str  # the ``metrics.csv`` column holding :meth:`score`, which early stopping reads
    criterion: nn.Module

    def correct(self, logits: Tensor, targets: Tensor) -> Tensor: ...

    def accumulator(self, class_names: Sequence[str]) -> TaskAccumulator: ...

    def eval_row(self, result: Any) -> dict[str, float]: ...

    def score(self, result: Any) -> float: ...

    def saved_meta(self, meta: ModelMeta, result: Any) -> ModelMeta: ...


class _SingleLabelAccumulator:
    def __init__(self, class_names: Sequence[str]) -> None:
        self.inner = Accumulator(list(class_names))

    def update(self, logits: Tensor, targets: Tensor) -> None:
        self.inner.update(logits, targets, F.cross_entropy(logits, targets, reduction="sum"))

    def reduce(self, context: Context) -> None:
        self.inner.totals = distributed.all_reduce(self.inner.totals, context)

    def result(self) -> EvalResult:
        return self.inner.result()


class SingleLabel:
    """One class per image: softmax cross-entropy (with label smoothing), top-1 / top-5; best by top-1."""

    name = SINGLE_LABEL
    metric_name = "top-1"
    score_column = "eval_acc"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.criterion: nn.Module = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def correct(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Images whose highest logit is their class."""
        return (logits.argmax(1) == targets).sum()

    def accumulator(self, class_names: Sequence[str]) -> _SingleLabelAccumulator:
        return _SingleLabelAccumulator(class_names)

    def eval_row(self, result: EvalResult) -> dict[str, float]:
        return {"eval_loss": result.loss, "eval_acc": result.top1, "eval_top5": result.top5}

    def score(self, result: EvalResult) -> float:
        return result.top1

    def saved_meta(self, meta: ModelMeta, result: EvalResult) -> ModelMeta:
        return meta


class _MultiLabelGatherer(MultiLabelAccumulator):
    def reduce(self, context: Context) -> None:
        self.gathered(distributed.gather(self.parts(), context))


class MultiLabel:
    """Independent labels per image (:mod:`~densenet.training.multilabel`): masked BCE, per-label AUROC and AP;
    best by mean AUROC; the validation's max-F1 thresholds are saved with the weights."""

    name = MULTI_LABEL
    metric_name = "mean AUROC"
    score_column = "eval_mean_auroc"

    def __init__(self, pos_weight: Tensor | None = None) -> None:
        self.criterion: nn.Module = MaskedBCE(pos_weight)

    def correct(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The batch's label accuracy at 0.5 times its images (:func:`~densenet.training.multilabel.correct_labels`)."""
        return correct_labels(logits, targets)

    def accumulator(self, class_names: Sequence[str]) -> _MultiLabelGatherer:
        return _MultiLabelGatherer(class_names)

    def eval_row(self, result: MultiLabelResult) -> dict[str, float]:
        """``eval_loss``, ``eval_acc`` (label accuracy at 0.5), ``eval_top5`` (``nan``: not defined), the means and
        ``eval_auroc/<label>``, ``eval_ap/<label>``."""
        row = {"eval_loss": result.loss, "eval_acc": result.accuracy, "eval_top5": math.nan,
               "eval_mean_auroc": result.mean_auroc, "eval_mean_ap": result.mean_ap}
        for name, auroc, ap in zip(result.class_names, result.auroc, result.ap, strict=True):
            row[f"eval_auroc/{name}"] = auroc
            row[f"eval_ap/{name}"] = ap
        return row

    def score(self, result: MultiLabelResult) -> float:
        """Mean AUROC (0 while no label has one, so that the first epoch still saves ``best/``)."""
        return 0.0 if math.isnan(result.mean_auroc) else result.mean_auroc

    def saved_meta(self, meta: ModelMeta, result: MultiLabelResult) -> ModelMeta:
        """The meta with the task and this evaluation's thresholds."""
        return meta.replace(task=MULTI_LABEL, thresholds=tuple(result.thresholds))


def task_of(meta: ModelMeta) -> Task:
    """The task of saved weights (for ``eval``): single-label, or multi-label without positive weights."""
    return MultiLabel() if meta.task == MULTI_LABEL else SingleLabel()


def task_for(train_split: Split, class_names: Sequence[str], pos_weight: str, label_smoothing: float,
             announce: bool = True) -> Task:
    """The task of a training split: multi-label when its targets are label vectors (a CSV with label columns),
    else single-label; ``announce`` logs a multi-label task's labels, unknown share and positive weights.

    Raises:
        ValueError: ``pos_weight`` on single-label data, label smoothing on multi-label data, or ``auto`` positive
            weights for a label without known positives or negatives.
    """
    labels = label_matrix(train_split)  # (N, L) or None
    if labels is None:
        if pos_weight != "none":
            raise ValueError("--pos-weight applies to multi-label data (a CSV with label columns), not to "
                             "single-label classes")
        return SingleLabel(label_smoothing)
    if label_smoothing:
        raise ValueError("--label-smoothing applies to single-label classes, not to multi-label data")
    weights = positive_weights(labels, class_names) if pos_weight == "auto" else None
    unknown = float(torch.isnan(labels).float().mean()) if labels.numel() else 0.0
    if announce:
        logger.info("multi-label: %d labels, one sigmoid each, masked BCE (%.1f%% of the training labels unknown)%s",
                    len(class_names), 100 * unknown, "" if weights is None else ", positive weights " + ", ".join(
                        f"{name} {w:.2f}" for name, w in zip(class_names, weights.tolist(), strict=True)))
    return MultiLabel(weights)
