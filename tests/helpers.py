"""Helpers shared by the tests (imported by name: `from helpers import ...`)."""

from __future__ import annotations

import torch
from torch import nn

import densenet
from densenet.deploy.bench import trained_like


def randomize_batch_norm(model: nn.Module, seed: int = 0) -> None:
    """Give every batch norm non-trivial affine parameters and running statistics."""
    trained_like(model, seed)


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest entry of ``expected``."""
    scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    return ((actual - expected).abs().max() / scale).item()


def small_input_size(name: str) -> int:
    """A small input side the registered model accepts with at least 2×2 final maps."""
    return 32 if densenet.get_config(name).stem == "cifar" else 64
