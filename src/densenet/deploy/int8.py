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
bottleneck's ReLU output (``z = 0``: zero padding is a real zero). A transition (average pool, then 1×1 conv) runs
as one 2×2 stride-2 convolution with the weight ``W/4`` in each tap, which is the same function [F3].

Kept in float32: the stem's convolution (3 input channels, the image itself; ~4.5% of densenet121's MACs) and the
final BN-ReLU, pooling and classifier.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.ao.quantization.observer import PerChannelMinMaxObserver

from densenet.deploy.optimize import FrozenConv, FrozenDenseBlock, FrozenTransition, OptimizedDenseNet, Workspace
from densenet.model import check_input
from densenet.nn.batchnorm import affine_relu

CODE_MIN, CODE_MAX = 0, 255  # u8 activation codes


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


class QConv(nn.Module):
    """``q_y = clamp(round(σ(Σ (s_x·s_w,o)·q_x·q_w + b)/s_y) + z_y, 0, 255)``: one oneDNN int8 convolution with
    the bias, the ReLU (σ, optional) and the requantization fused; int8 weights per output channel
    (:func:`quantize_weight`) packed once per input shape.

    ``x_zero`` (per input channel, optional): the input codes' offsets, for a convolution without padding; their
    term ``Σ W_q·z`` goes into the bias [Q1], computed with the *quantized* weights (the float weights would leave
    ``Σ (W_q − W)·z`` in every output: weight rounding times offsets near 128).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, x_scale: float, out: QParams, stride: int = 1,
                 padding: int = 0, relu: bool = False, x_zero: Tensor | None = None) -> None:
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
        self._packed: dict[tuple[int, ...], Tensor] = {}
        self._lock = threading.Lock()

    def forward(self, x: Tensor) -> Tensor:
        """u8 codes ``(N, C_in, H, W)`` → u8 codes ``(N, C_out, H', W')``, channels-last."""
        stride, padding = [self.stride] * 2, [self.padding] * 2
        return torch.ops.onednn.qconv_pointwise(
            x, self.x_scale, 0, self._packed_weight(x), self.weight_scale, self.weight_zero, self.bias, stride,
            padding, [1, 1], 1, self.out.scale, self.out.zero_point, None, "relu" if self.relu else "none", [], "")

    def _packed_weight(self, x: Tensor) -> Tensor:
        key = tuple(x.shape)
        packed = self._packed.get(key)
        if packed is None:
            with self._lock:
                packed = self._packed[key] = torch.ops.onednn.qconv_prepack(
                    self.weight, self.weight_scale, self.x_scale, 0, [self.stride] * 2, [self.padding] * 2, [1, 1],
                    1, list(key))
        return packed

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the packed weights (a cache) and the lock out."""
        return {**self.__dict__, "_packed": {}, "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

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
        self.conv1, self.conv2 = nn.ModuleList(), nn.ModuleList()
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
        k = self.growth_rate
        total = c0 + self.num_layers * k
        buffer = self.workspace.get("buffer", n * h * w * total, x).view(n, h, w, total)
        features = buffer.permute(0, 3, 1, 2)  # (N, C_0 + L·k, H, W) view
        features[:, :c0].copy_(x)
        scratch = self.workspace.get("scratch", n * h * w * (total - k), x)
        for index in range(self.num_layers):
            channels = c0 + index * k
            out = scratch[:n * h * w * channels].view(n, h, w, channels).permute(0, 3, 1, 2)
            clamped = torch.clamp(features[:, :channels], getattr(self, f"lo{index}"), getattr(self, f"hi{index}"),
                                  out=out)
            features[:, channels:channels + k].copy_(self.conv2[index](self.conv1[index](clamped)))
        return features


class QuantizedTransition(nn.Module):
    """:class:`~densenet.deploy.optimize.FrozenTransition` on u8 codes: ``clamp`` of the codes, then the average
    pool and the 1×1 conv as one 2×2 stride-2 int8 convolution (weight ``W/4`` in every tap) [F3]."""

    def __init__(self, transition: FrozenTransition, scale: Tensor, zero: Tensor, out: QParams) -> None:
        super().__init__()
        self.register_buffer("lo", code_bound(transition.lo, scale, zero, CODE_MIN))
        self.register_buffer("hi", code_bound(transition.hi, scale, zero, CODE_MAX))
        weight = scale_inputs(transition.conv.weight, scale) / 4
        self.conv = QConv(weight.expand(-1, -1, 2, 2), transition.conv.bias, 1.0, out, stride=2, x_zero=zero)
        self.workspace = Workspace()

    def forward(self, x: Tensor) -> Tensor:
        """u8 ``(N, C, H, W)`` → u8 ``(N, ⌊θ·C⌋, ⌊H/2⌋, ⌊W/2⌋)``."""
        n, c, h, w = x.shape
        out = self.workspace.get("clamped", x.numel(), x).view(n, h, w, c).permute(0, 3, 1, 2)
        return self.conv(torch.clamp(x, self.lo, self.hi, out=out))


def quantization_points(model: OptimizedDenseNet) -> list[str]:
    """The names of the maps stored as u8 codes, one per :class:`FrozenConv` (its output; ``conv0``: after the
    stem's max pool), in forward order."""
    return [name for name, module in model.named_modules() if isinstance(module, FrozenConv)]


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
        self.conv0 = model.conv0  # float32 (the image)
        self.stem = qparams["conv0"]
        current = self.stem
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

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_chans, H, W)`` float32 → logits ``(N, num_classes)`` float32."""
        check_input(self.config, x)
        if x.dtype != torch.float32:
            raise ValueError(f"the int8 model takes float32 images, got {x.dtype}")
        if x.device.type != "cpu":
            raise ValueError(f"the int8 model runs on the CPU, got an input on {x.device}")
        with torch.autocast("cpu", enabled=False):
            x = self.conv0(x.contiguous(memory_format=torch.channels_last))
            if self.imagenet_stem:
                x = F.max_pool2d(x, 3, 2, 1)
            q = encode(x, self.stem)
            for stage in self.stages:
                q = stage(q)
            features = affine_relu(q.float(), self.scale5, self.shift5)  # (N, C, h, w)
            # O_k = (1/HW) Σ_ij x_ijk   [F4], then O = Wx + b   [F5]
            return self.classifier(features.mean(dim=(2, 3)))
