"""One network for 1, 2 and 3 spatial dimensions: the layer and functional choices made by ``d = spatial_dims``.

Every part of DenseNet is the same in each dimension — a kernel ``K`` becomes ``K`` (1D), ``K×K`` (2D) or
``K×K×K`` (3D), a stride and a padding likewise — so the modules and the explicit Functions take ``d`` and pick
``nn.Conv{d}d``, ``nn.BatchNorm{d}d``, ``F.conv{d}d`` and the pools here, and read ``d`` off a tensor as
``x.dim() − 2``. Batch norm reduces over every non-channel axis, ``M = N·∏ spatial`` values per channel, which is
what ``native_batch_norm`` does for any ``d``.

Channels-last: the dense block's buffer is ``(M, C)`` rows in every dimension (logically ``(N, C, *spatial)``
with the channel stride 1). For other tensors :func:`channels_last` gives the same layout — through
``torch.channels_last`` (2D) and ``torch.channels_last_3d`` (3D), by moving the channel axis for 1D, which has no
memory format of its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densenet.nn import tiled_pool

Size = int | tuple[int, ...]

_CONV_MODULES: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_NORM_MODULES: dict[int, type[nn.Module]] = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_AVG_POOL_MODULES: dict[int, type[nn.Module]] = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_MAX_POOL_MODULES: dict[int, type[nn.Module]] = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_GLOBAL_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
_FORMATS = {2: torch.channels_last, 3: torch.channels_last_3d}

ConvModule = nn.modules.conv._ConvNd
BatchNorm = nn.modules.batchnorm._BatchNorm


def conv_module(dims: int, *args: object, **kwargs: object) -> nn.Module:
    """``nn.Conv{d}d(*args, **kwargs)`` — torchvision's ``nn.Conv2d`` for images."""
    return _CONV_MODULES[dims](*args, **kwargs)


def batch_norm_module(dims: int, channels: int) -> nn.Module:
    """``nn.BatchNorm{d}d(channels)``."""
    return _NORM_MODULES[dims](channels)


def avg_pool_module(dims: int, kernel: int, stride: int) -> nn.Module:
    """``nn.AvgPool{d}d(kernel, stride)``."""
    return _AVG_POOL_MODULES[dims](kernel_size=kernel, stride=stride)


def max_pool_module(dims: int, kernel: int, stride: int, padding: int) -> nn.Module:
    """``nn.MaxPool{d}d(kernel, stride, padding)``."""
    return _MAX_POOL_MODULES[dims](kernel_size=kernel, stride=stride, padding=padding)


def norm_dims(norm: nn.Module) -> int:
    """``d`` of a ``nn.BatchNorm{d}d``."""
    return next(dims for dims, kind in _NORM_MODULES.items() if type(norm) is kind)


def spatial_dims(x: Tensor) -> int:
    """``d`` of an ``(N, C, *spatial)`` tensor."""
    return x.dim() - 2


def conv(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Size = 1, padding: Size = 0) -> Tensor:
    """``O = W ∗ X + b`` [F1] in ``d`` dimensions: ``F.conv{d}d`` (``d`` from the kernel ``(C_out, C_in, *K)``)."""
    # O = W ∗ X + b   [F1]
    return _CONV[weight.dim() - 2](x, weight, bias, stride, padding)


def conv_backward(
    grad_out: Tensor, x: Tensor, weight: Tensor, has_bias: bool, stride: Size, padding: Size,
    needs: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``∂L/∂X = Wᵀ ∗ δ``, ``∂L/∂W = X ⋆ δ``, ``∂L/∂b = Σ δ`` [F1b] in ``d`` dimensions, by
    ``aten.convolution_backward`` — the N-D form of the tutorial's 2D ``conv2d_backward``."""
    dims = weight.dim() - 2
    bias_sizes = [weight.shape[0]] if has_bias else None
    return torch.ops.aten.convolution_backward(
        grad_out, x, weight, bias_sizes, _expand(stride, dims), _expand(padding, dims), [1] * dims, False,
        [0] * dims, 1, [needs[0], needs[1], needs[2] and has_bias])


def avg_pool(x: Tensor, kernel: int, stride: int, padding: int = 0) -> Tensor:
    """``O = (1/K^d) Σ x`` over each ``K^d`` window [F3]. A channels-last volume on a CPU with ``stride = K`` and
    no padding (the transitions'): :mod:`densenet.nn.tiled_pool`. ATen has no CPU ``avg_pool3d`` in bf16 or float16:
    another such volume is pooled in float32 and each mean rounded once to its dtype."""
    # O = (1/K^d) Σ x over the window   [F3]
    if spatial_dims(x) == 3 and tiled_pool.applies(x, (kernel,) * 3, (stride,) * 3, (padding,) * 3):
        return tiled_pool.avg_pool(x, kernel)
    if spatial_dims(x) == 3 and x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16):
        return F.avg_pool3d(x.float(), kernel, stride, padding).to(x.dtype)
    return _AVG_POOL[spatial_dims(x)](x, kernel, stride, padding)


def max_pool(x: Tensor, kernel: int, stride: int, padding: int = 0) -> Tensor:
    """The maximum over each ``K^d`` window."""
    return _MAX_POOL[spatial_dims(x)](x, kernel, stride, padding)


def global_avg_pool(x: Tensor, dims: int) -> Tensor:
    """``O_c = (1/|S|) Σ_s x_cs`` over all spatial positions [F4]: ``(N, C, *spatial)`` → ``(N, C)``.

    ``dims`` is given, not read off ``x``: under FX symbolic tracing ``x.dim()`` is a symbol.
    """
    # O_k = (1/HW) Σ_ij x_ijk, over every spatial axis   [F4]
    return _GLOBAL_POOL[dims](x, 1).flatten(1)


def pool_backward(grad_out: Tensor, x: Tensor, kind: str, kernel: Size, stride: Size, padding: Size,
                  out: Tensor | None = None, through_relu: bool = False) -> Tensor:
    """The pool's backward: ``1/K^d`` of each output's gradient to every input of its window for the average pool
    [F3b]; to the argmax of its window (recomputed) for the max-pool. 1D runs as 2D with a unit height.

    ``out`` (max-pool only; of ``x``'s shape and layout, and it may be ``x`` itself, whose argmax is taken before
    it is written) receives the gradient instead of a new tensor. The average pool takes none: torch 2.14's
    ``avg_pool3d_backward`` writes wrong values into a channels-last ``out``.

    ``through_relu`` (max-pool only): ``x = σ(u)`` is a ReLU's output and the gradient wanted is ``∂L/∂u``, i.e.
    also through σ: ``δ_i = 1[x_i > 0]·Σ_{o: argmax(o) = i} g_o``. An output's maximum is the value at its argmax,
    so ``1[x_i > 0] = 1[pool(x)_o > 0]`` for every ``o`` sending to ``i``, and σ' is applied to the pooled gradient
    before it is scattered: on a map ``stride^d`` times smaller than ``x``, and without a mask of ``x``'s size."""
    if spatial_dims(x) == 1:
        grad = pool_backward(grad_out.unsqueeze(2), x.unsqueeze(2), kind, (1, kernel), (1, stride), (0, padding),
                             None if out is None else out.unsqueeze(2), through_relu)
        return grad.squeeze(2)
    dims = spatial_dims(x)
    kernel, stride, padding = (_expand(v, dims) for v in (kernel, stride, padding))
    if kind == "avg":
        # each output's gradient spread 1/K^d to every input of its window   [F3b]
        backward = torch.ops.aten.avg_pool2d_backward if dims == 2 else torch.ops.aten.avg_pool3d_backward
        if out is not None or through_relu:
            raise ValueError("the average pool's backward takes no out tensor and no through_relu")
        if dims == 3 and tiled_pool.applies(x, kernel, stride, padding):  # as in avg_pool
            return tiled_pool.avg_pool_backward(grad_out, x, kernel[0])
        if dims == 3 and x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16):  # as in avg_pool
            return backward(grad_out.float(), x.float(), kernel, stride, padding, False, True, None).to(x.dtype)
        return backward(grad_out, x, kernel, stride, padding, False, True, None)
    pool = F.max_pool2d if dims == 2 else F.max_pool3d
    pooled, indices = pool(x, kernel, stride, padding, return_indices=True)  # the argmax, recomputed
    if through_relu:  # g_o ⊙ 1[pool(x)_o > 0]: σ' of each output's argmax
        grad_out = torch.ops.aten.threshold_backward(grad_out, pooled, 0)
    backward = (torch.ops.aten.max_pool2d_with_indices_backward if dims == 2
                else torch.ops.aten.max_pool3d_with_indices_backward)
    if out is None:
        return backward(grad_out, x, kernel, stride, padding, [1] * dims, False, indices)
    return backward.grad_input(grad_out, x, kernel, stride, padding, [1] * dims, False, indices, grad_input=out)


def per_channel(vector: Tensor, dims: int) -> Tensor:
    """A ``(C,)`` vector viewed as ``(C, 1, …, 1)``, broadcasting over ``(N, C, *spatial)``."""
    return vector.view(-1, *(1,) * dims)


def channels_last(x: Tensor, dims: int | None = None) -> Tensor:
    """``x`` with the channel stride 1 (``(N, *spatial, C)`` in memory), copied only if it is not already so.

    ``dims`` defaults to ``x.dim() − 2``; the model passes its own (under FX symbolic tracing ``x.dim()`` is a
    symbol)."""
    dims = spatial_dims(x) if dims is None else dims
    if dims in _FORMATS:
        return x.contiguous(memory_format=_FORMATS[dims])
    return x.movedim(1, -1).contiguous().movedim(-1, 1)


def channel_stride_one(x: Tensor) -> Tensor:
    """``x`` with the channel stride 1 where it has one channel (a view; ``x`` itself otherwise, or in 1D).

    With one channel both layouts address the same memory, so ``x.contiguous(memory_format=…)`` keeps the plain
    strides, and a convolution on such an input (a grayscale image, a single-channel volume) returns a plain
    contiguous output (torch picks channels-last from a stride of 1 on the channel axis) — whose max-pool then runs
    the plain-layout kernel, ~8× slower in 3D (benchmarks/NOTES.md). For the explicit Functions' own tensors, not
    for tensors autograd records (the view is an ``as_strided``)."""
    if spatial_dims(x) not in _FORMATS or x.shape[1] != 1:
        return x
    x = x.contiguous()
    strides = [x.stride(0), 1, *x.stride()[2:]]
    return x.as_strided(x.shape, strides)


def is_channels_last(x: Tensor) -> bool:
    """Whether ``x`` is a dense channels-last 2-D or 3-D map (``(N, *spatial, C)`` in memory, no gaps); False in 1D,
    which has no channels-last format."""
    dims = spatial_dims(x)
    return dims in _FORMATS and x.is_contiguous(memory_format=_FORMATS[dims])


def memory_format(dims: int) -> torch.memory_format:
    """The channels-last memory format of ``d``-dimensional maps (plain contiguous for 1D, which has none)."""
    return _FORMATS.get(dims, torch.contiguous_format)


def same_layout(x: Tensor, like: Tensor) -> Tensor:
    """``x`` in ``like``'s layout: channels-last if ``like`` is channels-last and not also plain contiguous (one
    pixel, or one channel), plain contiguous otherwise."""
    dims = spatial_dims(like)
    if dims in _FORMATS:
        is_last = like.is_contiguous(memory_format=_FORMATS[dims])
    else:
        is_last = like.movedim(1, -1).is_contiguous()
    return channels_last(x) if is_last and not like.is_contiguous() else x.contiguous()


def _expand(value: Size, dims: int) -> list[int]:
    return [value] * dims if isinstance(value, int) else list(value)
