"""A dense block's layer loop for inference, compiled once by TorchScript, so that the ~120 convolution calls of a
forward are made from C++ (benchmarks/NOTES.md, "The layer loop in TorchScript").

On a batch of one image the convolutions are small and a forward is mostly fixed costs per call: Python spends
~5 µs on each operator call's arguments and ~2–4 µs on each view, clamp and copy around it — ~2–3 ms of a 15–20 ms
int8 forward of DenseNet-121, the same milliseconds in float32 and bf16. The loop below is the same arithmetic as
the Python loops it replaces (:class:`~densenet.deploy.optimize.FrozenDenseBlock`,
:class:`~densenet.deploy.int8.QuantizedDenseBlock`) and writes bit-identical outputs; the block modules keep the
packed weights and scratch tensors and hand them in, and run their Python loop where a convolution module has a
forward hook (:func:`hooked`).

Per layer ``l`` [F2], on the channels-last buffer ``[x_0, …, x_L]`` (the folded BN-ReLU is a clamp, the BN2-ReLU
fused into the 1×1 conv; docs/MATH.md "Inference: batch norms folded away" and "Int8 inference")::

    r = clamp([x_0, …, x_{l−1}], lo_l, hi_l)      y = σ(W1_l ∗ r + b1_l)      x_l = W2_l ∗ y

Where the oneDNN layer loop is available (:mod:`densenet.deploy.onednn_loop`: the primitives made once per input
shape, no per-call set-up) it serves instead; this loop is the path without it.

The functions are compiled on first use (TorchScript prints a deprecation notice on compiling, silenced here: it
stays the one way in PyTorch to run a loop of operator calls from C++ without a compiler on the user's machine).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.nn.modules.module import _global_forward_hooks, _global_forward_pre_hooks

from densenet.deploy.revision import Revision


def features_view(flat: Tensor, shape: list[int], channels: int) -> Tensor:
    """The first ``shape[0]·∏shape[2:]·channels`` elements of ``flat`` as a channels-last ``(N, channels, *spatial)``
    view (``shape``: the block input's ``(N, C_0, *spatial)``)."""
    rows = [shape[0]] + list(shape[2:]) + [channels]  # noqa: RUF005 (TorchScript has no starred list items)
    numel = 1
    for size in rows:
        numel *= size
    return flat[:numel].view(rows).movedim(-1, 1)


def block_buffer(x: Tensor, buffer: Tensor, total: int) -> Tensor:
    """``buffer`` (flat) as the block's channels-last ``(N, total, *spatial)`` features, the input ``x`` copied into its
    first ``C_0`` channels."""
    features = features_view(buffer, x.shape, total)
    features[:, :x.shape[1]].copy_(x)
    return features


def clamp_inputs(features: Tensor, scratch: Tensor, shape: list[int], channels: int, lo: Tensor | None,
                 hi: Tensor | None) -> Tensor:
    """``clamp([x_0, …, x_{l−1}], lo, hi)`` — the folded BN-ReLU of the layer reading ``channels`` channels — into
    ``scratch`` (channels-last)."""
    return torch.clamp(features[:, :channels], lo, hi, out=features_view(scratch, shape, channels))


def fused_layers(x: Tensor, buffer: Tensor, scratch: Tensor, growth_rate: int, lo: list[Tensor | None],
                 hi: list[Tensor | None], weight1: list[Tensor], bias1: list[Tensor | None], weight2: list[Tensor],
                 ones: list[int], zeros: list[int]) -> Tensor:
    """float32/bf16: ``(N, C_0, *spatial)`` → ``(N, C_0 + L·k, *spatial)`` in ``buffer`` (flat, channels-last),
    each convolution one oneDNN call on its packed weight (``weight1``, ``weight2``; 3×3 conv: padding 1)."""
    c0, k = x.shape[1], growth_rate
    features = block_buffer(x, buffer, c0 + len(weight1) * k)
    for index in range(len(weight1)):
        channels = c0 + index * k
        clamped = clamp_inputs(features, scratch, x.shape, channels, lo[index], hi[index])
        bottleneck = torch.ops.mkldnn._convolution_pointwise(clamped, weight1[index], bias1[index], zeros, ones, ones,
                                                             1, "relu", [], "")
        new = torch.ops.mkldnn._convolution_pointwise(bottleneck, weight2[index], None, ones, ones, ones, 1, "none",
                                                      [], "")
        features[:, channels:channels + k].copy_(new)
    return features


def int8_layers(x: Tensor, buffer: Tensor, scratch: Tensor, growth_rate: int, lo: list[Tensor], hi: list[Tensor],
                weight1: list[Tensor], scale1: list[Tensor], zero1: list[Tensor], bias1: list[Tensor],
                code1: list[float], offset1: list[int], weight2: list[Tensor], scale2: list[Tensor],
                zero2: list[Tensor], code2: list[float], offset2: list[int]) -> Tensor:
    """u8 codes ``(N, C_0, H, W)`` → ``(N, C_0 + L·k, H, W)`` in ``buffer``: the clamp on the codes, then two oneDNN
    int8 calls [Q1] (``weight*``: packed int8, ``scale*``/``zero*``: per output channel; ``code*``/``offset*``: the
    output's u8 code ``(s, z)``; the 1×1 conv reads codes at scale 1, the 3×3 conv the bottleneck's code)."""
    c0, k = x.shape[1], growth_rate
    features = block_buffer(x, buffer, c0 + len(weight1) * k)
    for index in range(len(weight1)):
        channels = c0 + index * k
        clamped = clamp_inputs(features, scratch, x.shape, channels, lo[index], hi[index])
        bottleneck = torch.ops.onednn.qconv_pointwise(
            clamped, 1.0, 0, weight1[index], scale1[index], zero1[index], bias1[index], [1, 1], [0, 0], [1, 1], 1,
            code1[index], offset1[index], None, "relu", [], "")
        new = torch.ops.onednn.qconv_pointwise(
            bottleneck, code1[index], 0, weight2[index], scale2[index], zero2[index], None, [1, 1], [1, 1], [1, 1], 1,
            code2[index], offset2[index], None, "none", [], "")
        features[:, channels:channels + k].copy_(new)
    return features


def hooked(modules: Iterable[nn.Module], revision: Revision | None = None) -> bool:
    """Whether a call of any of ``modules`` would run a forward hook (its own or a global one). The compiled loop
    does not call the convolution modules, so a block whose convolutions are hooked (calibration observes their
    outputs that way) runs its Python loop.

    ``revision``: the modules' shared :class:`~densenet.deploy.revision.Revision`, which counts hook registrations:
    while no hook was registered since a check found none, the modules are not read again (``modules`` may be a lazy
    iterable). Without one, every module is read."""
    if _global_forward_hooks or _global_forward_pre_hooks:
        return True
    if revision is not None and revision.unhooked_at == revision.hooks:
        return False
    if any(module._forward_hooks or module._forward_pre_hooks for module in modules):
        return True
    if revision is not None:
        revision.unhooked_at = revision.hooks
    return False


@functools.cache
def compiled(function: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``function`` compiled by ``torch.jit.script`` (once per process)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.script is deprecated": see the module docstring
        return torch.jit.script(function)
