"""Batch normalisation as training runs it: the forward and backward pieces of the explicit autograd Functions
(:mod:`densenet.nn.block`, :mod:`densenet.nn.recompute`).

This is the same formula [BN] (docs/MATH.md) as the tutorial's reference
:func:`densenet.tutorial.batch_norm_backward`, which students read and which is tested against autograd; training
never calls that reference, it runs the functions here. ``tests/nn/test_batchnorm.py`` compares them with it in
float64.

Training-mode BN of a channel is ``y = γ·x̂ + β`` with ``x̂ = (x − μ)/√(σ² + ε)`` and the batch's ``μ, σ²``; as
a per-channel affine, ``y = a·x + b`` with ``a = γ/√(σ² + ε)`` and ``b = β − μ·a``. Its backward [BN] is
``∂L/∂β = Σδ``, ``∂L/∂γ = Σδx̂`` and ``∂L/∂x = a·(δ − (1/M)(Σδ + x̂·Σδx̂))`` (sums over the ``M = N·H·W``
values of the channel — ``N·L`` for signals, ``N·D·H·W`` for volumes: every axis but the channel's); with running
statistics (eval mode) ``μ, σ²`` are constants and ``∂L/∂x = a·δ``.

Two forms of that backward, one formula:

- whole tensors, ``(N, C, *spatial)``: :func:`parameter_grads` and :func:`input_grad` — the stem, the transitions
  and each dense layer's BN2;
- the rows of the dense block's shared buffer, ``(M, C_l)``: :func:`bn_relu_backward_into` adds ``a·δ`` in place
  into the block's shared gradient buffer, and :func:`subtract_batch_terms` accumulates the per-channel rest
  ``(a/M)(Σδ + x̂·Σδx̂)``, which the block sums over every layer reading a channel and subtracts once — each
  layer's BN1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from densenet.nn.dims import BatchNorm, per_channel
from densenet.nn.rows import column_image

LOW_PRECISION = (torch.float16, torch.bfloat16)
_CHUNK_ELEMENTS = 1 << 20  # elements per row chunk of fused elementwise work: a few MB, resident in cache


def in_dtype(vector: Tensor, dtype: torch.dtype) -> Tensor:
    """A per-channel vector in the activations' ``dtype`` (no operation when it already is)."""
    return vector if vector.dtype == dtype else vector.to(dtype)


def channel_stats(image: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Batch mean ``μ`` and ``1/√(σ² + ε)`` of each channel of ``(N, C, *spatial)``, in float32 or better.

    ``native_batch_norm`` in training mode computes both in one vectorised pass (far faster on CPU than
    ``var_mean`` over three dimensions); its normalised output is discarded. Low-precision input is given a float32
    unit weight: the kernel's mixed-precision path then returns float32 statistics without a float32 copy of the
    input.
    """
    weight = None
    if image.dtype in LOW_PRECISION:
        weight = torch.ones(image.shape[1], dtype=torch.float32, device=image.device)
    _, mean, invstd = torch.native_batch_norm(image, weight, None, None, None, True, 0.0, eps)
    return mean, invstd


def count_batch(norm: BatchNorm) -> float:
    """Count one more batch and return the running-average factor, as ``nn.BatchNorm2d`` does in training."""
    return count_batches((norm,))[0]


def count_batches(norms: tuple[BatchNorm, ...]) -> list[float]:
    """:func:`count_batch` for several batch norms, counting in one ``foreach`` call."""
    if not norms:
        return []
    torch._foreach_add_([norm.num_batches_tracked for norm in norms], 1)
    return [1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum for norm in norms]


def update_running_stats_of(norms: tuple[BatchNorm, ...], mean: Tensor, invstd: Tensor, count: int) -> None:
    """``running ← (1 − m)·running + m·batch`` (the variance unbiased, ``σ²·M/(M − 1)``) for batch norms that read
    the first channels of one ``μ``, ``1/√(σ² + ε)`` — a dense block's BN1s, one ε — in two ``foreach`` calls
    (``running + m·(batch − running)``) instead of a handful of small operations per norm."""
    factors = count_batches(norms)
    var = (invstd.pow(-2) - norms[0].eps) * (count / max(count - 1, 1))  # unbiased σ² from 1/√(σ² + ε)
    sizes = [norm.running_mean.shape[0] for norm in norms]
    torch._foreach_lerp_([norm.running_mean for norm in norms], [mean[:size] for size in sizes], factors)
    torch._foreach_lerp_([norm.running_var for norm in norms], [var[:size] for size in sizes], factors)


def update_running_stats_each(norms: tuple[BatchNorm, ...], stats: Tensor, factors: list[float], count: int) -> None:
    """:func:`update_running_stats_of` for batch norms with statistics of their own — a dense block's BN2s, one ε —
    given as ``stats`` ``(L, 2, C)`` (each norm's ``μ`` and ``1/√(σ² + ε)``) and the factors :func:`count_batches`
    returned for them."""
    var = (stats[:, 1].pow(-2) - norms[0].eps) * (count / max(count - 1, 1))  # (L, C): unbiased σ²
    means, variances = stats[:, 0].unbind(0), var.unbind(0)
    torch._foreach_lerp_([norm.running_mean for norm in norms],
                         [row.to(norm.running_mean.dtype) for row, norm in zip(means, norms, strict=True)], factors)
    torch._foreach_lerp_([norm.running_var for norm in norms],
                         [row.to(norm.running_var.dtype) for row, norm in zip(variances, norms, strict=True)], factors)


def affine(weight: Tensor, bias: Tensor, mean: Tensor, invstd: Tensor) -> tuple[Tensor, Tensor]:
    """BN as a per-channel affine: ``γ(x − μ)/σ + β = a·x + b`` with ``a = γ/σ``, ``b = β − μ·a``."""
    scale = weight * invstd
    return scale, bias - mean * scale


def running_affine(norm: BatchNorm, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Eval-mode BN: the affine from the running statistics, with the mean and ``1/σ`` it used."""
    invstd = torch.rsqrt(norm.running_var + norm.eps)
    scale, shift = affine(weight, bias, norm.running_mean, invstd)
    return scale, shift, norm.running_mean, invstd


def affine_relu(x: Tensor, scale: Tensor, shift: Tensor, out: Tensor | None = None) -> Tensor:
    """``σ(a·x + b)``: ``(M, C)`` rows with ``(C,)`` vectors, or ``(N, C, *spatial)`` with ``(C, 1, …)`` views."""
    return torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype), out=out).clamp_min_(0)


def parameter_grads(grad_u: Tensor, x: Tensor, weight: Tensor, mean: Tensor, invstd: Tensor, training: bool,
                    eps: float) -> tuple[Tensor, Tensor]:
    """``∂L/∂γ = Σδx̂`` and ``∂L/∂β = Σδ`` for ``(N, C, *spatial)`` tensors, in one pass of
    ``native_batch_norm_backward`` (fast for contiguous NCHW or channels-last input)."""
    _, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
        grad_u, x, weight, mean, invstd.pow(-2) - eps, mean, invstd, training, eps, [False, True, True])
    return grad_weight, grad_bias


def input_grad(grad_u: Tensor, x: Tensor, weight: Tensor, mean: Tensor, invstd: Tensor, grad_weight: Tensor,
               grad_bias: Tensor, training: bool, count: int | None = None) -> Tensor:
    """``∂L/∂x`` of ``(N, C, *spatial)``: with batch statistics
    ``a·(δ − (1/M)(Σδ + x̂·Σδx̂)) = a·δ + (c + d·x)`` with per-channel ``c, d``; with running ones ``a·δ``.

    ``M`` is ``count`` if given — ``x`` is then a part of the batch whose statistics and sums ``Σδ = ∂L/∂β``,
    ``Σδx̂ = ∂L/∂γ`` were taken over all ``M`` values — and ``x``'s own values per channel otherwise."""
    dims = x.dim() - 2
    scale = per_channel(weight * invstd, dims)
    if not training:
        return grad_u * scale.to(x.dtype)
    count = x.numel() // x.shape[1] if count is None else count
    slope = per_channel(-weight * invstd.square() * grad_weight / count, dims)
    offset = per_channel(-weight * invstd * grad_bias / count, dims) - slope * per_channel(mean, dims)
    grad_x = torch.addcmul(offset.to(x.dtype), x, slope.to(x.dtype))
    return grad_x.addcmul_(grad_u, scale.to(x.dtype))


def bn_relu_backward_into(grad: Tensor, grad_relu: Tensor, relu: Tensor, inputs: Tensor, scale: Tensor, mean: Tensor,
                          invstd: Tensor, scratch: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``r = σ(a·x + b)`` backward for ``(M, C)`` rows, fused in cache-sized chunks: [BN] with ``∂L/∂x`` in two parts.

    This is the dense block's BN1, whose input ``x`` is a view of the block's shared feature buffer and whose input
    gradient goes into the shared gradient buffer ``grad`` (a view of the same width). It is not written with
    :func:`parameter_grads` / :func:`input_grad` because those return a new ``∂L/∂x``: here that would allocate an
    ``(M, C_l)`` tensor per layer and take a second pass over it to add it into ``grad``. Instead, one pass over
    chunks of rows

    - applies σ': ``δ ← ∂L/∂r ⊙ 1[r > 0]``, in place into ``grad_relu``;
    - copies the chunk's ``x`` (a strided view) into ``scratch`` and sums ``Σδ`` and ``Σδx̂ = σ⁻¹Σδ(x − μ)`` per
      channel over it in one pass of ``native_batch_norm_backward`` (float32 accumulation also for bfloat16
      rows, no cast copies; on the strided view itself that kernel takes a path ~30× slower);
    - adds the per-pixel part of [BN]'s input gradient, ``∂L/∂x += a·δ``, in place into ``grad``.

    The rest of [BN]'s input gradient, ``−(a/M)(Σδ + x̂·Σδx̂)``, is per-channel constants times ``x̂``, which is
    the same for every layer reading the channel: :func:`subtract_batch_terms` sums them, the block over the
    layers and adds them once per channel (with running statistics there is no rest).

    Args:
        grad: ``(M, C)``, the shared gradient buffer's view of the input channels; ``a·δ`` is added to it.
        grad_relu: ``(M, C)``, ``∂L/∂r``; overwritten with ``δ``.
        relu: ``(M, C)``, ``r = σ(a·x + b)`` (recomputed by the caller).
        inputs: ``(M, C)``, ``x``.
        scale: ``(C,)``, ``a = γ/√(σ² + ε)`` (cast to ``grad``'s dtype unless already in it: the block passes it so).
        mean, invstd: ``(C,)``, ``μ`` and ``1/√(σ² + ε)`` (batch or running statistics).
        scratch: at least ``min(M, chunk rows)·C`` elements of ``x``'s dtype for the chunk copies, or ``None``.

    Returns:
        ``∂L/∂γ = Σδx̂ = σ⁻¹ Σδ(x − μ)`` and ``∂L/∂β = Σδ``, per channel.
    """
    rows, channels = grad_relu.shape
    step = max(1, _CHUNK_ELEMENTS // channels)
    if scratch is None:
        scratch = inputs.new_empty(min(rows, step) * channels)
    if scale.dtype != grad.dtype:
        scale = scale.to(grad.dtype)
    sums: tuple[Tensor, Tensor] | None = None  # (Σδx̂, Σδ) over the chunks so far
    for start in range(0, rows, step):
        # the chunk's rows (the tensors themselves when one chunk covers all: no slicing operations)
        part_grad_relu, part_relu, part_inputs, part_grad = (
            (grad_relu, relu, inputs, grad) if step >= rows
            else (t[start:start + step] for t in (grad_relu, relu, inputs, grad)))
        delta = torch.ops.aten.threshold_backward.grad_input(part_grad_relu, part_relu, 0, grad_input=part_grad_relu)
        x = scratch[:delta.numel()].view(delta.shape).copy_(part_inputs)  # (rows, C), contiguous
        # Σδx̂ and Σδ over the chunk   [BN]
        _, part_weight, part_bias = torch.ops.aten.native_batch_norm_backward(
            column_image(delta), column_image(x), None, None, None, mean, invstd, True, 0.0, [False, True, True])
        if sums is None:
            sums = part_weight, part_bias
        else:
            sums[0].add_(part_weight)
            sums[1].add_(part_bias)
        part_grad.addcmul_(delta, scale)
    assert sums is not None  # rows ≥ 1
    return sums


def row_chunk_scratch(like: Tensor, rows: int, widest: int) -> Tensor:
    """A scratch for :func:`bn_relu_backward_into`'s chunk copies of up to ``(rows, widest)`` inputs, for every
    layer of a block (one allocation instead of one per layer)."""
    return like.new_empty(min(rows * widest, max(_CHUNK_ELEMENTS, widest)))


def subtract_batch_terms(offset: Tensor, slope: Tensor, scale: Tensor, grad_weight: Tensor, grad_bias: Tensor,
                         count: int) -> None:
    """The batch-statistics part of [BN]'s input gradient, ``∂L/∂x = a·δ − c − d·x̂``, per channel, subtracted in
    place from running sums: ``offset −= c = (a/M)·Σδ`` and ``slope −= d = (a/M)·Σδx̂``, with ``Σδ = ∂L/∂β`` and
    ``Σδx̂ = ∂L/∂γ`` (``M = count``) — one ``addcmul_`` each (the block sums them over every layer reading a
    channel)."""
    offset.addcmul_(scale, grad_bias, value=-1 / count)
    slope.addcmul_(scale, grad_weight, value=-1 / count)
