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
:mod:`densenet.nn.batchnorm` computes it for training (``bn_relu_backward_into``, ``subtract_batch_terms``); BN2's
backward (:class:`densenet.nn.bottlenecks.Bottlenecks`) is that module's whole-tensor form on packed rows. The
tutorial's ``batch_norm_backward`` is the reference they are tested against.

Speed on small maps: there the number of operations per layer, not their size, sets the time (each costs a few µs
of dispatch), so per-layer vectors are computed once — BN1's affine in the forward and kept, BN2's for all layers
at once — and per-channel work on narrow rows runs on packed rows (:mod:`densenet.nn.rows`).

On the CPU (float32, float64, bfloat16, outside ``torch.compile``) every BN-ReLU pass over the rows — the affine-ReLU
and its recomputation, BN1's and BN2's backward, a new map's statistics, the settled gradients — runs in one fused
kernel (:mod:`densenet.nn.fused`) instead of ATen's two to five operations; the forward records which, and the
backward follows it.

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

from densenet.nn import fused
from densenet.nn.batchnorm import (
    affine,
    bn_relu_backward_into,
    channel_stats,
    count_batches,
    in_dtype,
    row_chunk_scratch,
    running_affine,
    subtract_batch_terms,
    update_running_stats_each,
    update_running_stats_of,
)
from densenet.nn.bottlenecks import Bottlenecks, bn2_relu_forward
from densenet.nn.dims import BatchNorm, channels_last, conv, conv_backward
from densenet.nn.double_backward import announce, differentiable_grads, plain_block
from densenet.nn.rows import image, pack_factor, packed, rows_of
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
    features = image(buffer, n, spatial)  # (N, C_0 + L·k, *spatial)
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
    relu2_rows = x.new_empty((m, width))  # σ(BN2(z)) of the current layer
    stats2 = torch.empty((num_layers, 2, width), dtype=stat_dtype, device=x.device)
    saves2 = [pair.unbind(0) for pair in stats2.unbind(0)]  # per layer: where BN2's μ and 1/σ go
    factors2 = count_batches(spec.norms2) if training else []
    masks: list[Tensor] = []
    # per layer, for the backward: BN1's a, b in the form the BN-ReLU computes with (_bn1_relu), a, μ, 1/σ
    affines1: list[tuple[Tensor, ...]] = []
    use_fused = fused.applies(buffer)  # the fused CPU kernels (nn.fused), or ATen's operations

    for index in range(num_layers):
        channels = c0 + index * k
        gamma1, beta1, weight1 = params[index * per_layer:index * per_layer + 3]
        if training:
            layer_mean, layer_invstd = mean[:channels], invstd[:channels]
            scale, shift = affine(gamma1, beta1, layer_mean, layer_invstd)
        else:
            scale, shift, layer_mean, layer_invstd = running_affine(spec.norms1[index], gamma1, beta1)
        affine1 = _bn1_affine(scale, shift, buffer, use_fused)
        if keep:
            affines1.append((*affine1, scale, *_bn1_stats(layer_mean, layer_invstd, buffer, use_fused)))
        # r = σ(BN1([x_0, …, x_{l−1}])) = σ(a·x + b)
        relu1 = _bn1_relu(buffer.narrow(1, 0, channels), *affine1, scratch[:m * channels].view(m, channels),
                          use_fused)
        relu1 = image(relu1, n, spatial)
        if spec.bottleneck:
            gamma2, beta2, weight2 = params[index * per_layer + 3:(index + 1) * per_layer]
            # z = W1 ∗ r, the 1×1 bottleneck conv, kept in the slab; r2 = σ(BN2(z))
            relu2 = bn2_relu_forward(conv(relu1, weight1, None, _STRIDE_ONE, _PAD_ZERO),
                                     bottlenecks[index if kept else 0], relu2_rows, gamma2, beta2, spec.norms2[index],
                                     saves2[index], factors2[index] if training else None, use_fused)
            # x_l = W2 ∗ σ(BN2(z)), 3×3 conv pad 1
            new = conv(relu2, weight2, None, _STRIDE_ONE, _PAD_ONE)  # (N, k, *spatial)
        else:
            new = conv(relu1, weight1, None, _STRIDE_ONE, _PAD_ONE)  # (N, k, *spatial)
        if spec.drop_rate > 0 and training:
            mask = dropout_mask(new, spec.drop_rate)
            # O = D ⊙ x / (1 − p)   [F6]
            new = dropout_forward(new, mask, spec.drop_rate)
            if keep:
                masks.append(mask)
        # x_l = H_l([x_0, …, x_{l−1}]), written into the buffer   [F2], with its batch statistics
        if use_fused and training:  # in one pass
            fused.copy_rows_with_stats(rows_of(new), buffer.narrow(1, channels, k), eps, mean[channels:channels + k],
                                       invstd[channels:channels + k])
        else:
            features.narrow(1, channels, k).copy_(new)
            if training:
                mean[channels:channels + k], invstd[channels:channels + k] = channel_stats(new, eps)

    if training:  # every channel's statistics are known now: the running ones move once
        update_running_stats_of(spec.norms1, mean, invstd, m)
        if use_fused and spec.bottleneck:  # BN2's too (ATen's native_batch_norm moved them already)
            update_running_stats_each(spec.norms2, stats2, factors2, m)
    if not spec.bottleneck:
        bottlenecks, stats2 = bottlenecks[:0], stats2[:0]
    elif spec.recompute_bottleneck:
        bottlenecks = bottlenecks.new_empty((0, m, width))  # not a view: the scratch slab is freed
    return features, {"mean": mean, "invstd": invstd, "bottlenecks": bottlenecks, "stats2": stats2, "masks": masks,
                      "affines1": affines1, "fused": use_fused}


def dense_block_backward(
    spec: BlockSpec, saved: dict[str, Any], grad_out: Tensor, params: tuple[Tensor, ...], training: bool,
    needs_input_grad: bool, needs_param_grad: tuple[bool, ...],
) -> tuple[Tensor | None, list[Tensor | None]]:
    """The gradient of the block input and of every parameter [F2b], walking the layers in reverse.

    ``∂L/∂x_j = ∂L/∂out[x_j] + Σ_{l > j} ∂H_l/∂x_j``, accumulated in one shared gradient buffer.

    Longer than ~60 lines for the reason :func:`dense_block_forward` is: one reverse loop whose in-place writes
    into the shared gradient buffer and scratch tensors must be read in order. Per-layer vectors come from the
    forward's record (BN1's affine) or are computed for all layers at once
    (:class:`densenet.nn.bottlenecks.Bottlenecks`): on small maps the number of operations per layer, not their
    size, sets the time.
    """
    features: Tensor = saved["features"]
    n, total, *spatial = features.shape
    k, num_layers, per_layer = spec.growth_rate, len(spec.norms1), spec.params_per_layer
    c0, m = total - num_layers * k, features.numel() // total
    buffer = rows_of(features)  # (M, C_0 + L·k)
    grad = torch.empty_like(buffer)  # (M, C_0 + L·k): ∂L/∂[x_0, …, x_L], the shared gradient buffer
    image(grad, n, spatial).copy_(grad_out)
    mean, invstd = saved["mean"], saved["invstd"]
    # ∂L/∂x_c also holds Σ_l (c_l + d_l·x̂_c) over the layers l reading channel c: summed here, added once.
    deferred_offset = torch.zeros_like(mean)
    deferred_slope = torch.zeros_like(mean)
    relu_scratch = features.new_empty(m * (total - k))  # recomputed σ(BN1(·)); between layers a free scratch

    use_fused = saved["fused"]  # the forward's choice: the same BN-ReLU arithmetic

    def settled(start: int, stop: int) -> Tensor:
        """The complete gradient of channels ``start:stop`` once every layer reading them is done, as a new
        contiguous ``(M, stop − start)`` tensor: the shared buffer's columns plus the deferred BN terms,
        ``c + d·x̂ = (c − d·μ/σ) + (d/σ)·x``: in one pass of the fused kernel, or (ATen's operations) the strided
        columns copied out first and the per-channel terms applied on packed rows (:mod:`densenet.nn.rows`), in the
        activations' dtype (no cast copies)."""
        width = stop - start
        if not training:
            return grad.narrow(1, start, width).clone(memory_format=torch.contiguous_format)  # (M, stop − start)
        slope = deferred_slope[start:stop] * invstd[start:stop]
        offset = torch.addcmul(deferred_offset[start:stop], slope, mean[start:stop], value=-1)
        if use_fused:  # in one pass (nn.fused)
            return fused.affine_add_rows(grad.narrow(1, start, width), buffer.narrow(1, start, width), slope, offset,
                                         grad.new_empty((m, width)))
        complete = grad.narrow(1, start, width).clone(memory_format=torch.contiguous_format)  # (M, stop − start)
        x = relu_scratch[:m * width].view(m, width).copy_(buffer.narrow(1, start, width))  # (M, stop − start)
        factor = pack_factor(m, width)
        packed(complete, factor).addcmul_(packed(x, factor), in_dtype(slope, x.dtype).repeat(factor)).add_(
            in_dtype(offset, x.dtype).repeat(factor))
        return complete

    chunk_scratch = None if use_fused else row_chunk_scratch(features, m, total - k)  # BN1 backward's row copies
    bottlenecks = (Bottlenecks(spec, saved, params, m, n, tuple(spatial), training, use_fused)
                   if spec.bottleneck else None)
    param_grads: list[Tensor | None] = [None] * len(params)

    for index in reversed(range(num_layers)):
        channels = c0 + index * k
        offset = index * per_layer
        weight1 = params[offset + 2]
        scale_b, shift_b, scale, layer_mean, layer_invstd = saved["affines1"][index]
        grad_new = image(settled(channels, channels + k), n, spatial)  # (N, k, *spatial): complete ∂L/∂x_l
        if spec.drop_rate > 0 and training:
            # ∂L/∂x = D ⊙ δ / (1 − p)   [F6b]
            grad_new = channels_last(dropout_backward(grad_new, saved["masks"][index], spec.drop_rate))
        inputs = buffer.narrow(1, 0, channels)  # (M, C_l) view of [x_0, …, x_{l−1}]
        # r1 = σ(a·x + b), recomputed
        relu1_rows = _bn1_relu(inputs, scale_b, shift_b, relu_scratch[:m * channels].view(m, channels), use_fused)
        relu1 = image(relu1_rows, n, spatial)
        if bottlenecks is not None:
            # z = W1 ∗ r1 again when the forward did not keep it
            recomputed = (channels_last(conv(relu1, weight1, None, _STRIDE_ONE, _PAD_ZERO))
                          if spec.recompute_bottleneck else None)
            grad_z = bottlenecks.backward(index, grad_new, params[offset + 5], needs_param_grad[offset + 5],
                                          param_grads, offset, recomputed)
            # ∂L/∂r1 = W1ᵀ ∗ δ_z, ∂L/∂W1 = r1 ⋆ δ_z for the 1×1 conv   [F1b]
            grad_relu1, param_grads[offset + 2], _ = conv_backward(
                grad_z, relu1, weight1, False, _STRIDE_ONE, _PAD_ZERO, (True, needs_param_grad[offset + 2], False))
        else:
            grad_relu1, param_grads[offset + 2], _ = conv_backward(
                grad_new, relu1, weight1, False, _STRIDE_ONE, _PAD_ONE, (True, needs_param_grad[offset + 2], False))
        grad_relu1 = rows_of(channels_last(grad_relu1))  # (M, C_l)
        # ∂L/∂x_j += ∂H_l/∂x_j for every j < l, added into the shared gradient buffer   [F2b]
        # BN1 backward [BN]: ∂L/∂x += a·δ now, into the shared gradient buffer (nn.batchnorm.bn_relu_backward_into)
        if use_fused:
            grad_gamma1, grad_beta1 = fused.bn_relu_backward_rows(grad.narrow(1, 0, channels), grad_relu1, inputs,
                                                                  scale_b, shift_b, layer_mean, layer_invstd)
        else:
            grad_gamma1, grad_beta1 = bn_relu_backward_into(grad.narrow(1, 0, channels), grad_relu1, relu1_rows,
                                                            inputs, scale_b, layer_mean, layer_invstd, chunk_scratch)
        param_grads[offset], param_grads[offset + 1] = grad_gamma1, grad_beta1
        # ∂L/∂x = a·δ was added; −(a/M)(Σδ + x̂·Σδx̂) is deferred (training only: running statistics are constants)
        if training:
            subtract_batch_terms(deferred_offset.narrow(0, 0, channels), deferred_slope.narrow(0, 0, channels), scale,
                                 grad_gamma1, grad_beta1, m)

    grad_input = image(settled(0, c0), n, spatial) if needs_input_grad else None
    return grad_input, [g if needed else None for g, needed in zip(param_grads, needs_param_grad, strict=True)]


def _bn1_affine(scale: Tensor, shift: Tensor, rows: Tensor, use_fused: bool) -> tuple[Tensor, Tensor]:
    """BN1's ``a``, ``b`` as :func:`_bn1_relu` computes with them: in the fused kernels' arithmetic type, or in the
    activations' dtype for ATen's operations."""
    if use_fused:
        return fused.opmath(scale, rows), fused.opmath(shift, rows)
    return in_dtype(scale, rows.dtype), in_dtype(shift, rows.dtype)


def _bn1_stats(mean: Tensor, invstd: Tensor, rows: Tensor, use_fused: bool) -> tuple[Tensor, Tensor]:
    """BN1's ``μ``, ``1/σ`` as the BN-ReLU backward takes them (the fused kernel: its arithmetic type)."""
    if use_fused:
        return fused.opmath(mean, rows), fused.opmath(invstd, rows)
    return mean, invstd


def _bn1_relu(inputs: Tensor, scale: Tensor, shift: Tensor, out: Tensor, use_fused: bool) -> Tensor:
    """``r = σ(a·x + b)`` of ``(M, C_l)`` rows into ``out`` [BN]: the fused kernel in one pass, or ATen's
    ``addcmul`` and ``clamp_min_`` (``a``, ``b`` from :func:`_bn1_affine`)."""
    if use_fused:
        return fused.affine_relu_rows(inputs, scale, shift, out)
    return torch.addcmul(shift, inputs, scale, out=out).clamp_min_(0)


class DenseBlockFunction(torch.autograd.Function):
    """One autograd node for a whole dense block [F2, F2b]; see the module docstring."""

    @staticmethod
    def forward(ctx: FunctionCtx, spec: BlockSpec, training: bool, x: Tensor, *params: Tensor) -> Tensor:
        features, record = dense_block_forward(spec, x, params, training, keep=True)
        ctx.spec, ctx.training, ctx.num_masks = spec, training, len(record["masks"])
        ctx.affines1 = record["affines1"]  # small per-layer vectors, not inputs or outputs: kept on ctx
        ctx.fused = record["fused"]
        ctx.save_for_backward(features, record["mean"], record["invstd"], record["bottlenecks"], record["stats2"],
                              *record["masks"], *params)
        return features

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        features, mean, invstd, bottlenecks, stats2, *rest = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient is wanted
            return (None, None, *_differentiable_backward(ctx, features, rest, grad_out))
        saved = {"features": features, "mean": mean, "invstd": invstd, "bottlenecks": bottlenecks, "stats2": stats2,
                 "masks": rest[:ctx.num_masks], "affines1": ctx.affines1, "fused": ctx.fused}
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
