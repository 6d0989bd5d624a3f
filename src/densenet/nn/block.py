"""The dense block as one autograd Function: shared feature buffer forward, hand-written backward [F2, F2b].

Forward. Layer ``l`` of a block computes ``x_l = H_l([x_0, …, x_{l−1}])`` [F2]. Instead of re-concatenating the
earlier maps before every layer (memory quadratic in depth), every map is written once into one preallocated
buffer of ``C_0 + L·k`` channels, and layer ``l`` reads the view of its first ``C_0 + l·k`` channels.

The buffer is stored channels-last, ``(N, H, W, C)`` — logically ``(N, C, H, W)`` with channels-last strides —
so the view of the first channels is a ``(M, C_l)`` matrix with ``M = N·H·W`` rows, the 1×1 bottleneck conv is
one matrix product, and per-channel batch-norm affines broadcast along the contiguous axis. The same holds in
every spatial dimension ``d`` (:mod:`densenet.nn.dims`): signals ``(N, L, C)`` with ``M = N·L``, volumes
``(N, D, H, W, C)`` with ``M = N·D·H·W``; only the convolutions (``F.conv{d}d``) and their backward see ``d``.

Batch norm in training mode normalises each channel with the batch mean and variance of that channel. A
channel of the buffer is read by every later layer, and its batch statistics are the same for all of them, so
they are computed once, when the channel is written; each layer's BN1 is then the per-channel affine
``a·x + b`` with ``a = γ/σ``, ``b = β − μ·a`` of its own ``γ, β``.

Backward. ``∂L/∂x_j`` for an earlier map is the sum of what each later layer sends back [F2b]:
``∂L/∂x_j = ∂L/∂out[x_j] + Σ_{l > j} ∂H_l/∂x_j``. The layers are walked in reverse; each one recomputes its
BN-ReLU into one shared scratch tensor (it is not stored), and adds its contribution to the channels it reads
into one shared gradient buffer. When layer ``l`` is reached, every later layer has already added its share to
the ``k`` channels ``x_l``, so their gradient is complete.

The batch-norm backward of layer ``l`` for an input channel is
``∂L/∂x = a·(δ − (1/M)Σδ − x̂·(1/M)Σδx̂)``: the ``a·δ`` part is added at once; the rest is ``c + d·x̂`` with
per-channel constants, and since ``x̂`` is the same for every layer reading the channel, the constants are summed
over layers and applied once per channel, when its gradient is needed. Both parts are [BN] (docs/MATH.md) as
:mod:`densenet.nn.batchnorm` computes it for training (``bn_relu_backward_into``, ``batch_terms``); BN2 uses that
module's whole-tensor form. The tutorial's ``batch_norm_backward`` is the reference they are tested against.

Saved for backward: the feature buffer, each layer's bottleneck output (a 1×1 conv is not cheap to recompute),
per-channel batch statistics, dropout masks — memory linear in depth. Volumes recompute the bottleneck output in
the backward instead (``BlockSpec.recompute_bottleneck``): in 3D the first block's bottleneck outputs are about half
of everything a DenseNet-121 step saves, and the 1×1 convs a few % of its work (benchmarks/NOTES.md). Running
statistics are updated exactly once per forward.

The same idea serves the stem and the transitions (:mod:`densenet.nn.recompute`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from densenet.nn.batchnorm import (
    affine,
    affine_relu,
    batch_terms,
    bn_relu_backward_into,
    channel_stats,
    count_batch,
    input_grad,
    parameter_grads,
    running_affine,
    update_running_stats,
)
from densenet.nn.dims import BatchNorm, channels_last, conv, conv_backward
from densenet.nn.double_backward import announce, differentiable_grads, plain_block
from densenet.tutorial import dropout_backward, dropout_forward, dropout_mask

_STRIDE_ONE = 1
_PAD_ZERO = 0
_PAD_ONE = 1


@dataclass(frozen=True)
class BlockSpec:
    """What the Function needs besides tensors: the layers' batch norms (for ε, momentum and running
    statistics), the growth rate and the dropout rate. Without ``norms2`` the layers have no bottleneck; with
    ``recompute_bottleneck`` the backward recomputes each layer's 1×1 conv output ``z = W1 ∗ r1`` instead of saving
    it."""

    norms1: tuple[BatchNorm, ...]
    norms2: tuple[BatchNorm, ...]
    growth_rate: int
    drop_rate: float
    recompute_bottleneck: bool = False

    @property
    def bottleneck(self) -> bool:
        """Whether each layer has BN2 and a 1×1 bottleneck conv."""
        return bool(self.norms2)

    @property
    def params_per_layer(self) -> int:
        """γ1, β1, W1 (+ γ2, β2, W2 with bottleneck)."""
        return 6 if self.bottleneck else 3


def _image(rows: Tensor, n: int, spatial: tuple[int, ...]) -> Tensor:
    """``(M, C)`` rows → ``(N, C, *spatial)`` view with channels-last strides (``M = N·∏ spatial``)."""
    return rows.view(n, *spatial, rows.shape[1]).movedim(-1, 1)


def _rows(image: Tensor) -> Tensor:
    """``(N, C, *spatial)`` → ``(M, C)`` rows; a view for channels-last tensors."""
    return image.movedim(1, -1).reshape(-1, image.shape[1])


def _planar(image: Tensor) -> Tensor:
    """A signal's ``(N, C, L)`` channels-last view as ``(N, C, 1, L)``, images and volumes unchanged.

    ``native_batch_norm.out`` writes a 3-D ``out`` with channels-last strides as if it were contiguous (torch 2.14,
    CPU): 1-D has no channels-last memory format for the kernel to recognise. With a unit height the same memory
    is a 2-D channels-last tensor, which it handles.
    """
    return image.unsqueeze(2) if image.dim() == 3 else image


def dense_block_forward(
    spec: BlockSpec, x: Tensor, params: tuple[Tensor, ...], training: bool, keep: bool
) -> tuple[Tensor, dict[str, Any]]:
    """``[x_0, x_1, …, x_L]`` with ``x_l = H_l([x_0, …, x_{l−1}])`` [F2], in one channels-last buffer.

    Longer than ~60 lines on purpose: one loop over the layers writing into shared buffers and scratch tensors in
    a fixed order; split up, a dozen buffers would travel between functions and the order of in-place writes
    (what makes it memory-linear) would be harder to read.

    Args:
        spec: the block's layers.
        x: ``(N, C_0, *spatial)``.
        params: per layer ``γ1, β1, W1`` (+ ``γ2, β2, W2``).
        training: batch statistics (the running ones updated once) or running statistics.
        keep: record what the backward needs.

    Returns:
        ``(N, C_0 + L·k, *spatial)`` with channels-last strides, and the record for the backward.
    """
    n, c0, *spatial = x.shape
    k, num_layers, per_layer = spec.growth_rate, len(spec.norms1), spec.params_per_layer
    total, m = c0 + num_layers * k, x.numel() // c0
    eps = spec.norms1[0].eps
    buffer = x.new_empty((m, total))  # (M, C_0 + L·k): [x_0, …, x_L], one row per pixel
    features = _image(buffer, n, spatial)  # (N, C_0 + L·k, *spatial)
    features[:, :c0].copy_(x)
    stat_dtype = torch.promote_types(x.dtype, torch.float32)
    mean = torch.zeros(total, dtype=stat_dtype, device=x.device)  # batch μ of every channel, set when written
    invstd = torch.ones(total, dtype=stat_dtype, device=x.device)  # batch 1/√(σ² + ε), likewise
    if training:
        mean[:c0], invstd[:c0] = channel_stats(x, eps)
    scratch = x.new_empty(m * (total - k))  # σ(BN1(·)) of the current layer
    width = params[3].shape[0] if spec.bottleneck else 0
    # One slab for every layer's bottleneck output (kept for backward) and one scratch for σ(BN2(·)): a few
    # large allocations instead of two per layer, which would fragment the heap.
    kept = keep and not spec.recompute_bottleneck  # every layer's bottleneck output saved, not recomputed
    bottlenecks = x.new_empty((num_layers if kept else 1, m, width))
    relu2 = _image(x.new_empty((m, width)), n, spatial)
    stats2 = torch.empty((num_layers, 2, width), dtype=stat_dtype, device=x.device)
    masks: list[Tensor] = []

    for index in range(num_layers):
        channels = c0 + index * k
        gamma1, beta1, weight1 = params[index * per_layer:index * per_layer + 3]
        norm1 = spec.norms1[index]
        if training:
            update_running_stats(norm1, mean[:channels], invstd[:channels], m)
            scale, shift = affine(gamma1, beta1, mean[:channels], invstd[:channels])
        else:
            scale, shift, _, _ = running_affine(norm1, gamma1, beta1)
        # r = σ(BN1([x_0, …, x_{l−1}]))
        relu1 = _image(affine_relu(buffer[:, :channels], scale, shift, out=scratch[:m * channels].view(m, channels)),
                       n, spatial)
        if spec.bottleneck:
            gamma2, beta2, weight2 = params[index * per_layer + 3:(index + 1) * per_layer]
            norm2 = spec.norms2[index]
            # z = W1 ∗ r, the 1×1 bottleneck conv
            bottleneck = _image(bottlenecks[index if kept else 0], n, spatial)  # (N, 4k, *spatial)
            bottleneck.copy_(conv(relu1, weight1, None, _STRIDE_ONE, _PAD_ZERO))
            z, out = _planar(bottleneck), _planar(relu2)
            if training:
                torch.ops.aten.native_batch_norm.out(
                    z, gamma2, beta2, norm2.running_mean, norm2.running_var, True, count_batch(norm2),
                    norm2.eps, out=out, save_mean=stats2[index, 0], save_invstd=stats2[index, 1])
            else:
                torch.ops.aten.native_batch_norm.out(
                    z, gamma2, beta2, norm2.running_mean, norm2.running_var, False, 0.0, norm2.eps,
                    out=out, save_mean=stats2[index, 0], save_invstd=stats2[index, 1])
                stats2[index, 0], stats2[index, 1] = norm2.running_mean, torch.rsqrt(norm2.running_var + norm2.eps)
            # x_l = W2 ∗ σ(BN2(z)), 3×3 conv pad 1
            new = conv(relu2.clamp_min_(0), weight2, None, _STRIDE_ONE, _PAD_ONE)  # (N, k, *spatial)
        else:
            new = conv(relu1, weight1, None, _STRIDE_ONE, _PAD_ONE)  # (N, k, *spatial)
        if spec.drop_rate > 0 and training:
            mask = dropout_mask(new, spec.drop_rate)
            # O = D ⊙ x / (1 − p)   [F6]
            new = dropout_forward(new, mask, spec.drop_rate)
            if keep:
                masks.append(mask)
        # x_l = H_l([x_0, …, x_{l−1}]), written into the buffer   [F2]
        features[:, channels:channels + k].copy_(new)
        if training:
            mean[channels:channels + k], invstd[channels:channels + k] = channel_stats(new, eps)

    if not spec.bottleneck:
        bottlenecks, stats2 = bottlenecks[:0], stats2[:0]
    elif spec.recompute_bottleneck:
        bottlenecks = bottlenecks.new_empty((0, m, width))  # not a view: the scratch slab is freed
    return features, {"mean": mean, "invstd": invstd, "bottlenecks": bottlenecks, "stats2": stats2, "masks": masks}


def dense_block_backward(
    spec: BlockSpec, saved: dict[str, Any], grad_out: Tensor, params: tuple[Tensor, ...], training: bool,
    needs_input_grad: bool, needs_param_grad: tuple[bool, ...],
) -> tuple[Tensor | None, list[Tensor | None]]:
    """The gradient of the block input and of every parameter [F2b], walking the layers in reverse.

    ``∂L/∂x_j = ∂L/∂out[x_j] + Σ_{l > j} ∂H_l/∂x_j``, accumulated in one shared gradient buffer.

    Longer than ~60 lines for the reason :func:`dense_block_forward` is: one reverse loop whose in-place writes
    into the shared gradient buffer and scratch tensors must be read in order.
    """
    features: Tensor = saved["features"]
    n, total, *spatial = features.shape
    k, num_layers, per_layer = spec.growth_rate, len(spec.norms1), spec.params_per_layer
    c0, m = total - num_layers * k, features.numel() // total
    buffer = _rows(features)  # (M, C_0 + L·k)
    grad = torch.empty_like(buffer)  # (M, C_0 + L·k): ∂L/∂[x_0, …, x_L], the shared gradient buffer
    _image(grad, n, spatial).copy_(grad_out)
    mean, invstd = saved["mean"], saved["invstd"]
    # ∂L/∂x_c also holds Σ_l (c_l + d_l·x̂_c) over the layers l reading channel c: summed here, added once.
    deferred_offset = torch.zeros_like(mean)
    deferred_slope = torch.zeros_like(mean)

    def settle(start: int, stop: int) -> None:
        """Add the deferred BN terms of channels ``start:stop`` once every layer reading them is done."""
        if training:
            x_hat = (buffer[:, start:stop] - mean[start:stop]) * invstd[start:stop]  # (M, stop − start)
            grad[:, start:stop].add_(torch.addcmul(deferred_offset[start:stop], x_hat, deferred_slope[start:stop]))

    relu_scratch = features.new_empty(m * (total - k))  # recomputed σ(BN1(·))
    relu2_scratch = features.new_empty((m, params[3].shape[0])) if spec.bottleneck else None
    param_grads: list[Tensor | None] = [None] * len(params)

    for index in reversed(range(num_layers)):
        channels = c0 + index * k
        offset = index * per_layer
        gamma1, beta1, weight1 = params[offset:offset + 3]
        settle(channels, channels + k)
        grad_new = _image(grad[:, channels:channels + k], n, spatial)  # (N, k, *spatial): complete ∂L/∂x_l
        if spec.drop_rate > 0 and training:
            # ∂L/∂x = D ⊙ δ / (1 − p)   [F6b]
            grad_new = dropout_backward(grad_new, saved["masks"][index], spec.drop_rate)
        grad_new = channels_last(grad_new)
        inputs = buffer[:, :channels]  # (M, C_l) view of [x_0, …, x_{l−1}]
        if training:
            layer_mean, layer_invstd = mean[:channels], invstd[:channels]
            scale, shift = affine(gamma1, beta1, layer_mean, layer_invstd)
        else:
            scale, shift, layer_mean, layer_invstd = running_affine(spec.norms1[index], gamma1, beta1)
        relu1 = _image(affine_relu(inputs, scale, shift, out=relu_scratch[:m * channels].view(m, channels)), n, spatial)

        if spec.bottleneck:
            gamma2, _, weight2 = params[offset + 3:offset + 6]
            bottleneck = (channels_last(conv(relu1, weight1, None, _STRIDE_ONE, _PAD_ZERO))  # z = W1 ∗ r1, again
                          if spec.recompute_bottleneck else _image(saved["bottlenecks"][index], n, spatial))
            mean2, invstd2 = saved["stats2"][index]
            scale2, shift2 = affine(gamma2, params[offset + 4], mean2, invstd2)
            relu2 = _image(affine_relu(_rows(bottleneck), scale2, shift2, out=relu2_scratch), n, spatial)
            # ∂L/∂r2 = W2ᵀ ∗ δ, ∂L/∂W2 = r2 ⋆ δ   [F1b]
            grad_relu2, param_grads[offset + 5], _ = conv_backward(
                grad_new, relu2, weight2, False, _STRIDE_ONE, _PAD_ONE, (True, needs_param_grad[offset + 5], False))
            # through σ: δ ⊙ 1[r2 > 0]
            grad_u2 = torch.ops.aten.threshold_backward.grad_input(grad_relu2, relu2, 0, grad_input=grad_relu2)
            eps2 = spec.norms2[index].eps
            grad_gamma2, grad_beta2 = parameter_grads(grad_u2, bottleneck, gamma2, mean2, invstd2, training, eps2)
            param_grads[offset + 3], param_grads[offset + 4] = grad_gamma2, grad_beta2
            grad_z = input_grad(grad_u2, bottleneck, gamma2, mean2, invstd2, grad_gamma2, grad_beta2, training,
                                out=_image(relu2_scratch, n, spatial))  # into the scratch: σ(BN2(z)) is done with
            # ∂L/∂r1 = W1ᵀ ∗ δ_z, ∂L/∂W1 = r1 ⋆ δ_z for the 1×1 conv   [F1b]
            grad_relu1, param_grads[offset + 2], _ = conv_backward(
                grad_z, relu1, weight1, False, _STRIDE_ONE, _PAD_ZERO, (True, needs_param_grad[offset + 2], False))
        else:
            grad_relu1, param_grads[offset + 2], _ = conv_backward(
                grad_new, relu1, weight1, False, _STRIDE_ONE, _PAD_ONE, (True, needs_param_grad[offset + 2], False))
        grad_relu1 = _rows(channels_last(grad_relu1))  # (M, C_l)
        # ∂L/∂x_j += ∂H_l/∂x_j for every j < l, added into the shared gradient buffer   [F2b]
        # BN1 backward [BN]: ∂L/∂x += a·δ now, into the shared gradient buffer (nn.batchnorm.bn_relu_backward_into)
        grad_gamma1, grad_beta1 = bn_relu_backward_into(grad[:, :channels], grad_relu1, _rows(relu1), inputs, scale,
                                                        layer_mean, layer_invstd)
        param_grads[offset], param_grads[offset + 1] = grad_gamma1, grad_beta1
        # ∂L/∂x = a·δ was added; −(a/M)(Σδ + x̂·Σδx̂) is deferred (training only: running statistics are constants)
        if training:
            offset_term, slope_term = batch_terms(scale, grad_gamma1, grad_beta1, m)
            deferred_offset[:channels] -= offset_term
            deferred_slope[:channels] -= slope_term

    settle(0, c0)
    grad_input = _image(grad[:, :c0], n, spatial) if needs_input_grad else None
    return grad_input, [g if needed else None for g, needed in zip(param_grads, needs_param_grad, strict=True)]


class DenseBlockFunction(torch.autograd.Function):
    """One autograd node for a whole dense block [F2, F2b]; see the module docstring."""

    @staticmethod
    def forward(ctx: FunctionCtx, spec: BlockSpec, training: bool, x: Tensor, *params: Tensor) -> Tensor:
        features, record = dense_block_forward(spec, x, params, training, keep=True)
        ctx.spec, ctx.training, ctx.num_masks = spec, training, len(record["masks"])
        ctx.save_for_backward(features, record["mean"], record["invstd"], record["bottlenecks"], record["stats2"],
                              *record["masks"], *params)
        return features

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        features, mean, invstd, bottlenecks, stats2, *rest = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient is wanted
            return (None, None, *_differentiable_backward(ctx, features, rest, grad_out))
        saved = {"features": features, "mean": mean, "invstd": invstd, "bottlenecks": bottlenecks, "stats2": stats2,
                 "masks": rest[:ctx.num_masks]}
        grad_input, param_grads = dense_block_backward(
            ctx.spec, saved, grad_out, tuple(rest[ctx.num_masks:]), ctx.training, ctx.needs_input_grad[2],
            tuple(ctx.needs_input_grad[3:]))
        return (None, None, grad_input, *param_grads)


def _differentiable_backward(ctx: Any, features: Tensor, rest: list[Tensor], grad_out: Tensor) -> list[Tensor | None]:
    """The block's input and parameter gradients, recorded for double backward (:mod:`densenet.nn.double_backward`).

    The input ``x_0`` is read back from the saved output's first ``C_0`` channels, which hold it unchanged: in the
    graph they are this Function's own output, whose derivative with respect to the input is the identity there,
    so second derivatives reach the real input through this node once more. That second visit brings a gradient
    on the ``x_0`` channels only, whose exact answer is the identity (the new maps received nothing): it is
    returned at once, which also ends the recursion.
    """
    spec: BlockSpec = ctx.spec
    masks, params = rest[:ctx.num_masks], rest[ctx.num_masks:]
    c0 = features.shape[1] - len(spec.norms1) * spec.growth_rate
    if not grad_out[:, c0:].any():  # only x_0 = out[:, :C_0] is differentiated: ∂out/∂x_0 there is the identity
        return [grad_out[:, :c0], *(None for _ in params)]
    announce("dense block")
    x = features[:, :c0]  # (N, C_0, *spatial)
    with torch.enable_grad():
        output = plain_block(spec.norms1, spec.norms2, x, params, masks, spec.drop_rate, ctx.training)
    return differentiable_grads(output, [x, *params], grad_out)
