"""The ceiling ``densenet bench`` reports each configuration against: the throughput of the convolution kernels the
models spend their time in, per dtype, measured on this machine now.

A float32 ``torch.mm`` through MKL is not that ceiling: on some CPUs (this project's AMD EPYC) oneDNN's convolutions
run faster than MKL's matrix multiply, which is how ours came to read 151% "of peak". So the ceiling is the best
rate of oneDNN's own convolution — the fused float32/bfloat16 convolution of
:class:`~densenet.deploy.optimize.FrozenConv` and the u8×s8 convolution of :class:`~densenet.deploy.int8.QConv` —
over a few of densenet121's larger layer shapes, in isolation (data in cache where it fits, no other work); for
bfloat16 on a CPU without oneDNN's bfloat16 (:mod:`densenet.capability`), PyTorch's generic kernels, which the
model then runs too. A whole network runs below it (memory-bound passes, small layers); ≤ 100% is expected, not
guaranteed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

# (input channels, output channels, kernel, side): densenet121's bottleneck and 3×3 convs in blocks 1–2
CEILING_SHAPES = ((256, 128, 1, 56), (128, 32, 3, 56), (512, 128, 1, 28))
DTYPES = ("float32", "bfloat16", "int8")


def _conv(dtype: str, c_in: int, c_out: int, kernel: int, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    from densenet.deploy.int8 import QConv, QParams
    from densenet.deploy.optimize import FrozenConv

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(c_out, c_in, kernel, kernel, generator=generator) * 0.05
    bias = torch.randn(c_out, generator=generator)
    if dtype == "int8":
        conv = QConv(weight, bias, 0.02, QParams(0.05, 0), padding=kernel // 2, relu=True)
        codes = torch.randint(0, 256, x.shape, generator=generator, dtype=torch.uint8)
        codes = codes.contiguous(memory_format=torch.channels_last)
        return lambda: conv(codes)
    float_conv = FrozenConv(weight, bias, padding=kernel // 2, relu=True).to(getattr(torch, dtype))
    x = x.to(getattr(torch, dtype))
    return lambda: float_conv(x)


def conv_ceiling_gops(threads: int, dtype: str, batch: int = 8, repeats: int = 5,
                      shapes: tuple[tuple[int, int, int, int], ...] = CEILING_SHAPES) -> float:
    """The best median rate (GFLOP/s; int8: giga-operations/s, 2 per multiply-accumulate) of oneDNN's
    convolution in ``dtype`` over ``shapes`` at ``batch``, with ``threads`` threads."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    best = 0.0
    try:
        with torch.inference_mode():
            for c_in, c_out, kernel, side in shapes:
                x = torch.randn(batch, c_in, side, side).contiguous(memory_format=torch.channels_last)
                run = _conv(dtype, c_in, c_out, kernel, x)
                for _ in range(2):
                    run()
                seconds = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    run()
                    seconds.append(time.perf_counter() - start)
                macs = batch * side * side * c_in * c_out * kernel * kernel
                best = max(best, 2 * macs / statistics.median(seconds) / 1e9)
    finally:
        torch.set_num_threads(previous)
    return best
