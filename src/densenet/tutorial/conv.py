"""The tutorial's convolution [F1/F1b], the ReLU σ and batch normalisation (which the tutorial's ``H_l`` omits):
each a ``<op>_forward`` / ``<op>_backward`` pair and a ``torch.autograd.Function`` that joins them.

For convolution the backward calls the PyTorch primitive that computes exactly the formula's quantity
(``aten.convolution_backward``); ReLU and batch norm write the formula out. The batch-norm pair here is the
reference a student reads, tested against autograd; training never runs it: it runs the same formula [BN] in
per-channel-affine form from :mod:`densenet.nn.batchnorm`, which ``tests/nn/test_batchnorm.py`` compares with this
one.
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
    """Training-mode batch norm over ``(N, H, W)`` for each channel [BN] (the reference; see
    :func:`batch_norm_backward`).

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
    """The training-mode batch-norm backward [BN], written out: the reference students read.

    ``∂L/∂β = Σ δ``, ``∂L/∂γ = Σ δ x̂`` and
    ``∂L/∂x = (γ/√(σ² + ε)) · (δ − (1/M)·∂L/∂β − x̂·(1/M)·∂L/∂γ)`` (sums over ``N, H, W``; ``M = N·H·W``).

    ``tests/tutorial/test_formulas.py`` checks it against autograd (float64 ``gradcheck``). Training does not call
    it: the explicit Functions run :mod:`densenet.nn.batchnorm`, the same formula as a per-channel affine
    ``a·x + b`` (fused and in place where the dense block shares one buffer), and ``tests/nn/test_batchnorm.py``
    checks that against this function in float64.

    Args:
        grad_out: ``δ = ∂L/∂y``, ``(N, C, H, W)``.
        x: the input, ``(N, C, H, W)``.
        weight: ``γ``, ``(C,)``.
        mean, invstd: the batch's ``μ`` and ``1/√(σ² + ε)``, ``(C,)`` (from :func:`batch_norm_forward`).

    Returns:
        ``∂L/∂x`` ``(N, C, H, W)``, ``∂L/∂γ`` and ``∂L/∂β`` ``(C,)``.
    """
    m = x.numel() // x.shape[1]
    x_hat = (x - mean[:, None, None]) * invstd[:, None, None]  # (N, C, H, W)
    # ∂L/∂β = Σδ, ∂L/∂γ = Σδx̂   [BN]
    d_bias = grad_out.sum(dim=(0, 2, 3))  # (C,)
    d_weight = (grad_out * x_hat).sum(dim=(0, 2, 3))  # (C,)
    scale = (weight * invstd)[:, None, None]  # (C, 1, 1)
    # ∂L/∂x = (γ/√(σ² + ε))·(δ − Σδ/M − x̂·Σδx̂/M)   [BN]
    dx = scale * (grad_out - d_bias[:, None, None] / m - x_hat * (d_weight[:, None, None] / m))  # (N, C, H, W)
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
