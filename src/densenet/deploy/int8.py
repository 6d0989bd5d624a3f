"""Int8 inference modules: the folded network of :mod:`densenet.deploy.optimize` on 8-bit maps, each convolution one
oneDNN int8 call (``onednn::qconv_pointwise``: u8 activations × s8 weights, int32 sums, bias, ReLU and the
requantization to u8 fused). Built by :func:`densenet.deploy.quantize.quantize`; the math is in docs/MATH.md
("Int8 inference").

Every map is stored as u8 codes ``q`` with an affine code per *segment*: ``x = s·(q − z)``. A dense block's buffer
holds segments with different ``(s, z)`` — the block input and each layer's new map keep the range they were
calibrated with — so nothing is ever requantized to a common scale (the ``QLinearConcat`` of other int8 DenseNets).
That is exact algebra for the 1×1 convolutions that read the buffer [Q1]::

    W' ∗ clamp(x, lo, hi) + b'  =  (W'·s) ∗ clamp(q, lo_q, hi_q) + (b' − W'·(s·z)),   lo_q = round(lo/s + z)

per input channel (the BN-ReLU folded into a clamp, :mod:`densenet.deploy.folding`, works on the codes directly);
the input scales go into the weights before those are quantized per output channel. A 3×3 convolution reads the
bottleneck's ReLU output (``z = 0``: zero padding is a real zero). A transition averages the clamped codes over
2×2 (the pool commutes with each channel's affine code), then runs its 1×1 convolution on the pooled codes [F3].

The stem: the image is encoded with its own calibrated code and the stem's convolution runs in int8 (oneDNN
subtracts the image's zero point, so its zero padding stays a real zero), the max pool on the codes. Kept in
float32: the final BN-ReLU, pooling and classifier.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.ao.quantization.observer import PerChannelMinMaxObserver

from densenet.deploy import onednn_loop
from densenet.deploy.layer_loop import block_buffer, clamp_inputs, compiled, hooked, int8_layers
from densenet.deploy.optimize import FrozenConv, FrozenDenseBlock, FrozenTransition, OptimizedDenseNet, Workspace
from densenet.deploy.revision import Revision, Tracked, TrackedList
from densenet.model import check_input
from densenet.nn.batchnorm import affine_relu
from densenet.nn.dims import is_channels_last

CODE_MIN, CODE_MAX = 0, 255  # u8 activation codes
# the overload itself: calling the packet resolves it among its overloads on every call (~5 µs, 120 calls a forward)
_QCONV = torch.ops.onednn.qconv_pointwise.default if hasattr(torch.ops.onednn, "qconv_pointwise") else None
_DILATION, _NO_SCALARS = [1, 1], []  # read only by the operator


@dataclass(frozen=True)
class QParams:
    """The affine u8 code of one map: ``x ≈ scale·(q − zero_point)``, ``q ∈ [0, 255]``."""

    scale: float
    zero_point: int


def int8_supported() -> bool:
    """Whether this CPU has the int8 dot-product instructions the int8 path needs (AVX-512 VNNI, AVX-VNNI or AMX).

    Without them oneDNN sums u8·s8 pairs in saturating 16-bit steps (``vpmaddubsw``), which overflows on weights
    that use the full int8 range.
    """
    return bool(torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qconv_pointwise")
                and (torch.cpu._is_vnni_supported() or torch.cpu._is_amx_tile_supported()))


def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per output channel: ``W_o ≈ s_o·q_o``, ``s_o = max|W_o| / 127.5`` (torch's
    ``PerChannelMinMaxObserver``: weights are fixed, so their exact range is the right one). Returns ``(q, s)``."""
    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    observer(weight.float())
    scale = observer.calculate_qparams()[0].float()
    codes = torch.round(weight.float() / scale.view(-1, 1, 1, 1)).clamp_(-128, 127).to(torch.int8)
    return codes, scale


def code_bound(bound: Tensor | None, scale: Tensor, zero: Tensor, default: int) -> Tensor:
    """A clamp bound of ``x`` as a bound of the codes: ``round(bound/s + z)`` within ``[0, 255]``; ``default`` where
    there is no bound (``None`` or infinite). Per channel, ``(C, 1, 1)`` u8."""
    if bound is None:
        return torch.full((len(scale), 1, 1), default, dtype=torch.uint8)
    codes = torch.round(bound.flatten().double() / scale.double() + zero.double())
    codes = torch.where(torch.isinf(bound.flatten()), float(default), codes)
    return codes.clamp(CODE_MIN, CODE_MAX).to(torch.uint8).view(-1, 1, 1)


def encode(x: Tensor, code: QParams) -> Tensor:
    """``q = clamp(round(x/s) + z, 0, 255)`` as u8 (same shape and memory format)."""
    return torch.round(x / code.scale).add_(code.zero_point).clamp_(CODE_MIN, CODE_MAX).to(torch.uint8)


class QConv(Tracked):
    """``q_y = clamp(round(σ(Σ (s_x·s_w,o)·q_x·q_w + b)/s_y) + z_y, 0, 255)``: one oneDNN int8 convolution with
    the bias, the ReLU (σ, optional) and the requantization fused; int8 weights per output channel
    (:func:`quantize_weight`) packed once per input shape.

    ``x_zero`` (per input channel, optional): the input codes' offsets, for a convolution without padding; their
    term ``Σ W_q·z`` goes into the bias [Q1], computed with the *quantized* weights (the float weights would leave
    ``Σ (W_q − W)·z`` in every output: weight rounding times offsets near 128). ``x_zero_point`` (one for all
    channels): an offset oneDNN subtracts itself, ``s_x·(q_x − z_x)``, zero padding then being a real zero (the
    image's code, for the stem's padded convolution).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, x_scale: float, out: QParams, stride: int = 1,
                 padding: int = 0, relu: bool = False, x_zero: Tensor | None = None, x_zero_point: int = 0) -> None:
        super().__init__()
        codes, scale = quantize_weight(weight)  # (C_out, C_in, kh, kw) int8, (C_out,)
        bias = torch.zeros(len(scale), dtype=torch.float64) if bias is None else bias.detach().double()
        if x_zero is not None:
            if padding:
                raise ValueError("input code offsets fold into the bias only without padding")
            dequantized = codes.double() * scale.double().view(-1, 1, 1, 1)
            bias = bias - (dequantized * x_zero.double().view(1, -1, 1, 1)).sum(dim=(1, 2, 3)) * x_scale
        self.register_buffer("weight", codes.contiguous(memory_format=torch.channels_last))
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero", torch.zeros(len(scale), dtype=torch.int32))
        self.register_buffer("bias", bias.float())
        self.x_scale, self.out, self.stride, self.padding, self.relu = float(x_scale), out, stride, padding, relu
        self.x_zero_point = int(x_zero_point)
        self.packed = onednn_loop.PlanCache()
        # the operator's stride, padding and post-op arguments, built once (~120 calls a forward)
        self._arguments = ([stride] * 2, [padding] * 2, "relu" if relu else "none")

    def forward(self, x: Tensor) -> Tensor:
        """u8 codes ``(N, C_in, H, W)`` → u8 codes ``(N, C_out, H', W')``, channels-last."""
        stride, padding, attr = self._arguments
        return _QCONV(x, self.x_scale, self.x_zero_point, self.packed_weight(tuple(x.shape)), self.weight_scale,
                      self.weight_zero, self.bias, stride, padding, _DILATION, 1, self.out.scale, self.out.zero_point,
                      None, attr, _NO_SCALARS, "")

    def packed_weight(self, shape: tuple[int, ...]) -> Tensor:
        """oneDNN's packed int8 weight for input shape ``shape``, packed on first use."""
        return self.packed.get(shape, lambda: torch.ops.onednn.qconv_prepack(
            self.weight, self.weight_scale, self.x_scale, self.x_zero_point, [self.stride] * 2, [self.padding] * 2,
            [1, 1], 1, list(shape)))

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1]}, {self.weight.shape[0]}, kernel_size={tuple(self.weight.shape[2:])}, "
                f"stride={self.stride}, padding={self.padding}, relu={self.relu}, out={self.out}")


def scale_inputs(weight: Tensor, scale: Tensor) -> Tensor:
    """``W·s`` per input channel: the weight that reads codes ``q`` where it read ``x = s·(q − z)`` [Q1] (the
    offsets ``z`` go into the bias, :class:`QConv`). ``weight`` ``(C_out, C, kh, kw)``, ``scale`` ``(C,)``."""
    return (weight.double() * scale.double().view(1, -1, 1, 1)).float()


class QuantizedDenseBlock(nn.Module):
    """:class:`~densenet.deploy.optimize.FrozenDenseBlock` on u8 codes: one u8 buffer, each layer a clamp of the
    codes, a 1×1 and a 3×3 int8 convolution, its new map's codes copied into the buffer [F2]. ``channel_scale`` and
    ``channel_zero`` (``(C_0 + L·k,)``) give each buffer channel's code."""

    def __init__(self, block: FrozenDenseBlock, x0: QParams, bottleneck: list[QParams], new: list[QParams]) -> None:
        super().__init__()
        if not block.bottleneck:
            raise ValueError("the int8 path needs bottleneck layers (DenseNet-B/BC: a BN-ReLU before a 1×1 conv); "
                             "this architecture has none (bottleneck=False)")
        self.growth_rate, self.num_layers = block.growth_rate, block.num_layers
        c0 = block.conv1[0].weight.shape[1]
        segments = [(c0, x0)] + [(self.growth_rate, q) for q in new]
        self.register_buffer("channel_scale", torch.cat([torch.full((n,), q.scale) for n, q in segments]))
        self.register_buffer("channel_zero", torch.cat([torch.full((n,), float(q.zero_point)) for n, q in segments]))
        self.workspace = Workspace()
        self.plans = onednn_loop.PlanCache()  # the layer loop's arguments per input shape
        self.onednn_plans = onednn_loop.PlanCache()  # the oneDNN layer loop's plans per input shape
        self.revision = Revision()  # its convolutions' replacements and hooks, counted
        self.conv1, self.conv2 = TrackedList(self.revision), TrackedList(self.revision)
        for index in range(self.num_layers):
            channels = c0 + index * self.growth_rate
            scale, zero = self.channel_scale[:channels], self.channel_zero[:channels]
            self.register_buffer(f"lo{index}", code_bound(getattr(block, f"lo{index}"), scale, zero, CODE_MIN))
            self.register_buffer(f"hi{index}", code_bound(getattr(block, f"hi{index}"), scale, zero, CODE_MAX))
            conv1, conv2 = block.conv1[index], block.conv2[index]
            self.conv1.append(QConv(scale_inputs(conv1.weight, scale), conv1.bias, 1.0, bottleneck[index], relu=True,
                                    x_zero=zero))
            self.conv2.append(QConv(conv2.weight, None, bottleneck[index].scale, new[index], padding=1))

    def forward(self, x: Tensor) -> Tensor:
        """u8 ``(N, C_0, H, W)`` → u8 ``(N, C_0 + L·k, H, W)`` (channels-last strides)."""
        n, c0, h, w = x.shape
        total = c0 + self.num_layers * self.growth_rate
        buffer = self.workspace.get("buffer", n * h * w * total, x)
        scratch = self.workspace.get("scratch", n * h * w * (total - self.growth_rate), x)
        if not hooked(itertools.chain(self.conv1, self.conv2), self.revision):
            if onednn_loop.applies(x):  # oneDNN primitives made once per input shape (densenet.deploy.onednn_loop)
                block_plan = self.onednn_plans.get(tuple(x.shape), lambda: self._onednn_plan(tuple(x.shape)),
                                                   self.revision)
                features = block_buffer(x, buffer, total)
                onednn_loop.run(block_plan, buffer, scratch, self.workspace)
                return features
            # the layer loop in C++ (densenet.deploy.layer_loop): ~120 operator calls a forward without Python's share
            arguments = self.plans.get(tuple(x.shape), lambda: self._arguments(tuple(x.shape)))
            return compiled(int8_layers)(x, buffer, scratch, self.growth_rate, *arguments)
        k = self.growth_rate
        features = block_buffer(x, buffer, total)  # (N, C_0 + L·k, H, W) view
        for index, (conv1, conv2) in enumerate(zip(self.conv1, self.conv2, strict=True)):
            channels = c0 + index * k
            clamped = clamp_inputs(features, scratch, list(x.shape), channels, getattr(self, f"lo{index}"),
                                   getattr(self, f"hi{index}"))
            features[:, channels:channels + k].copy_(conv2(conv1(clamped)))
        return features

    def _onednn_plan(self, shape: tuple[int, ...]) -> Any:
        """The oneDNN layer loop's plan for the block input's shape (:func:`densenet.deploy.onednn_loop.plan`)."""
        layers = range(self.num_layers)
        conv1, conv2 = list(self.conv1), list(self.conv2)
        return onednn_loop.plan(
            shape, self.growth_rate, torch.uint8, [getattr(self, f"lo{i}").flatten() for i in layers],
            [getattr(self, f"hi{i}").flatten() for i in layers], [conv.weight for conv in conv1],
            [conv.bias for conv in conv1], [conv.weight for conv in conv2],
            quantization=([conv.weight_scale for conv in conv1], [conv.out.scale for conv in conv1],
                          [conv.out.zero_point for conv in conv1], [conv.weight_scale for conv in conv2],
                          [conv.out.scale for conv in conv2], [conv.out.zero_point for conv in conv2]))

    def _arguments(self, shape: tuple[int, ...]) -> tuple[list[Any], ...]:
        """The layer loop's per-layer arguments for the block input's shape (the packed weights depend on it)."""
        n, c0, h, w = shape
        k, width = self.growth_rate, self.conv2[0].weight.shape[1]
        conv1, conv2 = list(self.conv1), list(self.conv2)
        return ([getattr(self, f"lo{index}") for index in range(self.num_layers)],
                [getattr(self, f"hi{index}") for index in range(self.num_layers)],
                [conv.packed_weight((n, c0 + index * k, h, w)) for index, conv in enumerate(conv1)],
                [conv.weight_scale for conv in conv1], [conv.weight_zero for conv in conv1],
                [conv.bias for conv in conv1], [conv.out.scale for conv in conv1],
                [conv.out.zero_point for conv in conv1],
                [conv.packed_weight((n, width, h, w)) for conv in conv2],
                [conv.weight_scale for conv in conv2], [conv.weight_zero for conv in conv2],
                [conv.out.scale for conv in conv2], [conv.out.zero_point for conv in conv2])


class CodePool(nn.Module):
    """2×2 stride-2 average of u8 codes per channel, rounded: ``round(Σ_{2×2} q / 4)`` (half to even), as one
    depthwise int8 convolution (weight code 1 in every tap at scale ¼: exact sums, one rounding). Average pooling
    commutes with the per-channel affine code (``s·(q − z)`` is linear in ``q``), so the pooled codes keep their
    channel's ``(s, z)``; the rounding adds at most half a code."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.ones(channels, 1, 2, 2, dtype=torch.int8).contiguous(
            memory_format=torch.channels_last))
        self.register_buffer("weight_scale", torch.full((channels,), 0.25))
        self.register_buffer("weight_zero", torch.zeros(channels, dtype=torch.int32))
        self.channels = channels
        self.packed = onednn_loop.PlanCache()

    def forward(self, x: Tensor) -> Tensor:
        """u8 ``(N, C, H, W)`` → u8 ``(N, C, ⌊H/2⌋, ⌊W/2⌋)``."""
        packed = self.packed.get(tuple(x.shape), lambda: torch.ops.onednn.qconv_prepack(
            self.weight, self.weight_scale, 1.0, 0, [2, 2], [0, 0], [1, 1], self.channels, list(x.shape)))
        return _QCONV(x, 1.0, 0, packed, self.weight_scale, self.weight_zero, None, [2, 2], [0, 0], [1, 1],
                      self.channels, 1.0, 0, None, "none", [], "")


class QuantizedTransition(nn.Module):
    """:class:`~densenet.deploy.optimize.FrozenTransition` on u8 codes: ``clamp`` of the codes, their 2×2 average
    (:class:`CodePool`), then the 1×1 int8 conv that reads each channel's code [F3, Q1] — pool first, a quarter of
    the MACs of the conv at full resolution."""

    def __init__(self, transition: FrozenTransition, scale: Tensor, zero: Tensor, out: QParams) -> None:
        super().__init__()
        self.register_buffer("lo", code_bound(transition.lo, scale, zero, CODE_MIN))
        self.register_buffer("hi", code_bound(transition.hi, scale, zero, CODE_MAX))
        self.pool = CodePool(len(scale))
        self.conv = QConv(scale_inputs(transition.conv.weight, scale), transition.conv.bias, 1.0, out, x_zero=zero)
        self.workspace = Workspace()
        self.onednn_plans = onednn_loop.PlanCache()  # the oneDNN transition's, per input shape

    def forward(self, x: Tensor) -> Tensor:
        """u8 ``(N, C, H, W)`` → u8 ``(N, ⌊θ·C⌋, ⌊H/2⌋, ⌊W/2⌋)``."""
        n, c, h, w = x.shape
        if (h % 2 == 0 and w % 2 == 0 and is_channels_last(x) and onednn_loop.applies(x)
                and not hooked([self.conv], self.conv.revision)):
            # clamp, pool and conv into kept tensors (densenet.deploy.onednn_loop)
            conv = self.conv
            plan = self.onednn_plans.get(tuple(x.shape), lambda: onednn_loop.transition_plan(
                tuple(x.shape), torch.uint8, self.lo, self.hi, conv.weight, conv.bias,
                (conv.weight_scale, conv.out.scale, conv.out.zero_point)), conv.revision)
            return onednn_loop.run_transition(plan, x, self.workspace)
        out = self.workspace.get("clamped", x.numel(), x).view(n, h, w, c).permute(0, 3, 1, 2)
        return self.conv(self.pool(torch.clamp(x, self.lo, self.hi, out=out)))


def max_pool_codes(q: Tensor) -> Tensor:
    """3×3 stride-2 max pool with padding 1 of u8 codes ``(N, C, H, W)`` (a monotone code: the max of the codes is
    the code of the max), separable — rows, then columns — over strided views of the codes padded with 0 (below or
    equal to every window's maximum, as each window holds at least one real code). ATen's channels-last max pool
    rejects 8-bit integers (torch 2.14)."""
    h, w = q.shape[2:]
    padded = F.pad(q, (1, 1, 1, 1))
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    rows = torch.maximum(torch.maximum(padded[:, :, 0:2 * ho - 1:2], padded[:, :, 1:2 * ho:2]),
                         padded[:, :, 2:2 * ho + 1:2])  # (N, C, ho, W + 2)
    return torch.maximum(torch.maximum(rows[..., 0:2 * wo - 1:2], rows[..., 1:2 * wo:2]), rows[..., 2:2 * wo + 1:2])


class QuantizedStem(nn.Module):
    """The stem on codes: the image encoded to u8 with its calibrated code, the stem's convolution in int8 (its
    folded BN, ReLU and the requantization to the stem's code fused; oneDNN subtracts the image's zero point, so
    the padding is a real zero), then (ImageNet stem) the max pool on the codes (:func:`max_pool_codes`)."""

    def __init__(self, conv0: FrozenConv, image: QParams, out: QParams, max_pool: bool) -> None:
        super().__init__()
        self.image, self.max_pool = image, max_pool
        self.conv = QConv(conv0.weight, conv0.bias, image.scale, out, stride=conv0.stride[0],
                          padding=conv0.padding[0], relu=conv0.relu, x_zero_point=image.zero_point)
        self.workspace = Workspace()  # the oneDNN stem's codes and maps
        self.onednn_plans = onednn_loop.PlanCache()  # the oneDNN stem's, per input shape

    def forward(self, x: Tensor) -> Tensor:
        """float32 ``(N, in_chans, H, W)`` → u8 codes ``(N, C_0, H', W')``."""
        x = x.contiguous(memory_format=torch.channels_last)
        if self.max_pool and onednn_loop.applies(x) and not hooked([self.conv], self.conv.revision):
            # encode, conv and max pool into kept tensors (densenet.deploy.onednn_loop)
            conv = self.conv
            plan = self.onednn_plans.get(tuple(x.shape), lambda: onednn_loop.stem_plan(
                tuple(x.shape), torch.uint8, conv.weight, conv.bias, conv.stride, conv.padding, conv.relu, (3, 2, 1),
                (self.image.scale, self.image.zero_point, conv.weight_scale, conv.out.scale, conv.out.zero_point)),
                conv.revision)
            return onednn_loop.run_stem(plan, x, self.workspace, codes=True)
        q = self.conv(encode(x, self.image))
        return max_pool_codes(q) if self.max_pool else q


INPUT = "input"  # the quantization point of the image


def quantization_points(model: OptimizedDenseNet) -> list[str]:
    """The names of the maps stored as u8 codes: ``input`` (the image), then one per :class:`FrozenConv` (its
    output; ``conv0``: after the stem's max pool), in forward order."""
    return [INPUT] + [name for name, module in model.named_modules() if isinstance(module, FrozenConv)]


class QuantizedDenseNet(nn.Module):
    """The int8 model: float32 images in, float32 logits out. Carries ``config``, ``meta`` and ``qparams`` (the
    activation codes it was built with, by map name: :func:`quantization_points`)."""

    def __init__(self, model: OptimizedDenseNet, qparams: dict[str, QParams]) -> None:
        super().__init__()
        missing = sorted(set(quantization_points(model)) - set(qparams))
        if missing:
            raise ValueError(f"no activation range for {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}")
        self.config, self.meta, self.qparams = model.config, model.meta, dict(qparams)
        self.imagenet_stem = model.imagenet_stem
        current = qparams["conv0"]
        self.stem = QuantizedStem(model.conv0, qparams[INPUT], current, model.imagenet_stem)
        scale = zero = torch.empty(0)
        stages = []
        for index, stage in enumerate(model.stages):
            if isinstance(stage, FrozenDenseBlock):
                names = range(stage.num_layers)
                block = QuantizedDenseBlock(stage, current, [qparams[f"stages.{index}.conv1.{i}"] for i in names],
                                            [qparams[f"stages.{index}.conv2.{i}"] for i in names])
                scale, zero = block.channel_scale, block.channel_zero
                stages.append(block)
            else:
                current = qparams[f"stages.{index}.conv"]
                stages.append(QuantizedTransition(stage, scale, zero, current))
        self.stages = nn.ModuleList(stages)
        # σ(a·s·(q − z) + b) = σ((a·s)·q + (b − a·s·z))
        self.register_buffer("scale5", model.scale5.float() * scale.view(-1, 1, 1))
        self.register_buffer("shift5", model.shift5.float() - model.scale5.float() * (scale * zero).view(-1, 1, 1))
        self.classifier = model.classifier.float()
        self.onednn_plans = onednn_loop.PlanCache()  # the oneDNN head's, per batch size
        self.workspace = Workspace()  # its work tensors

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_chans, H, W)`` float32 → logits ``(N, num_classes)`` float32."""
        check_input(self.config, x)
        if x.dtype != torch.float32:
            raise ValueError(f"the int8 model takes float32 images, got {x.dtype}")
        if x.device.type != "cpu":
            raise ValueError(f"the int8 model runs on the CPU, got an input on {x.device}")
        with torch.autocast("cpu", enabled=False):
            q = self.stem(x)
            for stage in self.stages:
                q = stage(q)
            # O_k = (1/HW) Σ_ij σ(a·x + b)_ijk   [F4], then O = Wx + b   [F5]
            if onednn_loop.applies(q) and is_channels_last(q):  # in one call (or the pooled features in one pass)
                return onednn_loop.classify(q, self.scale5, self.shift5, self.classifier, torch.float32,
                                            self.onednn_plans, self.workspace)
            features = affine_relu(q.float(), self.scale5, self.shift5)  # (N, C, h, w)
            return self.classifier(features.mean(dim=(2, 3)))
