"""The dense block as it is written into an ONNX file: concatenate every few layers, not before every layer.

ONNX has no shared buffer, so a layer's input ``[x_0, …, x_{l−1}]`` is a ``Concat`` — and ONNX Runtime runs each
``Concat`` on one thread, a copy of the whole input per layer (a memory-bound share of the forward pass that does
no arithmetic; benchmarks/NOTES.md has the profile). Because BN-ReLU acts per channel and a convolution is linear in
its input channels (zero padding included), a layer can take its input in parts instead [F2]:

    W ∗ σ(BN([a; b])) = W_a ∗ σ(BN_a(a)) + W_b ∗ σ(BN_b(b))

(``W_a, BN_a``: the weight's input channels and the BN's channels that belong to ``a``). :class:`PartsDenseBlock`
keeps ``base``, the maps concatenated so far, and the few maps made since; every ``concat_every`` layers they are
concatenated into a new ``base``. Each layer in between runs its first convolution once on ``base`` and once per
recent map, summed (ONNX Runtime fuses each sum into the convolution). The 1×1 conv's BN2 is folded into it, as
the sum stands between them.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densenet.deploy.folding import fold_batch_norm
from densenet.model import DenseNet
from densenet.nn.dims import conv
from densenet.nn.layers import DenseBlock, DenseLayer

CONCAT_EVERY = 4
"""Layers per concatenation. Fewer concatenations copy less, but each layer between two of them runs its first
convolution once more per map kept apart; on densenet121 under ONNX Runtime every 2 to 8 layers measured alike and
faster than concatenating before every layer, and never concatenating inside a block slower (the numbers:
benchmarks/NOTES.md, v5)."""


class PartsDenseLayer(nn.Module):
    """One eval-mode dense layer that takes its input as a list of channel parts:
    ``x_l = H_l([p_1; …; p_m])`` computed as ``Σ_i W1_i ∗ σ(BN1_i(p_i))`` [F2], then (bottleneck)
    ``W2 ∗ σ(· + b1)`` with BN2 folded into ``W1, b1``."""

    def __init__(self, layer: DenseLayer) -> None:
        super().__init__()
        norm = layer.norm1
        self.eps = norm.eps
        for name in ("running_mean", "running_var", "weight", "bias"):
            self.register_buffer(f"norm1_{name}", getattr(norm, name).detach().clone())  # (C_in,)
        self.padding = layer.conv1.padding
        if layer.bottleneck:
            weight1, bias1 = fold_batch_norm(layer.conv1.weight, layer.norm2)  # BN2(W1 ∗ y) = W1' ∗ y + b1
            self.register_buffer("weight1", weight1)  # (bn_size·k, C_in, 1, 1)
            self.register_buffer("bias1", bias1)  # (bn_size·k,)
            self.register_buffer("weight2", layer.conv2.weight.detach().clone())  # (k, bn_size·k, 3, 3)
        else:
            self.register_buffer("weight1", layer.conv1.weight.detach().clone())  # (k, C_in, 3, 3)
            self.bias1 = None
            self.weight2 = None

    def forward(self, parts: list[Tensor]) -> Tensor:
        """Parts ``(N, C_i, *spatial)``, at least one, with ``Σ C_i = C_in``, in channel order → ``(N, k, *spatial)``
        (any spatial dimension: ``F.conv{d}d`` by the kernel's)."""
        out = self._conv1_term(parts[0], 0, self.bias1)
        start = parts[0].shape[1]
        for part in parts[1:]:
            out = out + self._conv1_term(part, start, None)  # Σ_i W1_i ∗ σ(BN1_i(p_i))
            start += part.shape[1]
        if self.weight2 is None:
            return out  # (N, k, *spatial)
        return conv(F.relu(out), self.weight2, None, padding=1)  # (N, k, *spatial)

    def _conv1_term(self, part: Tensor, start: int, bias: Tensor | None) -> Tensor:
        """``W1_i ∗ σ(BN1_i(p_i)) (+ b1)`` for the part whose channels begin at ``start``."""
        end = start + part.shape[1]
        activated = F.relu(F.batch_norm(part, self.norm1_running_mean[start:end], self.norm1_running_var[start:end],
                                        self.norm1_weight[start:end], self.norm1_bias[start:end], False, 0.0,
                                        self.eps))
        return conv(activated, self.weight1[:, start:end], bias, padding=self.padding)


class PartsDenseBlock(nn.Module):
    """An eval-mode dense block that concatenates its maps every ``concat_every`` layers (module docstring)."""

    def __init__(self, block: DenseBlock, concat_every: int = CONCAT_EVERY) -> None:
        super().__init__()
        if concat_every < 1:
            raise ValueError(f"concat_every must be at least 1, got {concat_every}")
        self.concat_every = concat_every
        self.layers = nn.ModuleList(PartsDenseLayer(layer) for layer in block.values())

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_0, *spatial)`` → ``(N, C_0 + L·k, *spatial)``: ``[x_0, x_1, …, x_L]``."""
        base, recent = x, []  # base = [x_0, …, x_j] concatenated; recent = [x_{j+1}, …], kept apart
        for index, layer in enumerate(self.layers):
            if recent and index % self.concat_every == 0:
                base, recent = torch.cat([base, *recent], dim=1), []
            recent.append(layer([base, *recent]))  # x_l = H_l([x_0, …, x_{l−1}])   [F2]
        return torch.cat([base, *recent], dim=1)


def onnx_graph(model: DenseNet, concat_every: int = CONCAT_EVERY) -> DenseNet:
    """An eval-mode copy of ``model`` whose dense blocks are :class:`PartsDenseBlock` s (the same function)."""
    graph = copy.deepcopy(model).eval()
    features = graph.features
    for name, module in list(features.named_children()):
        if isinstance(module, DenseBlock):
            setattr(features, name, PartsDenseBlock(module, concat_every))
    return graph
