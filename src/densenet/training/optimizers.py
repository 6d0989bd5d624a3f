"""The optimiser a recipe names: SGD with (Nesterov) momentum and L2 weight decay, the paper's, or AdamW, Adam with
weight decay decoupled from the gradient (Loshchilov & Hutter), what fine-tuning recipes usually use.

Both decay every parameter, batch-norm scales and shifts and the classifier's bias included, as the paper's SGD
does (``--weight-decay 0`` turns it off)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from densenet.training.recipe import TrainConfig


def make_optimizer(config: TrainConfig, params: Iterable[Any]) -> torch.optim.Optimizer:
    """``config.optimizer`` over ``params`` (tensors, or groups with their own ``lr``).

    SGD: ``v ← μ·v + (g + λ·w)``, ``w ← w − η·(g + λ·w + μ·v)`` with Nesterov, else ``w ← w − η·v``. AdamW:
    ``w ← w − η·λ·w``, then the Adam step ``w ← w − η·m̂/(√v̂ + ε)`` with torch's defaults β = (0.9, 0.999),
    ε = 1e-8.
    """
    assert config.lr is not None and config.weight_decay is not None  # TrainConfig fills them in
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                           weight_decay=config.weight_decay)
