"""The stem and the transitions' BN-ReLU-pool as autograd Functions that keep their input, not their outputs.

A plain autograd graph keeps, for ``pool(σ(BN(z)))``, the BN input, the ReLU output (a full-size map) and, for
a max-pool, its int64 argmax indices. :class:`ConvBatchNormReLUPoolFunction` keeps only its input and the
batch statistics and recomputes the rest in the backward — cheap elementwise work next to the convolutions:

- transitions (``conv=None``): ``x`` is the dense block's feature buffer, which the block keeps anyway; then
  ``pool(σ(BN(x)))`` with the 2×2 average pool [F3] (whose 1×1 conv, outside, runs on the pooled maps);
- the ImageNet stem (with ``conv``): ``x`` is the input image, ``O = σ(BN(W ∗ x))`` [F1] then the 3×3/2
  max-pool; the backward recomputes ``W ∗ x`` (a few % of the network's MACs) instead of keeping a
  ``64×112×112`` map per image, and runs F1b: ``∂L/∂W = X ⋆ (δ ⊙ σ')`` through the batch norm.

Running statistics are updated exactly once, in the forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from densenet.nn import dims as nd
from densenet.nn import fused
from densenet.nn.batchnorm import affine, affine_relu, count_batch, input_grad, parameter_grads
from densenet.nn.double_backward import announce, differentiable_grads
from densenet.nn.rows import image, rows_of

Pool = tuple[str, int, int, int]  # kind ("avg" | "max"), kernel, stride, padding (the same along every axis)
Conv = tuple[tuple[int, ...], tuple[int, ...]]  # stride, padding, one per spatial axis


class ConvBatchNormReLUPoolFunction(torch.autograd.Function):
    """``pool(σ(BN(conv(x))))`` in training mode (``conv`` optional), saving ``x`` and the batch statistics.

    For a transition, ``pool(σ(BN(x)))`` with the 2×2 average pool [F3] (backward [F3b]); for the ImageNet stem,
    ``O = σ(BN(W ∗ x))`` [F1] (backward [F1b]) then the 3×3/2 max-pool.

    Under autocast the conv runs in the autocast dtype, cast explicitly so that the backward's recomputation
    matches the forward whatever autocast state the backward runs in.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, norm: nd.BatchNorm, pool: Pool, conv: Conv | None, x: Tensor, weight: Tensor,
                bias: Tensor, conv_weight: Tensor | None) -> Tensor:
        device = x.device.type
        ctx.dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        with torch.autocast(device, enabled=False):
            z = _conv(x, conv_weight, conv, ctx.dtype)  # (N, C, *spatial)
            normed, mean, invstd = torch.native_batch_norm(z, weight, bias, norm.running_mean, norm.running_var,
                                                           True, count_batch(norm), norm.eps)
            out = _pool(normed.clamp_min_(0), pool)
        ctx.pool, ctx.conv, ctx.eps = pool, conv, norm.eps
        ctx.save_for_backward(x, weight, bias, mean, invstd, conv_weight)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias, mean, invstd, conv_weight = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain form (densenet.nn.double_backward)
            announce("stem and transitions")
            with torch.enable_grad():
                z = x if conv_weight is None else nd.conv(x, conv_weight.to(x.dtype), None, *ctx.conv)
                out = _pool(F.relu(F.batch_norm(z, None, None, weight, bias, True, 0.0, ctx.eps)), ctx.pool)
            grads = differentiable_grads(out, [x, weight, bias, conv_weight], grad_out)
            return None, None, None, *grads
        with torch.autocast(x.device.type, enabled=False):
            if ctx.conv is not None and nd.spatial_dims(x) == 3 and x.shape[0] > 1:
                return (None, None, None, *_stem_backward_in_halves(ctx, grad_out, x, weight, bias, mean, invstd,
                                                                    conv_weight))
            z = _conv(x, conv_weight, ctx.conv, ctx.dtype)  # recomputed
            # the BN-ReLU's backward: one fused pass on channels-last rows, or ATen's operations
            backward = _fused_bn_relu_backward if nd.is_channels_last(z) and fused.applies(z) else _bn_relu_backward
            grad_z, grad_weight, grad_bias = backward(ctx, grad_out, z, weight, bias, mean, invstd)
            if ctx.conv is None:
                return None, None, None, grad_z.to(x.dtype), grad_weight, grad_bias, None
            del z  # the conv's backward needs δ_z, x and W only
            # ∂L/∂X = Wᵀ ∗ δ_z, ∂L/∂W = X ⋆ δ_z   [F1b]
            grad_x, grad_conv, _ = nd.conv_backward(
                grad_z, nd.channel_stride_one(x.to(ctx.dtype)), conv_weight.to(ctx.dtype), False, *ctx.conv,
                needs=(ctx.needs_input_grad[3], ctx.needs_input_grad[6], False))
        return (None, None, None, None if grad_x is None else grad_x.to(x.dtype), grad_weight, grad_bias,
                None if grad_conv is None else grad_conv.to(conv_weight.dtype))


def _bn_relu_backward(ctx: Any, grad_out: Tensor, z: Tensor, weight: Tensor, bias: Tensor, mean: Tensor,
                      invstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(∂L/∂z, ∂L/∂γ, ∂L/∂β)`` [F3b / max-pool, BN] with ATen's operations (:func:`_pooled_grad`, then the
    sums and the input gradient of :mod:`densenet.nn.batchnorm`)."""
    grad_u = _pooled_grad(ctx, grad_out, z, weight, bias, mean, invstd)
    grad_weight, grad_bias = parameter_grads(grad_u, z, weight, mean, invstd, True, ctx.eps)
    return input_grad(grad_u, z, weight, mean, invstd, grad_weight, grad_bias, True), grad_weight, grad_bias


def _fused_bn_relu_backward(ctx: Any, grad_out: Tensor, z: Tensor, weight: Tensor, bias: Tensor, mean: Tensor,
                            invstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(∂L/∂z, ∂L/∂γ, ∂L/∂β)`` [F3b / max-pool, BN] on the rows of a channels-last ``z`` (the recomputed conv, or
    the transition's input) with the fused kernels (:mod:`densenet.nn.fused`): the pool's gradient — for the
    max-pool taken through σ onto ``r = σ(a·z + b)``, recomputed in one pass — then one BN-ReLU backward pass
    (σ' from ``a·z + b``, the sums ``Σδ``, ``Σδx̂`` and ``∂L/∂z = a·(δ − (1/M)(Σδ + x̂·Σδx̂))``). ATen's operations
    make six passes over ``z``'s size for the same (``r``, σ', the sums, two ``addcmul``), and their per-channel
    ``addcmul`` on a channels-last map is several times slower than a pass (benchmarks/NOTES.md, "The stem's and the
    transitions' BN-ReLU backward on the fused kernels")."""
    n, _, *spatial = z.shape
    rows = rows_of(z)  # (M, C)
    scale, shift = (fused.opmath(vector, rows) for vector in affine(weight, bias, mean, invstd))
    grad_out = nd.same_layout(grad_out.to(z.dtype), z)
    if ctx.pool[0] == "max":  # δ through σ, written over r (nd.pool_backward's through_relu)
        relu = image(fused.affine_relu_rows(rows, scale, shift, torch.empty_like(rows)), n, tuple(spatial))
        grad_relu = _pool_backward(grad_out, relu, ctx.pool, out=relu, through_relu=True)
    else:
        grad_relu = nd.channels_last(_pool_backward(grad_out, z, ctx.pool))
    grad_rows = torch.empty_like(rows)
    grad_weight, grad_bias = fused.bn_relu_backward_full_rows(
        rows_of(grad_relu), rows, scale, shift, fused.opmath(mean, rows), fused.opmath(invstd, rows), True, grad_rows)
    return image(grad_rows, n, tuple(spatial)), grad_weight.to(weight.dtype), grad_bias.to(bias.dtype)


def _recomputed_grad(ctx: Any, grad_out: Tensor, x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor,
                     invstd: Tensor, conv_weight: Tensor | None) -> tuple[Tensor, Tensor]:
    """``z = W ∗ x`` (or ``x``) recomputed, and ``δ = ∂L/∂u`` at ``u = BN(z)`` (:func:`_pooled_grad`).

    ``x`` and ``grad_out`` may be a part of the batch: the batch statistics ``μ, 1/σ`` are the whole batch's."""
    z = _conv(x, conv_weight, ctx.conv, ctx.dtype)  # recomputed
    return z, _pooled_grad(ctx, grad_out, z, weight, bias, mean, invstd)


def _pooled_grad(ctx: Any, grad_out: Tensor, z: Tensor, weight: Tensor, bias: Tensor, mean: Tensor,
                 invstd: Tensor) -> Tensor:
    """``δ = ∂L/∂u`` at ``u = BN(z)`` with ATen's operations: ``r = σ(BN(z))`` recomputed, the pool's backward,
    then σ'."""
    scale, shift = affine(weight, bias, mean, invstd)
    dims = nd.spatial_dims(z)
    # r = σ(BN(z)), recomputed
    relu = affine_relu(z, nd.per_channel(scale, dims), nd.per_channel(shift, dims))
    grad_out = nd.same_layout(grad_out.to(relu.dtype), relu)
    if ctx.pool[0] == "max":
        # the stem: the max-pool's gradient through σ, δ = ∂L/∂u at u = BN(z), written over r (z and r are the
        # most held at once: in 3D the stem's map is the network's largest); σ' is taken on the pooled map
        # (nd.pool_backward's through_relu), not as a mask of r's size
        return _pool_backward(grad_out, relu, ctx.pool, out=relu, through_relu=True)
    grad_relu = _pool_backward(grad_out, relu, ctx.pool)
    # through σ: δ ⊙ 1[r > 0]
    return torch.ops.aten.threshold_backward.grad_input(grad_relu, relu, 0, grad_input=grad_relu)


def _stem_backward_in_halves(ctx: Any, grad_out: Tensor, x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor,
                             invstd: Tensor, conv_weight: Tensor) -> tuple[Tensor | None, ...]:
    """The stem's backward [F1b, BN] over two halves of the batch, for volumes: ``(∂L/∂x, ∂L/∂γ, ∂L/∂β, ∂L/∂W)``.

    In 3D the stem's map (``C_0`` channels at half the side per axis: 8 values per input voxel for ``C_0 = 64``) is
    the network's largest tensor, and one pass over the batch holds three of them at once (``z``, ``δ`` and
    ``∂L/∂z``). BN's input gradient ``∂L/∂z = a·(δ − (1/M)(Σδ + x̂·Σδx̂))`` needs the whole batch's sums first, so:
    pass 1 recomputes each half's ``δ`` and sums ``Σδ = ∂L/∂β``, ``Σδx̂ = ∂L/∂γ`` (sums over the halves add up);
    pass 2 forms each half's ``∂L/∂z`` with the whole-batch sums and ``M`` — the last half's from pass 1's ``z`` and
    ``δ``, still at hand, the first half's recomputed again — and runs the conv's backward on it,
    ``∂L/∂W = Σ_halves X ⋆ δ_z``. Three half-size maps at most instead of three full ones, for one more ``W ∗ x``
    over half the batch (the 7³ conv: ≈ 2–3% of a 3-D step's work).
    """
    first, last = slice(0, x.shape[0] // 2), slice(x.shape[0] // 2, x.shape[0])
    grad_weight, grad_bias = torch.zeros_like(weight), torch.zeros_like(bias)
    count = 0  # M = N·D·H·W values per channel, the whole batch's
    for half in (first, last):
        z, grad_u = _recomputed_grad(ctx, grad_out[half], x[half], weight, bias, mean, invstd, conv_weight)
        part_weight, part_bias = parameter_grads(grad_u, z, weight, mean, invstd, True, ctx.eps)
        grad_weight += part_weight
        grad_bias += part_bias
        count += z.numel() // z.shape[1]
        if half is first:
            del z, grad_u  # (the last half's are kept for pass 2)
    grad_x = torch.empty_like(x) if ctx.needs_input_grad[3] else None
    grad_conv = torch.zeros_like(conv_weight) if ctx.needs_input_grad[6] else None
    for half in (last, first):  # the last half's z and δ are still at hand: only the first's are recomputed
        if half is first:
            z, grad_u = _recomputed_grad(ctx, grad_out[half], x[half], weight, bias, mean, invstd, conv_weight)
        grad_z = input_grad(grad_u, z, weight, mean, invstd, grad_weight, grad_bias, True, count=count)
        del z, grad_u  # the conv's backward needs δ_z, x and W only
        # ∂L/∂X = Wᵀ ∗ δ_z, ∂L/∂W = X ⋆ δ_z   [F1b]
        part_x, part_conv, _ = nd.conv_backward(
            grad_z, nd.channel_stride_one(x[half].to(ctx.dtype)), conv_weight.to(ctx.dtype), False, *ctx.conv,
            needs=(grad_x is not None, grad_conv is not None, False))
        del grad_z
        if grad_x is not None:
            grad_x[half] = part_x
        if grad_conv is not None:
            grad_conv += part_conv
    return grad_x, grad_weight, grad_bias, grad_conv


def _conv(x: Tensor, weight: Tensor | None, conv: Conv | None, dtype: torch.dtype) -> Tensor:
    """``W ∗ x`` in ``dtype`` [F1], or ``x`` itself without a conv."""
    if conv is None:
        return x
    # W ∗ x   [F1], channels-last out also for one input channel
    return nd.conv(nd.channel_stride_one(x.to(dtype)), weight.to(dtype), None, *conv)


def _pool(x: Tensor, pool: Pool) -> Tensor:
    """The transition's average pool ``O_ij = (1/PQ) Σ x`` [F3] (``1/K^d`` in ``d`` dimensions), or the stem's
    max-pool."""
    kind, kernel, stride, padding = pool
    if kind == "avg":
        # O_ij = (1/PQ) Σ x over the window   [F3]
        return nd.avg_pool(x, kernel, stride, padding)
    return nd.max_pool(x, kernel, stride, padding)


def _pool_backward(grad_out: Tensor, relu: Tensor, pool: Pool, out: Tensor | None = None,
                   through_relu: bool = False) -> Tensor:
    """The pool's backward: ``1/(PQ)`` of each output's gradient to every input of its window for the average
    pool [F3b]; to the argmax of its window for the max-pool (:func:`densenet.nn.dims.pool_backward`), into ``out``
    (max-pool only; it may be ``relu``) if given, and then through σ with ``through_relu``."""
    kind, kernel, stride, padding = pool
    return nd.pool_backward(grad_out, relu, kind, kernel, stride, padding, out, through_relu)


def batch_norm_relu_pool(norm: nd.BatchNorm, x: Tensor, pool: Pool) -> Tensor:
    """``pool(σ(norm(x)))`` (a transition's first half), training mode."""
    return ConvBatchNormReLUPoolFunction.apply(norm, pool, None, x, norm.weight, norm.bias, None)


def imagenet_stem_function(conv: nd.ConvModule, norm: nd.BatchNorm, pool: nn.Module, x: Tensor) -> Tensor:
    """``maxpool(σ(norm(conv(x))))``, the ImageNet stem, training mode."""
    geometry = (tuple(conv.stride), tuple(conv.padding))  # type: ignore[arg-type]
    spec = ("max", int(pool.kernel_size), int(pool.stride), int(pool.padding))  # type: ignore[arg-type]
    return ConvBatchNormReLUPoolFunction.apply(norm, spec, geometry, x, norm.weight, norm.bias, conv.weight)
