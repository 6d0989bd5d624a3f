"""Prediction over many image files that goes on past unreadable ones: each file yields its
:class:`~densenet.deploy.inference.Prediction` or a :class:`Failed` naming it, in the order given."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from densenet.deploy import inference
from densenet.deploy.inference import Model, Prediction, load_input, preprocessing_of, scored


@dataclass(frozen=True)
class Failed:
    """An input that could not be predicted: the file and why (a message that names it)."""

    path: Path
    reason: str


def predict_each(model: Model, paths: Sequence[str | Path], k: int = 5,
                 batch_size: int = 64) -> Iterator[Prediction | Failed]:
    """For each of ``paths``, in order, its top-``k`` classes [F7] (multi-label: every label and the positives,
    :func:`~densenet.deploy.inference.scored`), or :class:`Failed` when it cannot be read; the
    readable images of each ``batch_size`` files run through the network together."""
    if k < 1 or batch_size < 1:
        raise ValueError(f"k and batch_size must be at least 1, got {k} and {batch_size}")
    preprocessing = preprocessing_of(model)
    device = next(model.parameters()).device
    model.eval()
    for start in range(0, len(paths), batch_size):
        chunk = [Path(path) for path in paths[start:start + batch_size]]
        images, readable, failed = [], [], {}
        for path in chunk:
            try:
                images.append(load_input(path, preprocessing))  # (C, *spatial)
                readable.append(path)
            except (ValueError, OSError) as error:  # corrupt, truncated, or gone since it was listed
                failed[path] = Failed(path, str(error))
        logits = inference.run_model(model, torch.stack(images).to(device)) if images else None  # the one place it runs
        rows = scored(logits, k, model.meta) if logits is not None else []
        predicted = {path: Prediction(path, *row) for path, row in zip(readable, rows, strict=True)}
        for path in chunk:
            yield failed[path] if path in failed else predicted[path]
