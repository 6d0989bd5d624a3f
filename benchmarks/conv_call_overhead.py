"""The fixed cost of one call of each operator an inference forward makes (issue "int8 and bf16 inference"): each
on a 1×1-pixel input of one image, where the arithmetic is nil and what is left is the call itself — Python, the
dispatcher, and oneDNN's per-call setup (primitive descriptor, scales, reorders).

    flock /work/bench.lock env OMP_NUM_THREADS=2 python benchmarks/conv_call_overhead.py [--threads 2]

- ``qconv_pointwise``: ``torch.ops.onednn.qconv_pointwise`` as :class:`densenet.deploy.int8.QConv` calls it
  (module call, then without the module call, then the bare operator with its arguments built once);
- ``quantized.conv2d_relu (onednn engine)``: the older quantized-tensor API, whose packed weight keeps the oneDNN
  primitive of the last input shape (PyTorch's ``PrimitiveCache``), for comparison;
- ``mkldnn._convolution_pointwise`` float32 / bfloat16 (:class:`densenet.deploy.optimize.FrozenConv`);
- the clamp and the copy into the buffer, per layer of a dense block.

Median µs over ``--calls`` calls after warm-up; writes ``benchmarks/results/conv_call_overhead.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch

from densenet.deploy.int8 import QConv, QParams
from densenet.deploy.optimize import FrozenConv
from harness import machine, write_json


def per_call_us(run: Callable[[], object], calls: int, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean µs per call over ``calls`` calls."""
    for _ in range(100):
        run()
    means = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            run()
        means.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(means)


def quantized_tensor_conv(weight: torch.Tensor, x: torch.Tensor) -> Callable[[], object]:
    """``quantized::conv2d_relu`` on quantized tensors, weights prepacked under the onednn engine."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = "onednn"
        try:
            scales = weight.abs().amax(dim=(1, 2, 3)) / 127
            qweight = torch.quantize_per_channel(weight, scales, torch.zeros(len(scales), dtype=torch.long), 0,
                                                 torch.qint8)
            packed = torch.ops.quantized.conv2d_prepack(qweight, torch.zeros(weight.shape[0]), [1, 1], [0, 0],
                                                        [1, 1], 1)
        finally:
            torch.backends.quantized.engine = previous
        qx = torch._make_per_tensor_quantized_tensor(x, 0.02, 0)
    return lambda: torch.ops.quantized.conv2d_relu(qx, packed, 0.05, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--channels", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c = args.channels
    weight = torch.randn(128, c, 1, 1) * 0.1
    codes = torch.randint(0, 256, (1, c, 1, 1), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    floats = torch.randn(1, c, 1, 1).contiguous(memory_format=torch.channels_last)
    qconv = QConv(weight, torch.zeros(128), 0.02, QParams(0.05, 0), relu=True)
    float32 = FrozenConv(weight, torch.zeros(128), relu=True)
    bfloat16 = FrozenConv(weight, torch.zeros(128), relu=True).to(torch.bfloat16)
    lo = torch.zeros(c, 1, 1, dtype=torch.uint8)
    hi = torch.full((c, 1, 1), 200, dtype=torch.uint8)
    scratch = torch.empty_like(codes)
    buffer = torch.empty(1, 1, 1, c + 32, dtype=torch.uint8).permute(0, 3, 1, 2)
    new = codes[:, :32].clone(memory_format=torch.channels_last)
    packed = qconv.packed_weight(tuple(codes.shape))
    prebuilt = (codes, 1.0, 0, packed, qconv.weight_scale, qconv.weight_zero, qconv.bias, [1, 1], [0, 0], [1, 1], 1,
                0.05, 0, None, "relu", [], "")
    cases = {
        "qconv_pointwise": lambda: qconv(codes),
        "qconv_pointwise, QConv.forward (no module call)": lambda: qconv.forward(codes),
        "qconv_pointwise.default, arguments prebuilt": lambda: torch.ops.onednn.qconv_pointwise.default(*prebuilt),
        "quantized.conv2d_relu (onednn engine)": quantized_tensor_conv(weight, codes),
        "mkldnn._convolution_pointwise float32": lambda: float32(floats),
        "mkldnn._convolution_pointwise bfloat16": lambda: bfloat16(floats.bfloat16()),
        "clamp u8 (out=)": lambda: torch.clamp(codes, lo, hi, out=scratch),
        "copy of a new map into the buffer": lambda: buffer[:, c:].copy_(new),
    }
    results = {}
    with torch.inference_mode():
        for name, run in cases.items():
            results[name] = per_call_us(run, args.calls)
            print(f"{name:42s} {results[name]:7.1f} µs")
    write_json("conv_call_overhead", {"machine": machine(), "threads": args.threads, "channels": c,
                                      "us_per_call": results})


if __name__ == "__main__":
    main()
