"""Early stopping: a run ends when its evaluation score (the task's: top-1 ``eval_acc``, or mean AUROC
``eval_mean_auroc`` for multi-label) has not improved for ``patience`` epochs.

Read off the history of epoch rows, which the checkpoint keeps, so a resumed run counts the same.
"""

from __future__ import annotations

from collections.abc import Sequence


def epochs_without_improvement(history: Sequence[dict[str, float]], key: str = "eval_acc") -> int:
    """Epochs since the best ``key`` so far (the first epoch that reached it); 0 for an empty history."""
    if not history:
        return 0
    values = [row[key] for row in history]
    best = values.index(max(values))
    return len(values) - 1 - best


def should_stop(history: Sequence[dict[str, float]], patience: int | None, key: str = "eval_acc") -> bool:
    """Whether ``patience`` epochs passed without a better ``key`` (never without ``patience``)."""
    return patience is not None and epochs_without_improvement(history, key) >= patience
