"""Helpers shared by the tests (imported by name: `from helpers import ...`)."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import torch
from safetensors.torch import load_file
from torch import nn

import densenet

M = TypeVar("M", bound=nn.Module)


def randomize_batch_norm(model: M, seed: int = 0) -> M:
    """Draw every batch norm's ``γ, β`` and running ``μ, σ²`` at random, in place; returns ``model``.

    Fresh batch norms are all alike (``γ = 1, β = 0, μ = 0, σ² = 1``), which hides a mixed-up channel, a
    forgotten shift or a sign error. Here ``γ`` takes both signs: about a quarter of the channels get
    ``γ ∈ (−1.5, −0.25]``, a few a near-zero ``|γ| < 0.05`` (the ReLU kink far away), the rest ``γ ∈ [0.25, 1.5)``;
    ``β, μ ~ N(0, 0.3²)`` and ``σ² ∈ [0.5, 2)``. The counters ``num_batches_tracked`` are left alone.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.modules.batchnorm._BatchNorm):
                continue
            shape = module.running_mean.shape
            draw = torch.rand(shape, generator=generator)  # picks each channel's kind of γ
            magnitude = torch.rand(shape, generator=generator) * 1.25 + 0.25  # |γ| ∈ [0.25, 1.5)
            tiny = (torch.rand(shape, generator=generator) - 0.5) * 0.1  # γ ∈ (−0.05, 0.05)
            gamma = torch.where(draw < 0.25, -magnitude, torch.where(draw < 0.3, tiny, magnitude))
            if module.affine:
                module.weight.copy_(gamma)
                module.bias.copy_(torch.randn(shape, generator=generator) * 0.3)
            if module.track_running_stats:
                module.running_mean.copy_(torch.randn(shape, generator=generator) * 0.3)
                module.running_var.copy_(torch.rand(shape, generator=generator) * 1.5 + 0.5)
    return model


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest entry of ``expected``."""
    scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    return ((actual - expected).abs().max() / scale).item()


def small_input_size(name: str) -> int:
    """A small input side the registered model accepts with at least 2×2 final maps."""
    return 32 if densenet.get_config(name).stem == "cifar" else 64


def run_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The final weights a training run saved (``last/model.safetensors``)."""
    return load_file(run_dir / "last" / "model.safetensors")


def assert_same_run_weights(a: Path, b: Path) -> None:
    """Assert two runs ended with bit-identical weights, naming the tensors that differ and by how much."""
    left, right = run_weights(a), run_weights(b)
    assert left.keys() == right.keys()
    different = [key for key in left if not torch.equal(left[key], right[key])]
    largest = max(((left[k].double() - right[k].double()).abs().max().item() for k in different), default=0.0)
    assert not different, f"{len(different)} tensors differ (by up to {largest:.3g}), e.g. {different[:3]}"
