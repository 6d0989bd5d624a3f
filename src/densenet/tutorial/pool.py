"""Pooling: the ImageNet stem's max-pool (the tutorial's table leaves it out), the transitions' average pool
[F3/F3b] and the global average pool [F4/F4b], each a forward/backward pair and an autograd Function."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx

from densenet.tutorial.conv import Pair, _pair

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
