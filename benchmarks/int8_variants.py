"""Int8 forward variants of densenet121 timed side by side in one process (issue "int8 and bf16 inference").

    flock /work/bench.lock env OMP_NUM_THREADS=2 python benchmarks/int8_variants.py --batch 8 --rounds 10

Every variant runs the same trained-like weights (``densenet bench``'s) on the same batch, interleaved round by
round in a seeded random order (:func:`densenet.deploy.bench.time_interleaved`); medians, and each variant's ratio
to ``int8`` (what :func:`densenet.quantize` builds now). Prototypes of the changes tried, kept here so that the
measurement can be repeated whichever way each went:

- ``int8``: the current int8 model (:func:`densenet.quantize`: int8 stem, pool-first transitions);
- ``float32``: ``optimize_for_inference`` (the ≥ 2.5× target's reference);
- ``transition-2x2``: transitions as one 2×2 stride-2 int8 conv with ``W/4`` per tap (the first design: no
  rounding of pooled codes, four times the MACs of pool-first);
- ``stem-float32``: the stem's convolution and max pool in float32, then encoded to u8 (the first design);
- ``first-design``: both.

Writes ``benchmarks/results/int8_variants_b{batch}.json``.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densenet.deploy.bench import time_interleaved, trained_like
from densenet.deploy.bench.peers import bench_calibration
from densenet.deploy.int8 import QConv, QuantizedDenseNet, QuantizedTransition, encode, scale_inputs
from densenet.deploy.optimize import FrozenTransition, OptimizedDenseNet, Workspace, optimize_for_inference
from densenet.deploy.quantize import quantize
from densenet.nn.batchnorm import affine_relu
from densenet.registry import create_model
from harness import machine, write_json


class TwoByTwoTransition(nn.Module):
    """clamp of the codes, then average pool and 1×1 conv as one 2×2 stride-2 int8 conv (``W/4`` per tap)."""

    def __init__(self, transition: FrozenTransition, like: QuantizedTransition, scale: Tensor, zero: Tensor) -> None:
        super().__init__()
        self.lo, self.hi = like.lo, like.hi
        weight = scale_inputs(transition.conv.weight, scale) / 4
        self.conv = QConv(weight.expand(-1, -1, 2, 2), transition.conv.bias, 1.0, like.conv.out, stride=2,
                          x_zero=zero)
        self.workspace = Workspace()

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        out = self.workspace.get("clamped", x.numel(), x).view(n, h, w, c).permute(0, 3, 1, 2)
        return self.conv(torch.clamp(x, self.lo, self.hi, out=out))


def with_transitions(quantized: QuantizedDenseNet, fast: OptimizedDenseNet, kind: type[nn.Module]) -> nn.Module:
    """``quantized`` with every transition rebuilt as ``kind``."""
    variant = copy.deepcopy(quantized)
    for index, stage in enumerate(variant.stages):
        if isinstance(stage, QuantizedTransition) or isinstance(fast.stages[index], FrozenTransition):
            block = variant.stages[index - 1]
            variant.stages[index] = kind(fast.stages[index], stage, block.channel_scale, block.channel_zero)
    return variant


class FloatStem(nn.Module):
    """The first design's stem: float32 conv (BN folded, ReLU fused), float32 max pool, encode to u8; the int8
    stages and head of ``quantized``."""

    def __init__(self, quantized: QuantizedDenseNet, fast: OptimizedDenseNet) -> None:
        super().__init__()
        self.conv0, self.net = fast.conv0, quantized

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        x = self.conv0(x.contiguous(memory_format=torch.channels_last))
        q = encode(F.max_pool2d(x, 3, 2, 1), self.net.stem.conv.out)
        for stage in self.net.stages:
            q = stage(q)
        features = affine_relu(q.float(), self.net.scale5, self.net.shift5)
        return self.net.classifier(features.mean(dim=(2, 3)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = trained_like(create_model("densenet121")).eval()
    x = torch.randn(args.batch, 3, args.input_size, args.input_size, generator=torch.Generator().manual_seed(0))
    fast = optimize_for_inference(model)
    quantized = quantize(model, bench_calibration(x), observer="minmax", min_images=1)
    builders = {
        "int8": lambda: quantized,
        "float32": lambda: fast,
        "transition-2x2": lambda: with_transitions(quantized, fast, TwoByTwoTransition),
        "stem-float32": lambda: FloatStem(quantized, fast),
        "first-design": lambda: FloatStem(with_transitions(quantized, fast, TwoByTwoTransition), fast),
    }
    chosen = args.variants or list(builders)
    variants = {name: builders[name]() for name in chosen}
    with torch.inference_mode():
        reference = quantized(x)
        agreement = {name: float((net(x) - reference).abs().max() / reference.abs().max())
                     for name, net in variants.items()}

    def runner(net: nn.Module):
        def run() -> Tensor:
            with torch.inference_mode():
                return net(x)
        return run

    timings = time_interleaved({name: (runner(net), 0) for name, net in variants.items()}, args.rounds, args.warmup)
    medians = {name: statistics.median(seconds) for name, seconds in timings.seconds.items()}
    base = medians.get("int8")
    for name, median in medians.items():
        ratio = f"  int8 ÷ this {base / median:.3f}×" if base else ""
        print(f"{name:22s} {1000 * median:8.1f} ms{ratio}  logits vs int8 {agreement[name]:.3f} of the largest")
    write_json(f"int8_variants_b{args.batch}", {
        "machine": machine(), "batch": args.batch, "input_size": args.input_size, "threads": args.threads,
        "rounds": args.rounds, "median_ms": {name: 1000 * m for name, m in medians.items()},
        "seconds": timings.seconds, "max_logit_difference_to_int8": agreement})


if __name__ == "__main__":
    main()
