"""Folding eval-mode batch norms into the convolutions next to them: the algebra behind
:func:`densenet.deploy.optimize.optimize_for_inference`, each identity exact up to rounding (tested in float64).

- BN after a conv: ``BN(W ∗ x) = (a·W) ∗ x + b`` (:func:`fold_batch_norm`);
- BN-ReLU before a 1×1 conv: ``σ(a·x + b) = a'·clamp(x, lo, hi) + c`` per channel, so
  ``W ∗ σ(a·x + b) = (W·a') ∗ clamp(x, lo, hi) + W·c`` (:func:`relu_affine_as_clamp`, :func:`fold_relu_affine`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from densenet.nn.batchnorm import running_affine
from densenet.nn.dims import BatchNorm, norm_dims, per_channel


def batch_norm_affine(norm: BatchNorm) -> tuple[Tensor, Tensor]:
    """Eval-mode BN as ``a·x + b``: ``a = γ/√(σ²+ε)``, ``b = β − μ·a`` (running statistics), as per-channel
    ``(C, 1, …, 1)`` views that broadcast over ``(N, C, *spatial)`` (``nn.BatchNorm{d}d``: ``d`` ones)."""
    scale, shift, _, _ = running_affine(norm, norm.weight.detach(), norm.bias.detach())
    dims = norm_dims(norm)
    return per_channel(scale, dims), per_channel(shift, dims)


def fold_batch_norm(weight: Tensor, norm: BatchNorm) -> tuple[Tensor, Tensor]:
    """``BN(W ∗ x) = (a·W) ∗ x + b`` for a bias-free conv followed by an eval-mode BN: the folded weight and bias."""
    scale, shift = batch_norm_affine(norm)
    return weight.detach() * scale.unsqueeze(1), shift.flatten()


def relu_affine_as_clamp(scale: Tensor, shift: Tensor, dtype: torch.dtype = torch.float64
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``σ(a·x + b) = a'·clamp(x, lo, hi) + c`` per channel, for ``(C,)`` vectors ``a, b`` and every finite ``x`` of
    ``dtype``:

    - ``a > 0``: ``lo = −b/a, hi = +∞`` (``a·max(x, −b/a) + b = max(a·x + b, 0)``), ``a' = a``, ``c = b``;
    - ``a < 0``: ``lo = −∞, hi = −b/a`` (``a·min(x, −b/a) + b = max(a·x + b, 0)``), ``a' = a``, ``c = b``;
    - ``a = 0``, or ``|a|`` below ``dtype``'s smallest normal number (``W·a`` would lose its precision; the error of
      the constant is below that number times ``|x|``, under ``dtype``'s own rounding of ``x``): the constant
      ``σ(b)``: ``lo = hi = 0``, ``a' = 0``, ``c = σ(b)``;
    - the kink ``−b/a`` beyond ``dtype``'s largest finite value on the active side (``a > 0`` and ``−b/a`` above it,
      ``a < 0`` and below its negative; a pruned channel with a tiny ``a``): no ``x`` of ``dtype`` reaches it, the
      channel is always 0 — ``lo = hi = 0``, ``a' = 0``, ``c = 0`` (a bound of ±∞ there would give ``∞·0``).

    Returns ``(lo, hi, a', c)``, computed in float64.
    """
    scale, shift = scale.double(), shift.double()
    limits = torch.finfo(dtype)
    zero = scale.abs() < limits.tiny
    positive, negative = (scale > 0) & ~zero, (scale < 0) & ~zero
    kink = torch.where(zero, 0.0, -shift / torch.where(zero, 1.0, scale))  # −b/a
    never_active = (positive & (kink >= limits.max)) | (negative & (kink <= -limits.max))
    constant = zero | never_active
    lo = torch.where(constant, 0.0, torch.where(negative, -torch.inf, kink))
    hi = torch.where(constant, 0.0, torch.where(positive, torch.inf, kink))
    offset = torch.where(zero, shift.clamp_min(0), torch.where(never_active, 0.0, shift))
    return lo, hi, torch.where(constant, 0.0, scale), offset


def fold_relu_affine(weight: Tensor, bias: Tensor | None, scale: Tensor, shift: Tensor
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``W ∗ σ(a·x + b) + β = (W·a') ∗ clamp(x, lo, hi) + (β + W·c)`` for a 1×1 conv ``W`` (``(C_out, C, 1, 1)``)
    without padding (see :func:`relu_affine_as_clamp`). Also exact with an average pool between the two: it is
    linear and keeps constants. Returns ``(lo, hi, W', β')``, the bounds as ``(C, 1, …, 1)`` views (any ``d``)."""
    if set(weight.shape[2:]) != {1}:
        raise ValueError(f"only a 1×1 convolution takes a folded BN-ReLU exactly, got kernel {tuple(weight.shape[2:])}")
    dtype = weight.dtype
    lo, hi, live_scale, constant = relu_affine_as_clamp(scale.flatten(), shift.flatten(), dtype)
    matrix = weight.detach().double().flatten(1)  # (C_out, C)
    folded_bias = matrix @ constant + (0 if bias is None else bias.detach().double())
    folded = (matrix * live_scale).view_as(weight)
    dims = weight.dim() - 2
    return (per_channel(lo.to(dtype), dims), per_channel(hi.to(dtype), dims), folded.to(dtype),
            folded_bias.to(dtype))
