"""DenseNet building blocks: dense layer, dense block, transition and the two stems.

Module and parameter names are torchvision's (``denselayerN.norm1``, ``transitionN.conv``, ``conv0`` …), so
state dicts are interchangeable.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from densenet import tutorial
from densenet.nn import dims as nd
from densenet.nn.block import BlockSpec, DenseBlockFunction, dense_block_forward
from densenet.nn.recompute import batch_norm_relu_pool, imagenet_stem_function


class DenseLayer(nn.Module):
    """One composite function ``H_l`` of a dense block.

    With bottleneck (DenseNet-B): BN-ReLU-Conv1×1 to ``bn_size·k`` maps, then BN-ReLU-Conv3×3 to ``k`` maps.
    Without: BN-ReLU-Conv3×3 straight to ``k`` maps (then ``conv1`` is the 3×3 conv and there is no ``norm2``).
    Dropout with ``drop_rate`` is applied to the ``k`` new maps. In ``spatial_dims`` ``d`` the kernels are
    ``1^d`` and ``3^d`` (:mod:`densenet.nn.dims`).
    """

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int, drop_rate: float,
                 spatial_dims: int = 2) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.growth_rate = growth_rate
        self.drop_rate = float(drop_rate)
        self.norm1 = nd.batch_norm_module(spatial_dims, in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        if bn_size > 0:
            self.conv1 = nd.conv_module(spatial_dims, in_channels, bn_size * growth_rate, kernel_size=1, bias=False)
            self.norm2 = nd.batch_norm_module(spatial_dims, bn_size * growth_rate)
            self.relu2 = nn.ReLU(inplace=True)
            self.conv2 = nd.conv_module(spatial_dims, bn_size * growth_rate, growth_rate, kernel_size=3, padding=1,
                                        bias=False)
        else:
            self.conv1 = nd.conv_module(spatial_dims, in_channels, growth_rate, kernel_size=3, padding=1, bias=False)

    @property
    def bottleneck(self) -> bool:
        """Whether this layer has the 1×1 bottleneck conv."""
        return hasattr(self, "conv2")

    def forward(self, features: Tensor) -> Tensor:
        """``x_l = H_l([x_0, …, x_{l−1}])`` [F2] for the already concatenated input.

        Args:
            features: ``(N, C_0 + l·k, *spatial)``, the concatenation of all earlier maps.

        Returns:
            ``(N, k, *spatial)``, the new maps.
        """
        out = self.conv1(self.relu1(self.norm1(features)))  # (N, bn_size·k or k, *spatial)
        if self.bottleneck:
            out = self.conv2(self.relu2(self.norm2(out)))  # (N, k, *spatial)
        # O = D ⊙ x / (1 − p)   [F6], the same masks as the explicit block draws
        return tutorial.dropout(out, self.drop_rate, self.training)


class DenseBlock(nn.ModuleDict):
    """``L`` dense layers; layer ``l`` sees the concatenation of the block input and all earlier outputs [F2].

    With ``memory_efficient`` the block runs as one autograd Function over a shared feature buffer with the
    hand-written backward of :mod:`densenet.nn.block` (memory linear in depth); otherwise it is the plain autograd
    reference that re-concatenates with ``torch.cat`` before every layer. Both compute the same function.
    """

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, bn_size: int, drop_rate: float,
                 memory_efficient: bool = True, spatial_dims: int = 2) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.growth_rate = growth_rate
        self.drop_rate = float(drop_rate)
        self.out_channels = in_channels + num_layers * growth_rate
        self.memory_efficient = memory_efficient
        for index in range(num_layers):
            layer = DenseLayer(in_channels + index * growth_rate, growth_rate, bn_size, drop_rate, spatial_dims)
            self.add_module(f"denselayer{index + 1}", layer)

    def spec(self) -> BlockSpec:
        """The layers' batch norms and hyperparameters, as the explicit block needs them."""
        layers = list(self.values())
        norms1 = tuple(layer.norm1 for layer in layers)
        norms2 = tuple(layer.norm2 for layer in layers) if layers[0].bottleneck else ()
        if len({norm.eps for norm in norms1}) > 1:
            raise ValueError("the memory-efficient dense block needs one ε for all BN1 of a block")
        # volumes recompute the bottleneck output in the backward (densenet.nn.block)
        return BlockSpec(norms1, norms2, self.growth_rate, self.drop_rate,
                         recompute_bottleneck=nd.norm_dims(norms1[0]) == 3)

    def flat_parameters(self) -> list[Tensor]:
        """Per layer ``γ1, β1, W1`` (+ ``γ2, β2, W2``), the order :class:`DenseBlockFunction` takes them in."""
        params: list[Tensor] = []
        for layer in self.values():
            params += [layer.norm1.weight, layer.norm1.bias, layer.conv1.weight]
            if layer.bottleneck:
                params += [layer.norm2.weight, layer.norm2.bias, layer.conv2.weight]
        return params

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_0, *spatial)`` → ``(N, C_0 + L·k, *spatial)``: ``[x_0, x_1, …, x_L]``."""
        if not self.memory_efficient or capturing_graph():
            return self.reference_forward(x)
        return self.explicit_forward(x)

    @torch.compiler.disable
    def explicit_forward(self, x: Tensor) -> Tensor:
        """The explicit block of :mod:`densenet.nn.block` (opaque to ``torch.compile``, which runs it eagerly).

        Under autocast the activations and conv weights run in the autocast dtype, while the BN parameters and
        batch statistics stay in float32, as autocast's own batch norm does.
        """
        params = self.flat_parameters()
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            # flat_parameters() lists (γ, β, W) triples: every third one is a conv weight
            params = [p.to(dtype) if i % 3 == 2 else p for i, p in enumerate(params)]
            with torch.autocast(device_type, enabled=False):
                return self._run_explicit(x.to(dtype), params)
        return self._run_explicit(x, params)

    def _run_explicit(self, x: Tensor, params: list[Tensor]) -> Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
            return DenseBlockFunction.apply(self.spec(), self.training, x, *params)
        features, _ = dense_block_forward(self.spec(), x, tuple(params), self.training, keep=False)
        return features

    def reference_forward(self, x: Tensor) -> Tensor:
        """Reference implementation of ``x_l = H_l([x_0, …, x_{l−1}])`` [F2]: re-concatenate every earlier map before
        each layer (``torch.cat``).

        Args:
            x: ``(N, C_0, *spatial)``.

        Returns:
            ``(N, C_0 + L·k, *spatial)``: ``[x_0, x_1, …, x_L]``.
        """
        features = [x]
        for layer in self.values():
            # x_l = H_l([x_0, …, x_{l−1}])   [F2]
            features.append(layer(torch.cat(features, dim=1)))  # (N, k, *spatial)
        return torch.cat(features, dim=1)  # (N, C_0 + L·k, *spatial)


class Transition(nn.Module):
    """BN-ReLU-Conv1×1 to ``⌊θ·C⌋`` channels and a 2×2 average pool [F3] (2 in 1D, 2×2×2 in 3D).

    The pool runs before the 1×1 conv: both are linear and act on different axes, so
    ``pool(conv(y)) = conv(pool(y))`` exactly, and the conv then runs on ``1/2^d`` of the pixels. With
    ``memory_efficient`` training, BN-ReLU-pool is one Function that recomputes the ReLU output in backward.
    """

    def __init__(self, in_channels: int, out_channels: int, memory_efficient: bool = True,
                 spatial_dims: int = 2) -> None:
        super().__init__()
        self.memory_efficient = memory_efficient
        self.norm = nd.batch_norm_module(spatial_dims, in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nd.conv_module(spatial_dims, in_channels, out_channels, kernel_size=1, bias=False)
        self.pool = nd.avg_pool_module(spatial_dims, 2, 2)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, *spatial)`` → ``(N, ⌊θ·C⌋, *⌊spatial/2⌋)``."""
        if _recompute(self.memory_efficient, self.training, x, self.norm):
            y = batch_norm_relu_pool(self.norm, x, ("avg", 2, 2, 0))  # (N, C, *spatial/2)
        else:
            # pool(σ(BN(x))), O_ij = (1/PQ) Σ x over each 2×2 window   [F3]
            y = self.pool(self.relu(self.norm(x)))  # (N, C, *spatial/2)
        return self.conv(y)  # (N, ⌊θ·C⌋, *spatial/2)


class Features(nn.Sequential):
    """Stem, dense blocks, transitions and the final BN, under torchvision's names (``conv0``, ``norm0``, …).

    With ``memory_efficient`` training, the ImageNet stem ``conv0``-``norm0``-``relu0``-``pool0`` runs as one
    Function that keeps only the input image and recomputes the rest in backward (:mod:`densenet.nn.recompute`).
    """

    def __init__(self, modules: OrderedDict[str, nn.Module], stem: str, memory_efficient: bool = True) -> None:
        super().__init__(modules)
        self.stem = stem
        self.memory_efficient = memory_efficient

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_chans, *spatial)`` → ``(N, C, *spatial')``, the final BN's output."""
        stem = ("conv0", "norm0", "relu0", "pool0")
        fused = self.stem == "imagenet" and _recompute(self.memory_efficient, self.training, x, self.norm0,
                                                         self.conv0.weight.requires_grad)
        if fused:
            x = imagenet_stem_function(self.conv0, self.norm0, self.pool0, x)
        for name, module in self.named_children():
            if not (fused and name in stem):
                x = module(x)
        return x


def capturing_graph() -> bool:
    """Whether the model is being captured into a graph — FX symbolic tracing (``create_feature_extractor``),
    ``torch.jit.trace`` or ``torch.export`` — rather than run.

    Such graphs hold plain operations; the explicit Functions (a hand-written backward, ``out=`` writes into one
    shared buffer) are opaque to them, so while capturing, every module takes its plain autograd path instead.
    Both paths compute the same function, so the captured graph computes the model's function.
    """
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return torch.jit.is_tracing() or symbolic_tracing() or exporting()


def symbolic_tracing() -> bool:
    """Whether FX is tracing the module with symbolic (``Proxy``) inputs, whose values cannot be inspected."""
    module = torch.fx._symbolic_trace
    return getattr(module, "is_fx_symbolic_tracing", module.is_fx_tracing)()


def _recompute(memory_efficient: bool, training: bool, x: Tensor, norm: nd.BatchNorm,
               other_grad: bool = False) -> bool:
    """Whether BN-ReLU-pool should run as the recomputing Function: memory-efficient training with autograd
    recording something (and the batch norm tracking running statistics, as the Function updates them), and no
    graph being captured."""
    if capturing_graph():
        return False
    wants_grad = x.requires_grad or norm.weight.requires_grad or norm.bias.requires_grad or other_grad
    return memory_efficient and training and torch.is_grad_enabled() and norm.track_running_stats and wants_grad


def imagenet_stem(in_chans: int, num_init_features: int, spatial_dims: int = 2) -> OrderedDict[str, nn.Module]:
    """7×7/2 conv (pad 3) [F1], BN, ReLU, 3×3/2 max-pool (pad 1), each along every axis:
    ``(N, C, *spatial)`` → ``(N, C_0, *spatial/4)``."""
    return OrderedDict(
        conv0=nd.conv_module(spatial_dims, in_chans, num_init_features, kernel_size=7, stride=2, padding=3,
                             bias=False),
        norm0=nd.batch_norm_module(spatial_dims, num_init_features),
        relu0=nn.ReLU(inplace=True),
        pool0=nd.max_pool_module(spatial_dims, 3, 2, 1),
    )


def cifar_stem(in_chans: int, num_init_features: int, spatial_dims: int = 2) -> OrderedDict[str, nn.Module]:
    """One 3×3 conv (pad 1) [F1], no BN after it (the paper's CIFAR models): spatial size unchanged."""
    return OrderedDict(conv0=nd.conv_module(spatial_dims, in_chans, num_init_features, kernel_size=3, padding=1,
                                            bias=False))
