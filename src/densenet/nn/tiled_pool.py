"""The transitions' average pool for channels-last volumes on a CPU: non-overlapping ``K×K×K`` windows (stride
``K``, no padding), computed on views of the ``(N, D, H, W, C)`` memory.

ATen's CPU ``avg_pool3d`` and its backward have no channels-last kernel: each copies the volume to ``NCDHW`` first
and hands back that layout (a 26 ms forward of a ``(2, 256, 24³)`` map, 16 ms of it the copy; 15 ms backward), and
neither exists in bf16. Here a window's ``K³`` entries are ``K³`` strided views of the memory, summed one view at a
time in the order ATen sums them (float32 results bit-equal to ``avg_pool3d``), 2.6 ms forward and 2.2 ms backward
for that map (benchmarks/NOTES.md). In bf16/float16 the sums are kept in float32 and each mean rounded once.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor


def applies(x: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...]) -> bool:
    """Whether ``x`` is a channels-last volume on a CPU pooled over non-overlapping windows of one side."""
    return (x.dim() == 5 and x.device.type == "cpu" and x.is_contiguous(memory_format=torch.channels_last_3d)
            and len(set(kernel)) == 1 and tuple(stride) == tuple(kernel) and not any(padding))


def _windows(rows: Tensor, outputs: tuple[int, int, int], k: int) -> Tensor:
    """``(N, D, H, W, C)`` rows as ``(N, D', k, H', k, W', k, C)`` windows, the entries past ``k·D'`` (a side the
    pool floors) left out."""
    depth, height, width = outputs
    trimmed = rows[:, :depth * k, :height * k, :width * k]
    return trimmed.unflatten(3, (width, k)).unflatten(2, (height, k)).unflatten(1, (depth, k))


def avg_pool(x: Tensor, k: int) -> Tensor:
    """``O = (1/K³) Σ x`` over each ``K×K×K`` window [F3]: ``(N, C, D, H, W)`` → ``(N, C, ⌊D/K⌋, ⌊H/K⌋, ⌊W/K⌋)``,
    channels-last."""
    outputs = (x.shape[2] // k, x.shape[3] // k, x.shape[4] // k)
    windows = _windows(x.permute(0, 2, 3, 4, 1), outputs, k)  # (N, D', k, H', k, W', k, C)
    accumulate = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
    total = None
    for depth, height, width in itertools.product(range(k), repeat=3):  # the window's entries, in ATen's order
        view = windows[:, :, depth, :, height, :, width]  # (N, D', H', W', C)
        total = view.to(accumulate, copy=True) if total is None else total.add_(view)
    assert total is not None  # k ≥ 1
    return total.mul_(1 / k ** 3).to(x.dtype).permute(0, 4, 1, 2, 3)


def avg_pool_backward(grad_out: Tensor, x: Tensor, k: int) -> Tensor:
    """``∂L/∂x``: each output's gradient spread ``1/K³`` to every input of its window [F3b] (0 to the entries the
    pool left out), channels-last like ``x``."""
    n, c, *sides = x.shape
    grad = x.new_empty(n, *sides, c) if all(side % k == 0 for side in sides) else x.new_zeros(n, *sides, c)
    spread = grad_out.permute(0, 2, 3, 4, 1)[:, :, None, :, None, :, None]  # (N, D', 1, H', 1, W', 1, C)
    windows = _windows(grad, tuple(grad_out.shape[2:]), k)
    torch.mul(spread.expand(windows.shape), 1 / k ** 3, out=windows)
    return grad.permute(0, 4, 1, 2, 3)
