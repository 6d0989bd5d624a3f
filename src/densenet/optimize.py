"""Inference-time optimisation: :func:`optimize_for_inference` turns a trained :class:`DenseNet` into an
:class:`OptimizedDenseNet` that computes the same eval-mode function faster.

What changes (the weights' function does not):

- every batch norm is frozen into a per-channel affine ``a·x + b`` (``a = γ/√(σ²+ε)``, ``b = β − μ·a``);
- a batch norm that directly follows a convolution is folded into it: ``BN(W∗x) = (a·W)∗x + b`` — the stem's
  ``norm0`` into ``conv0`` and each bottleneck's ``norm2`` into ``conv1``;
- each dense block writes its layers' maps into one preallocated buffer instead of re-concatenating;
- transitions average-pool before their 1×1 conv (both linear: they commute), a quarter of the MACs;
- activations are channels-last, and on CPU the convolutions run through oneDNN with the bias and the ReLU fused
  into the convolution (``mkldnn._convolution_pointwise``); elsewhere (CUDA) a plain conv and an in-place ReLU;
- the large intermediate tensors (each block's buffer, the BN-ReLU scratch) are kept between calls, per thread
  and input shape, instead of being allocated afresh: fresh pages cost a page fault each on first touch, which
  measured ~10% of a forward pass here when other work had churned the heap in between.
"""

from __future__ import annotations

import copy
import threading

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densenet.batchnorm import PER_CHANNEL, affine_relu, running_affine
from densenet.layers import DenseBlock, Transition
from densenet.model import DenseNet, check_input

_FUSED_CONV = hasattr(torch.ops.mkldnn, "_convolution_pointwise") and torch.backends.mkldnn.is_available()
_FUSED_DTYPES = (torch.float32, torch.bfloat16)  # what oneDNN's fused convolution takes


def batch_norm_affine(norm: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode BN as ``a·x + b``: ``a = γ/√(σ²+ε)``, ``b = β − μ·a`` (running statistics), as per-channel
    ``(C, 1, 1)`` views that broadcast over ``(N, C, H, W)``."""
    scale, shift, _, _ = running_affine(norm, norm.weight.detach(), norm.bias.detach())
    return scale.view(PER_CHANNEL), shift.view(PER_CHANNEL)


def fold_batch_norm(weight: Tensor, norm: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """``BN(W ∗ x) = (a·W) ∗ x + b`` for a bias-free conv followed by an eval-mode BN: the folded weight and bias."""
    scale, shift = batch_norm_affine(norm)
    return weight.detach() * scale.unsqueeze(1), shift.flatten()


def conv(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int = 1, padding: int = 0,
         relu: bool = False) -> Tensor:
    """``σ(W ∗ x + b)`` (σ optional) — one fused oneDNN call on CPU in float32/bfloat16, conv then in-place ReLU
    otherwise (CUDA, float64)."""
    if _FUSED_CONV and x.device.type == "cpu" and x.dtype in _FUSED_DTYPES:
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, [padding] * 2, [stride] * 2, [1, 1], 1,
                                                       "relu" if relu else "none", [], "")
    out = F.conv2d(x, weight, bias, stride, padding)
    return out.relu_() if relu else out


class Workspace:
    """Named scratch tensors kept between calls, one set per thread; a set is rebuilt when a request's size,
    dtype or device changes. Safe because an inference module's intermediates never leave its forward."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, name: str, numel: int, like: Tensor) -> Tensor:
        """A flat tensor of ``numel`` elements with ``like``'s dtype and device (contents undefined)."""
        tensors = self._local.__dict__.setdefault("tensors", {})
        tensor = tensors.get(name)
        if tensor is None or tensor.numel() != numel or tensor.dtype != like.dtype or tensor.device != like.device:
            tensor = tensors[name] = like.new_empty(numel)
        return tensor


class FrozenDenseBlock(nn.Module):
    """A dense block for inference: ``σ(a·x + b)`` per layer, the folded bottleneck conv with fused ReLU, the 3×3
    conv, all writing into one channels-last buffer [F2]."""

    def __init__(self, block: DenseBlock) -> None:
        super().__init__()
        self.growth_rate = block.growth_rate
        self.bottleneck = next(iter(block.values())).bottleneck
        self.num_layers = len(block)
        self.workspace = Workspace()
        for index, layer in enumerate(block.values()):
            scale, shift = batch_norm_affine(layer.norm1)
            self.register_buffer(f"scale{index}", scale)
            self.register_buffer(f"shift{index}", shift)
            if self.bottleneck:
                weight1, bias1 = fold_batch_norm(layer.conv1.weight, layer.norm2)
                self.register_buffer(f"weight1_{index}", weight1)
                self.register_buffer(f"bias1_{index}", bias1)
                self.register_buffer(f"weight2_{index}", layer.conv2.weight.detach().clone())
            else:
                self.register_buffer(f"weight1_{index}", layer.conv1.weight.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_0, H, W)`` → ``(N, C_0 + L·k, H, W)`` (channels-last strides)."""
        n, c0, h, w = x.shape
        k = self.growth_rate
        total = c0 + self.num_layers * k
        buffer = self.workspace.get("buffer", n * h * w * total, x).view(n, h, w, total)  # [x_0, …, x_L]
        features = buffer.permute(0, 3, 1, 2)  # (N, C_0 + L·k, H, W) view
        features[:, :c0].copy_(x)
        scratch = self.workspace.get("scratch", n * h * w * (total - k), x)
        for index in range(self.num_layers):
            channels = c0 + index * k
            # r = σ(BN1([x_0, …, x_{l−1}])), into a channels-last scratch
            relu = scratch[:n * h * w * channels].view(n, h, w, channels).permute(0, 3, 1, 2)
            affine_relu(features[:, :channels], getattr(self, f"scale{index}"), getattr(self, f"shift{index}"),
                        out=relu)
            if self.bottleneck:
                # σ(BN2(W1 ∗ r)) = σ(W1' ∗ r + b1'): BN2 folded into the 1×1 conv, ReLU fused
                hidden = conv(relu, getattr(self, f"weight1_{index}"), getattr(self, f"bias1_{index}"), relu=True)
                new = conv(hidden, getattr(self, f"weight2_{index}"), None, padding=1)  # (N, k, H, W)
            else:
                new = conv(relu, getattr(self, f"weight1_{index}"), None, padding=1)  # (N, k, H, W)
            features[:, channels:channels + k].copy_(new)
        return features


class FrozenTransition(nn.Module):
    """``conv1×1(pool(σ(a·x + b)))``: the eval-mode transition with the pool first [F3]."""

    def __init__(self, transition: Transition) -> None:
        super().__init__()
        scale, shift = batch_norm_affine(transition.norm)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)
        self.register_buffer("weight", transition.conv.weight.detach().clone())
        self.workspace = Workspace()

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` → ``(N, ⌊θ·C⌋, ⌊H/2⌋, ⌊W/2⌋)``."""
        n, c, h, w = x.shape
        relu = self.workspace.get("relu", x.numel(), x).view(n, h, w, c).permute(0, 3, 1, 2)
        pooled = F.avg_pool2d(affine_relu(x, self.scale, self.shift, out=relu), 2)  # (N, C, H/2, W/2)
        return conv(pooled, self.weight, None)


class OptimizedDenseNet(nn.Module):
    """The eval-mode function of a :class:`DenseNet`, for inference only (no training, no autograd).

    Carries the source model's ``config``, ``class_names``, ``preprocessing`` and ``name``. Built by
    :func:`optimize_for_inference`.
    """

    def __init__(self, model: DenseNet, channels_last: bool = True) -> None:
        super().__init__()
        self.config = model.config
        self.class_names = model.class_names
        self.preprocessing = model.preprocessing
        self.name = getattr(model, "name", None)
        self.channels_last = channels_last
        features = model.features
        self.imagenet_stem = "pool0" in features._modules
        if self.imagenet_stem:
            weight0, bias0 = fold_batch_norm(features.conv0.weight, features.norm0)
        else:
            weight0, bias0 = features.conv0.weight.detach().clone(), None
        self.register_buffer("weight0", weight0)
        self.register_buffer("bias0", bias0)
        self.stages = nn.ModuleList(
            FrozenDenseBlock(module) if isinstance(module, DenseBlock) else FrozenTransition(module)
            for module in features.children() if isinstance(module, (DenseBlock, Transition))
        )
        scale5, shift5 = batch_norm_affine(features.norm5)
        self.register_buffer("scale5", scale5)
        self.register_buffer("shift5", shift5)
        self.classifier = copy.deepcopy(model.classifier).requires_grad_(False)

    @torch.no_grad()
    def forward_features(self, x: Tensor) -> Tensor:
        """``(N, in_chans, H, W)`` → ``(N, C, h, w)``, after the final BN-ReLU."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.imagenet_stem:
            # σ(BN0(W0 ∗ x)) = σ(W0' ∗ x + b0'), then the 3×3/2 max-pool
            x = F.max_pool2d(conv(x, self.weight0, self.bias0, stride=2, padding=3, relu=True), 3, 2, 1)
        else:
            x = conv(x, self.weight0, None, padding=1)
        for stage in self.stages:
            x = stage(x)
        return affine_relu(x, self.scale5, self.shift5)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_chans, H, W)`` → logits ``(N, num_classes)``."""
        check_input(self.config, x)
        # O_k = (1/HW) Σ_ij x_ijk   [F4], then O = Wx + b   [F5]
        return self.classifier(self.forward_features(x).mean(dim=(2, 3)))


def optimize_for_inference(model: DenseNet, channels_last: bool = True) -> OptimizedDenseNet:
    """A faster model computing ``model.eval()``'s function (logits within float32 rounding, ≤ 1e-4 relative).

    Args:
        model: a trained :class:`DenseNet` (its training-mode behaviour, dropout and batch statistics, is dropped).
        channels_last: run activations channels-last (fastest with oneDNN and cuDNN).
    """
    if not isinstance(model, DenseNet):
        raise TypeError(f"optimize_for_inference expects a densenet.DenseNet, got {type(model).__name__}")
    reference = model.features.conv0.weight
    return OptimizedDenseNet(model, channels_last).to(device=reference.device, dtype=reference.dtype)
