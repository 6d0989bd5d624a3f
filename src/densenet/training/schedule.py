"""The learning-rate schedule: linear warm-up, then step decay (the paper's) or cosine decay, per optimiser step."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from densenet.training.recipe import TrainConfig


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, milestones: list[float],
              gamma: float) -> float:
    """Learning rate of optimiser step ``step`` as a fraction of the peak.

    Linear warm-up over ``warmup_steps``; then ``step``: × ``gamma`` at each milestone (a fraction of
    ``total_steps``; the paper's 0.5 and 0.75), or ``cosine``: ``½(1 + cos(π·t))`` with ``t`` going from 0 to 1
    over the steps after warm-up.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return gamma ** sum(step >= round(m * total_steps) for m in milestones)


def lr_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> LambdaLR:
    """The recipe's schedule over ``config.epochs × steps_per_epoch`` steps, stepped once per optimiser step."""
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:  # a plain function: LambdaLR leaves it out of its state dict
        return lr_factor(step, total, warmup, config.schedule, config.milestones, config.gamma)

    return LambdaLR(optimizer, factor)
