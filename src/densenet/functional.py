"""The tutorial's formulas as code: for each layer type a ``<op>_forward`` / ``<op>_backward`` pair and a
``torch.autograd.Function`` that joins them.

Each docstring quotes the formula it implements with its id (see docs/MATH.md). The backward functions write
the tutorial's formula out where it is a few tensor operations (global average pool, linear, dropout,
softmax with cross-entropy, batch norm, ReLU, max-pool); for convolution and average pooling they call the
PyTorch primitive that computes exactly that quantity (``aten.convolution_backward``,
``aten.avg_pool2d_backward``), which is much faster than an unfold-based rewrite. ``tests/test_functional.py``
checks every pair against autograd with ``torch.autograd.gradcheck`` in float64.

Shapes: ``N`` batch, ``C`` channels, ``H×W`` spatial size, ``K`` classes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx

Pair = tuple[int, int]


def _pair(value: int | Pair) -> Pair:
    return (value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------------
# F1 / F1b: convolution (σ, the ReLU, is relu_forward / relu_backward below)
# ----------------------------------------------------------------------------------------------------------------


def conv2d_forward(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair, padding: Pair) -> Tensor:
    """``O = W ∗ X + b`` [F1]: ``(N, C_in, H, W)`` → ``(N, C_out, H', W')`` with ``H' = ⌊(H − K + 2P)/S⌋ + 1``."""
    # O = W ∗ X + b   [F1]
    return F.conv2d(x, weight, bias, stride, padding)


def conv2d_backward(
    grad_out: Tensor, x: Tensor, weight: Tensor, has_bias: bool, stride: Pair, padding: Pair,
    needs: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``∂L/∂X = Wᵀ ∗ δ``, ``∂L/∂W = X ⋆ δ``, ``∂L/∂b = Σ_{n,i,j} δ`` [F1b], with ``δ = ∂L/∂O``.

    ``Wᵀ ∗ δ`` is the transposed convolution of the incoming gradient with the (flipped) kernel, ``X ⋆ δ``
    the cross-correlation of the input with the incoming gradient. For ``O = σ(W∗X + b)`` pass
    ``δ ⊙ σ'`` (``relu_backward``) as ``grad_out``. Computed by ``aten.convolution_backward``.
    """
    bias_sizes = [weight.shape[0]] if has_bias else None
    dx, dw, db = torch.ops.aten.convolution_backward(
        grad_out, x, weight, bias_sizes, list(stride), list(padding), [1, 1], False, [0, 0], 1,
        [needs[0], needs[1], needs[2] and has_bias],
    )
    return dx, dw, db


class Conv2dFunction(torch.autograd.Function):
    """Autograd wrapper of ``conv2d_forward`` / ``conv2d_backward`` [F1, F1b]."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair,
                padding: Pair) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = (bias is not None, stride, padding)
        return conv2d_forward(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        has_bias, stride, padding = ctx.conv
        dx, dw, db = conv2d_backward(grad_out, x, weight, has_bias, stride, padding, tuple(ctx.needs_input_grad[:3]))
        return dx, dw, db, None, None


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int | Pair = 1,
           padding: int | Pair = 0) -> Tensor:
    """Convolution with the explicit backward [F1, F1b]."""
    return Conv2dFunction.apply(x, weight, bias, _pair(stride), _pair(padding))


# ----------------------------------------------------------------------------------------------------------------
# σ: ReLU
# ----------------------------------------------------------------------------------------------------------------


def relu_forward(x: Tensor) -> Tensor:
    """``σ(x) = max(x, 0)``."""
    return x.clamp_min(0)


def relu_backward(grad_out: Tensor, out: Tensor) -> Tensor:
    """``∂L/∂x = δ ⊙ σ'(x)`` with ``σ'(x) = 1[x > 0]``, read off the output (``out > 0`` iff ``x > 0``)."""
    return grad_out * (out > 0)


class ReLUFunction(torch.autograd.Function):
    """Autograd wrapper of ``relu_forward`` / ``relu_backward``."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor) -> Tensor:
        out = relu_forward(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return relu_backward(grad_out, out)


def relu(x: Tensor) -> Tensor:
    """ReLU with the explicit backward."""
    return ReLUFunction.apply(x)


# ----------------------------------------------------------------------------------------------------------------
# Batch normalisation (the tutorial leaves it out; every H_l starts with it)
# ----------------------------------------------------------------------------------------------------------------


def batch_norm_forward(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Training-mode batch norm over ``(N, H, W)`` for each channel.

    ``μ = (1/M) Σ x``, ``σ² = (1/M) Σ (x − μ)²``, ``x̂ = (x − μ)/√(σ² + ε)``, ``y = γ x̂ + β`` with ``M = N·H·W``.

    Returns:
        ``y`` ``(N, C, H, W)``, the batch mean ``μ`` and ``1/√(σ² + ε)``, both ``(C,)``.
    """
    var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)  # (C,), (C,)
    invstd = torch.rsqrt(var + eps)  # (C,)
    x_hat = (x - mean[:, None, None]) * invstd[:, None, None]  # (N, C, H, W)
    return x_hat * weight[:, None, None] + bias[:, None, None], mean, invstd


def batch_norm_backward(
    grad_out: Tensor, x: Tensor, weight: Tensor, mean: Tensor, invstd: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``∂L/∂β = Σ δ``, ``∂L/∂γ = Σ δ x̂`` and
    ``∂L/∂x = (γ/√(σ² + ε)) · (δ − (1/M)·∂L/∂β − x̂·(1/M)·∂L/∂γ)`` (sums over ``N, H, W``; ``M = N·H·W``)."""
    m = x.numel() // x.shape[1]
    x_hat = (x - mean[:, None, None]) * invstd[:, None, None]  # (N, C, H, W)
    d_bias = grad_out.sum(dim=(0, 2, 3))  # (C,)
    d_weight = (grad_out * x_hat).sum(dim=(0, 2, 3))  # (C,)
    scale = (weight * invstd)[:, None, None]  # (C, 1, 1)
    dx = scale * (grad_out - d_bias[:, None, None] / m - x_hat * (d_weight[:, None, None] / m))
    return dx, d_weight, d_bias


class BatchNorm2dFunction(torch.autograd.Function):
    """Autograd wrapper of the training-mode ``batch_norm_forward`` / ``batch_norm_backward``."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        y, mean, invstd = batch_norm_forward(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        return y

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        dx, d_weight, d_bias = batch_norm_backward(grad_out, x, weight, mean, invstd)
        return dx, d_weight, d_bias, None


def batch_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """Training-mode batch norm with the explicit backward."""
    return BatchNorm2dFunction.apply(x, weight, bias, eps)


# ----------------------------------------------------------------------------------------------------------------
# Max-pool of the ImageNet stem (the tutorial's table leaves it out)
# ----------------------------------------------------------------------------------------------------------------


def max_pool2d_forward(x: Tensor, kernel: Pair, stride: Pair, padding: Pair) -> tuple[Tensor, Tensor]:
    """``O_ij = max over the window of x``; also returns, per output, the flat index ``h·W + w`` of the maximum."""
    return F.max_pool2d(x, kernel, stride, padding, return_indices=True)


def max_pool2d_backward(grad_out: Tensor, indices: Tensor, input_shape: torch.Size) -> Tensor:
    """``∂L/∂x_hw = Σ over the windows whose maximum is x_hw of ∂L/∂O``: each gradient is routed to its argmax
    (scatter-add, since overlapping windows can share a maximum)."""
    n, c, h, w = input_shape
    grad_in = grad_out.new_zeros(n, c, h * w)  # (N, C, H·W)
    grad_in.scatter_add_(2, indices.flatten(2), grad_out.flatten(2))
    return grad_in.view(n, c, h, w)


class MaxPool2dFunction(torch.autograd.Function):
    """Autograd wrapper of ``max_pool2d_forward`` / ``max_pool2d_backward``."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, kernel: Pair, stride: Pair, padding: Pair) -> Tensor:
        out, indices = max_pool2d_forward(x, kernel, stride, padding)
        ctx.save_for_backward(indices)
        ctx.input_shape = x.shape
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        (indices,) = ctx.saved_tensors
        return max_pool2d_backward(grad_out, indices, ctx.input_shape), None, None, None


def max_pool2d(x: Tensor, kernel: int | Pair, stride: int | Pair, padding: int | Pair = 0) -> Tensor:
    """Max-pool with the explicit backward."""
    return MaxPool2dFunction.apply(x, _pair(kernel), _pair(stride), _pair(padding))


# ----------------------------------------------------------------------------------------------------------------
# F3 / F3b: average pool of the transition layers
# ----------------------------------------------------------------------------------------------------------------


def avg_pool2d_forward(x: Tensor, kernel: Pair, stride: Pair, padding: Pair) -> Tensor:
    """``O_ij = (1/PQ) Σ_{p<P, q<Q} x_{S·i+p, S·j+q}`` [F3] over a ``P×Q`` window (zero padding counted)."""
    return F.avg_pool2d(x, kernel, stride, padding)


def avg_pool2d_backward(grad_out: Tensor, x: Tensor, kernel: Pair, stride: Pair, padding: Pair) -> Tensor:
    """``∂L/∂x_hw = Σ over the windows containing x_hw of (1/PQ)·∂L/∂O_ij`` [F3b]: each output's gradient is
    spread evenly, ``1/(PQ)`` to every input of its window. Computed by ``aten.avg_pool2d_backward``."""
    return torch.ops.aten.avg_pool2d_backward(grad_out, x, list(kernel), list(stride), list(padding), False, True,
                                              None)


class AvgPool2dFunction(torch.autograd.Function):
    """Autograd wrapper of ``avg_pool2d_forward`` / ``avg_pool2d_backward`` [F3, F3b]."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, kernel: Pair, stride: Pair, padding: Pair) -> Tensor:
        ctx.save_for_backward(x)
        ctx.pool = (kernel, stride, padding)
        return avg_pool2d_forward(x, kernel, stride, padding)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        return avg_pool2d_backward(grad_out, x, *ctx.pool), None, None, None


def avg_pool2d(x: Tensor, kernel: int | Pair, stride: int | Pair | None = None, padding: int | Pair = 0) -> Tensor:
    """Average pool with the explicit backward [F3, F3b]."""
    return AvgPool2dFunction.apply(x, _pair(kernel), _pair(kernel if stride is None else stride), _pair(padding))


# ----------------------------------------------------------------------------------------------------------------
# F4 / F4b: global average pool
# ----------------------------------------------------------------------------------------------------------------


def global_avg_pool_forward(x: Tensor) -> Tensor:
    """``O_k = (1/HW) Σ_{i,j} x_ijk`` [F4]: ``(N, C, H, W)`` → ``(N, C)``."""
    return x.mean(dim=(2, 3))


def global_avg_pool_backward(grad_out: Tensor, input_shape: torch.Size) -> Tensor:
    """``∂L/∂x_ijk = (1/HW) ∂L/∂O_k`` [F4b]: ``(N, C)`` → ``(N, C, H, W)``."""
    h, w = input_shape[2], input_shape[3]
    # ∂L/∂x_ijk = (1/HW) ∂L/∂O_k, the same for every (i, j)   [F4b]
    return (grad_out / (h * w))[:, :, None, None].expand(input_shape).contiguous()


class GlobalAvgPoolFunction(torch.autograd.Function):
    """Autograd wrapper of ``global_avg_pool_forward`` / ``global_avg_pool_backward`` [F4, F4b]."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor) -> Tensor:
        ctx.input_shape = x.shape
        return global_avg_pool_forward(x)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tensor:
        return global_avg_pool_backward(grad_out, ctx.input_shape)


def global_avg_pool(x: Tensor) -> Tensor:
    """Global average pool with the explicit backward [F4, F4b]."""
    return GlobalAvgPoolFunction.apply(x)


# ----------------------------------------------------------------------------------------------------------------
# F5 / F5b: fully connected
# ----------------------------------------------------------------------------------------------------------------


def linear_forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``O = W x + b`` [F5], for a batch of rows: ``(N, C) @ (K, C)ᵀ + (K,)`` → ``(N, K)``."""
    out = x @ weight.t()  # (N, K)
    return out + bias if bias is not None else out


def linear_backward(
    grad_out: Tensor, x: Tensor, weight: Tensor, has_bias: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``∂L/∂x = Wᵀ δ``, ``∂L/∂W = δ xᵀ``, ``∂L/∂b = δ`` [F5b], summed over the batch for ``W`` and ``b``."""
    # ∂L/∂x = Wᵀδ, ∂L/∂W = δxᵀ, ∂L/∂b = δ   [F5b]
    dx = grad_out @ weight  # (N, C)
    dw = grad_out.t() @ x  # (K, C)
    db = grad_out.sum(dim=0) if has_bias else None  # (K,)
    return dx, dw, db


class LinearFunction(torch.autograd.Function):
    """Autograd wrapper of ``linear_forward`` / ``linear_backward`` [F5, F5b]."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return linear_forward(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        return linear_backward(grad_out, x, weight, ctx.has_bias)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Fully connected layer with the explicit backward [F5, F5b]."""
    return LinearFunction.apply(x, weight, bias)


# ----------------------------------------------------------------------------------------------------------------
# F6 / F6b: dropout (inverted: kept units are scaled by 1/(1 − p) in training, so inference is the identity)
# ----------------------------------------------------------------------------------------------------------------


def dropout_mask(like: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """``D`` of ``O = D ⊙ x / (1 − p)`` [F6]: a boolean mask keeping each unit with probability ``1 − p``."""
    keep = torch.empty(like.shape, device=like.device, dtype=torch.float32)
    return keep.bernoulli_(1.0 - p, generator=generator).bool()


def dropout_forward(x: Tensor, mask: Tensor, p: float) -> Tensor:
    """``O = D ⊙ x / (1 − p)`` [F6] (the tutorial's ``O = D ⊙ x`` with the inverted-dropout scale)."""
    return x * mask / (1.0 - p)


def dropout_backward(grad_out: Tensor, mask: Tensor, p: float) -> Tensor:
    """``∂L/∂x = D ⊙ δ / (1 − p)`` [F6b]."""
    return grad_out * mask / (1.0 - p)


class DropoutFunction(torch.autograd.Function):
    """Autograd wrapper of ``dropout_forward`` / ``dropout_backward`` [F6, F6b] with a given mask."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, mask: Tensor, p: float) -> Tensor:
        ctx.save_for_backward(mask)
        ctx.p = p
        return dropout_forward(x, mask, p)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        (mask,) = ctx.saved_tensors
        return dropout_backward(grad_out, mask, ctx.p), None, None


def dropout(x: Tensor, p: float, training: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Inverted dropout with the explicit backward [F6, F6b]; the identity when not training or ``p = 0``."""
    if not training or p == 0.0:
        return x
    return DropoutFunction.apply(x, dropout_mask(x, p, generator), p)


# ----------------------------------------------------------------------------------------------------------------
# F7 / F7b: softmax with cross-entropy
# ----------------------------------------------------------------------------------------------------------------


def softmax_cross_entropy_forward(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``S_k = e^{O_k} / Σ_j e^{O_j}`` [F7] and ``L = −(1/N) Σ_n Σ_k y_nk log S_nk``.

    Args:
        logits: ``O``, ``(N, K)``.
        target: ``y``, class probabilities ``(N, K)`` (one-hot or smoothed).

    Returns:
        The mean loss (a scalar) and ``S`` ``(N, K)``.
    """
    # log S_k = O_k − log Σ_j e^{O_j}, then L = −(1/N) Σ y log S   [F7]
    log_s = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # (N, K), log S computed stably
    loss = -(target * log_s).sum() / logits.shape[0]
    return loss, log_s.exp()


def softmax_cross_entropy_backward(grad_loss: Tensor, softmax: Tensor, target: Tensor) -> Tensor:
    """``∂L/∂O_k = S_k − y_k`` [F7b] (per sample; ``/N`` for the batch mean), times the incoming ``∂ℓ/∂L``."""
    # ∂L/∂O_k = S_k − y_k   [F7b]
    return grad_loss * (softmax - target) / softmax.shape[0]


class SoftmaxCrossEntropyFunction(torch.autograd.Function):
    """Autograd wrapper of ``softmax_cross_entropy_forward`` / ``_backward`` [F7, F7b]."""

    @staticmethod
    def forward(ctx: FunctionCtx, logits: Tensor, target: Tensor) -> Tensor:
        loss, softmax = softmax_cross_entropy_forward(logits, target)
        ctx.save_for_backward(softmax, target)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
        softmax, target = ctx.saved_tensors
        return softmax_cross_entropy_backward(grad_loss, softmax, target), None


def softmax_cross_entropy(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of ``softmax(logits)`` against class indices ``(N,)`` or probabilities ``(N, K)``."""
    if target.dim() == 1:
        classes = logits.shape[1]
        target = F.one_hot(target, classes).to(logits.dtype) * (1.0 - label_smoothing) + label_smoothing / classes
    return SoftmaxCrossEntropyFunction.apply(logits, target)
