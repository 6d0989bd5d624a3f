"""Each dense layer's BN2-ReLU for the explicit dense block (:mod:`densenet.nn.block`): forward, and the backward of
BN2-ReLU-Conv3×3 [BN, F1b].

A dense layer with a bottleneck is ``x_l = W2 ∗ σ(BN2(z))`` with ``z = W1 ∗ σ(BN1([x_0, …, x_{l−1}]))``. The block
keeps ``z`` (or recomputes it, for volumes) and BN2's batch statistics: :func:`bn2_relu_forward` writes them and
``σ(BN2(z))``; :class:`Bottlenecks` turns ``∂L/∂x_l`` into ``∂L/∂z`` and the gradients of ``W2``, ``γ2``, ``β2``, with
BN2's per-channel vectors computed for all layers at once (on small maps the number of operations per layer, not
their size, sets the time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from densenet.nn import fused
from densenet.nn.batchnorm import in_dtype
from densenet.nn.dims import BatchNorm, channels_last, conv_backward
from densenet.nn.rows import column_image, image, pack_factor, packed, planar, rows_of

if TYPE_CHECKING:
    from densenet.nn.block import BlockSpec

_STRIDE_ONE = 1
_PAD_ONE = 1


def bn2_relu_forward(z: Tensor, z_rows: Tensor, out_rows: Tensor, gamma: Tensor, beta: Tensor, norm: BatchNorm,
                     saves: tuple[Tensor, Tensor], factor: float | None, use_fused: bool) -> Tensor:
    """``r2 = σ(BN2(z))`` [BN] of a layer's 1×1 conv output ``z`` (``(N, 4k, *spatial)``), which is copied into its
    slab rows ``z_rows`` (``(M, 4k)``); ``r2`` goes into ``out_rows`` and is returned as ``(N, 4k, *spatial)``.

    ``saves`` receive the ``μ`` and ``1/σ`` used: the batch's in training (``factor``: the running statistics'
    factor), the running ones otherwise (``factor`` None). With ``use_fused`` in training the copy takes the batch
    statistics in the same pass and the affine-ReLU is one more (:mod:`densenet.nn.fused`); the caller then moves the
    running statistics (:func:`densenet.nn.batchnorm.update_running_stats_each`). Otherwise ATen's
    ``native_batch_norm`` (which moves them itself) and a clamp.
    """
    n, _, *spatial = z.shape
    save_mean, save_invstd = saves
    if use_fused and factor is not None:
        fused.copy_rows_with_stats(rows_of(z), z_rows, norm.eps, save_mean, save_invstd)
        # a2 = γ2/σ, b2 = β2 − μ·a2
        scale = fused.opmath(gamma, z_rows) * save_invstd
        shift = torch.addcmul(fused.opmath(beta, z_rows), save_mean, scale, value=-1)
        return image(fused.affine_relu_rows(z_rows, scale, shift, out_rows), n, tuple(spatial))
    kept, out = image(z_rows, n, tuple(spatial)), image(out_rows, n, tuple(spatial))
    kept.copy_(z)
    if factor is not None:
        torch.ops.aten.native_batch_norm.out(
            planar(kept), gamma, beta, norm.running_mean, norm.running_var, True, factor, norm.eps, out=planar(out),
            save_mean=save_mean, save_invstd=save_invstd)
    else:
        torch.ops.aten.native_batch_norm.out(
            planar(kept), gamma, beta, norm.running_mean, norm.running_var, False, 0.0, norm.eps, out=planar(out),
            save_mean=save_mean, save_invstd=save_invstd)
        save_mean.copy_(norm.running_mean)
        torch.rsqrt(norm.running_var + norm.eps, out=save_invstd)
    return out.clamp_min_(0)


class Bottlenecks:
    """Each dense layer's BN2-ReLU-Conv3×3 backward, with BN2's per-channel vectors computed for all layers at once.

    Per layer ``l``, from the stored bottleneck output ``z`` (``(M, 4k)`` rows) and its batch statistics:
    ``r2 = σ(a2·z + b2)`` recomputed, the 3×3 conv's backward [F1b], σ', and [BN]'s backward
    ``∂L/∂z = a2·δ + c + d·z`` with ``d = −a2·σ⁻¹·Σδx̂/M`` and ``c = −a2·Σδ/M − d·μ`` — the whole-tensor form of
    :func:`densenet.nn.batchnorm.input_grad`, here on packed rows (:mod:`densenet.nn.rows`), or all of it after the
    conv in the two passes of :func:`densenet.nn.fused.bn_relu_backward_full_rows` (``use_fused``). With running
    statistics (eval mode) ``∂L/∂z = a2·δ``.
    """

    def __init__(self, spec: BlockSpec, saved: dict[str, Any], params: tuple[Tensor, ...], m: int, n: int,
                 spatial: tuple[int, ...], training: bool, use_fused: bool) -> None:
        per_layer, slab = spec.params_per_layer, saved["bottlenecks"]
        self.n, self.spatial, self.training, self.fused = n, spatial, training, use_fused
        self.scratch = slab.new_empty(tuple(slab.shape[1:]))  # (M, 4k): σ(BN2(z)), then ∂L/∂z
        stats = saved["stats2"]  # (L, 2, 4k): μ and 1/σ of every layer's z
        mean, invstd = stats[:, 0], stats[:, 1]
        # a2 = γ2/σ and b2 = β2 − μ·a2 of every layer, (L, 4k)
        scale = torch.stack(params[3::per_layer]) * invstd
        shift = torch.addcmul(torch.stack(params[4::per_layer]), mean, scale, value=-1)
        # per layer (lists: one unbind per quantity instead of one indexing per layer and use)
        self.mean, self.invstd = mean.unbind(0), invstd.unbind(0)
        self.rows = slab.unbind(0)  # (M, 4k) each
        if use_fused:  # a2, b2 in the kernels' arithmetic type; nothing packed
            self.scale, self.shift = fused.opmath(scale, slab).unbind(0), fused.opmath(shift, slab).unbind(0)
            return
        self.factor = pack_factor(m, slab.shape[2])  # packed rows, ATen's operations only
        self.packed_scale = in_dtype(scale, slab.dtype).repeat(1, self.factor).unbind(0)  # r·4k each
        self.packed_shift = in_dtype(shift, slab.dtype).repeat(1, self.factor).unbind(0)
        self.slope_unit = (scale * invstd * (-1 / m)).unbind(0)  # d per unit of Σδx̂
        self.offset_unit = (scale * (-1 / m)).unbind(0)  # c + d·μ per unit of Σδ

    def backward(self, index: int, grad_new: Tensor, weight2: Tensor, needs_weight_grad: bool,
                 param_grads: list[Tensor | None], offset: int, recomputed: Tensor | None = None) -> Tensor:
        """``∂L/∂z`` of layer ``index`` as ``(N, 4k, *spatial)`` (in the shared scratch); ``∂L/∂W2``, ``∂L/∂γ2`` and
        ``∂L/∂β2`` into ``param_grads[offset + 5]``, ``[offset + 3]``, ``[offset + 4]``. ``recomputed``: the layer's
        ``z`` as channels-last ``(N, 4k, *spatial)`` when the forward did not save it."""
        z_rows = self.rows[index] if recomputed is None else rows_of(recomputed)  # (M, 4k)
        if self.fused:
            return self._fused_backward(index, z_rows, grad_new, weight2, needs_weight_grad, param_grads, offset)
        factor, scratch = self.factor, self.scratch
        # r2 = σ(a2·z + b2), recomputed on packed rows
        torch.addcmul(self.packed_shift[index], packed(z_rows, factor), self.packed_scale[index],
                      out=packed(scratch, factor)).clamp_min_(0)
        relu2 = image(scratch, self.n, self.spatial)
        # ∂L/∂r2 = W2ᵀ ∗ δ, ∂L/∂W2 = r2 ⋆ δ   [F1b]
        grad_relu2, param_grads[offset + 5], _ = conv_backward(
            grad_new, relu2, weight2, False, _STRIDE_ONE, _PAD_ONE, (True, needs_weight_grad, False))
        # through σ: δ ⊙ 1[r2 > 0]
        grad_u2 = torch.ops.aten.threshold_backward.grad_input(grad_relu2, relu2, 0, grad_input=grad_relu2)
        grad_rows = rows_of(grad_u2)  # (M, 4k)
        mean, invstd = self.mean[index], self.invstd[index]
        # ∂L/∂γ2 = Σδx̂ and ∂L/∂β2 = Σδ in one pass [BN]
        _, grad_gamma, grad_beta = torch.ops.aten.native_batch_norm_backward(
            column_image(grad_rows), column_image(z_rows), None, None, None, mean, invstd, True, 0.0,
            [False, True, True])
        param_grads[offset + 3], param_grads[offset + 4] = grad_gamma, grad_beta
        out = packed(scratch, factor)  # σ(BN2(z)) is done with
        if self.training:
            slope = self.slope_unit[index] * grad_gamma  # d
            constant = torch.addcmul(self.offset_unit[index] * grad_beta, slope, mean, value=-1)  # c
            # ∂L/∂z = c + d·z + a2·δ   [BN]
            torch.addcmul(in_dtype(constant, z_rows.dtype).repeat(factor), packed(z_rows, factor),
                          in_dtype(slope, z_rows.dtype).repeat(factor), out=out)
            out.addcmul_(packed(grad_rows, factor), self.packed_scale[index])
        else:
            torch.mul(packed(grad_rows, factor), self.packed_scale[index], out=out)  # ∂L/∂z = a2·δ
        return image(scratch, self.n, self.spatial)

    def _fused_backward(self, index: int, z_rows: Tensor, grad_new: Tensor, weight2: Tensor, needs_weight_grad: bool,
                        param_grads: list[Tensor | None], offset: int) -> Tensor:
        """:meth:`backward` with the BN-ReLU's passes in the fused kernels (:mod:`densenet.nn.fused`)."""
        scale, shift = self.scale[index], self.shift[index]
        # r2 = σ(a2·z + b2), recomputed
        relu2 = image(fused.affine_relu_rows(z_rows, scale, shift, self.scratch), self.n, self.spatial)
        # ∂L/∂r2 = W2ᵀ ∗ δ, ∂L/∂W2 = r2 ⋆ δ   [F1b]
        grad_relu2, param_grads[offset + 5], _ = conv_backward(
            grad_new, relu2, weight2, False, _STRIDE_ONE, _PAD_ONE, (True, needs_weight_grad, False))
        # ∂L/∂z = a2·(δ − (1/M)(Σδ + ẑ·Σδẑ)), δ = ∂L/∂r2 ⊙ 1[r2 > 0], over the scratch (r2 is done with)   [BN]
        param_grads[offset + 3], param_grads[offset + 4] = fused.bn_relu_backward_full_rows(
            rows_of(channels_last(grad_relu2)), z_rows, scale, shift, self.mean[index], self.invstd[index],
            self.training, self.scratch)
        return image(self.scratch, self.n, self.spatial)
