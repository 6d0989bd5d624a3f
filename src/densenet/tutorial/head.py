"""The classifier head and the loss: fully connected [F5/F5b], inverted dropout [F6/F6b] and softmax with
cross-entropy [F7/F7b], each a forward/backward pair and an autograd Function."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx

# ----------------------------------------------------------------------------------------------------------------
# F5 / F5b: fully connected
# ----------------------------------------------------------------------------------------------------------------


def linear_forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``O = W x + b`` [F5], for a batch of rows: ``(N, C) @ (K, C)ᵀ + (K,)`` → ``(N, K)``."""
    out = x @ weight.t()  # (N, K)
    return out + bias if bias is not None else out


def linear_backward(
    grad_out: Tensor, x: Tensor, weight: Tensor, has_bias: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``∂L/∂x = Wᵀ δ``, ``∂L/∂W = δ xᵀ``, ``∂L/∂b = δ`` [F5b], summed over the batch for ``W`` and ``b``."""
    # ∂L/∂x = Wᵀδ, ∂L/∂W = δxᵀ, ∂L/∂b = δ   [F5b]
    dx = grad_out @ weight  # (N, C)
    dw = grad_out.t() @ x  # (K, C)
    db = grad_out.sum(dim=0) if has_bias else None  # (K,)
    return dx, dw, db


class LinearFunction(torch.autograd.Function):
    """Autograd wrapper of ``linear_forward`` / ``linear_backward`` [F5, F5b]."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return linear_forward(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        return linear_backward(grad_out, x, weight, ctx.has_bias)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Fully connected layer with the explicit backward [F5, F5b]."""
    return LinearFunction.apply(x, weight, bias)


# ----------------------------------------------------------------------------------------------------------------
# F6 / F6b: dropout (inverted: kept units are scaled by 1/(1 − p) in training, so inference is the identity)
# ----------------------------------------------------------------------------------------------------------------


def dropout_mask(like: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """``D`` of ``O = D ⊙ x / (1 − p)`` [F6]: a boolean mask keeping each unit with probability ``1 − p``."""
    keep = torch.empty(like.shape, device=like.device, dtype=torch.float32)
    return keep.bernoulli_(1.0 - p, generator=generator).bool()


def dropout_forward(x: Tensor, mask: Tensor, p: float) -> Tensor:
    """``O = D ⊙ x / (1 − p)`` [F6] (the tutorial's ``O = D ⊙ x`` with the inverted-dropout scale)."""
    return x * mask / (1.0 - p)


def dropout_backward(grad_out: Tensor, mask: Tensor, p: float) -> Tensor:
    """``∂L/∂x = D ⊙ δ / (1 − p)`` [F6b]."""
    return grad_out * mask / (1.0 - p)


class DropoutFunction(torch.autograd.Function):
    """Autograd wrapper of ``dropout_forward`` / ``dropout_backward`` [F6, F6b] with a given mask."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, mask: Tensor, p: float) -> Tensor:
        ctx.save_for_backward(mask)
        ctx.p = p
        return dropout_forward(x, mask, p)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        (mask,) = ctx.saved_tensors
        return dropout_backward(grad_out, mask, ctx.p), None, None


def dropout(x: Tensor, p: float, training: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Inverted dropout with the explicit backward [F6, F6b]; the identity when not training or ``p = 0``."""
    if not training or p == 0.0:
        return x
    return DropoutFunction.apply(x, dropout_mask(x, p, generator), p)


# ----------------------------------------------------------------------------------------------------------------
# F7 / F7b: softmax with cross-entropy
# ----------------------------------------------------------------------------------------------------------------


def softmax_cross_entropy_forward(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``S_k = e^{O_k} / Σ_j e^{O_j}`` [F7] and ``L = −(1/N) Σ_n Σ_k y_nk log S_nk``.

    Args:
        logits: ``O``, ``(N, K)``.
        target: ``y``, class probabilities ``(N, K)`` (one-hot or smoothed).

    Returns:
        The mean loss (a scalar) and ``S`` ``(N, K)``.
    """
    # log S_k = O_k − log Σ_j e^{O_j}, then L = −(1/N) Σ y log S   [F7]
    log_s = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # (N, K), log S computed stably
    loss = -(target * log_s).sum() / logits.shape[0]
    return loss, log_s.exp()


def softmax_cross_entropy_backward(grad_loss: Tensor, softmax: Tensor, target: Tensor) -> Tensor:
    """``∂L/∂O_k = S_k − y_k`` [F7b] (per sample; ``/N`` for the batch mean), times the incoming ``∂ℓ/∂L``."""
    # ∂L/∂O_k = S_k − y_k   [F7b]
    return grad_loss * (softmax - target) / softmax.shape[0]


class SoftmaxCrossEntropyFunction(torch.autograd.Function):
    """Autograd wrapper of ``softmax_cross_entropy_forward`` / ``_backward`` [F7, F7b]."""

    @staticmethod
    def forward(ctx: FunctionCtx, logits: Tensor, target: Tensor) -> Tensor:
        loss, softmax = softmax_cross_entropy_forward(logits, target)
        ctx.save_for_backward(softmax, target)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
        softmax, target = ctx.saved_tensors
        return softmax_cross_entropy_backward(grad_loss, softmax, target), None


def softmax_cross_entropy(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of ``softmax(logits)`` against class indices ``(N,)`` or probabilities ``(N, K)``."""
    if target.dim() == 1:
        classes = logits.shape[1]
        target = F.one_hot(target, classes).to(logits.dtype) * (1.0 - label_smoothing) + label_smoothing / classes
    return SoftmaxCrossEntropyFunction.apply(logits, target)
