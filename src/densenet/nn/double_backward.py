"""Double backward (``create_graph=True``, e.g. a gradient penalty) through the explicit Functions.

The hand-written backwards of :mod:`densenet.nn.block` and :mod:`densenet.nn.recompute` are not themselves
differentiable. When autograd asks them for a differentiable gradient, they call these instead: each rebuilds its
forward from what it saved, in plain differentiable operations — the same function (batch statistics of the same
inputs, the same dropout masks, no second running-statistics update) — and lets autograd differentiate that with
``create_graph=True``. Slower than the explicit backward and it holds the plain path's intermediates for the
moment; it is logged once per process.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from densenet.nn.dims import BatchNorm, conv

logger = logging.getLogger("densenet")
_announced: set[str] = set()


def announce(what: str) -> None:
    """Log, once per process and kind of Function, that double backward runs through the plain form."""
    if what not in _announced:
        _announced.add(what)
        logger.info("double backward through the memory-efficient %s: differentiating its plain form instead "
                    "(slower; memory_efficient=False builds the plain path from the start)", what)


def differentiable_grads(output: Tensor, inputs: Sequence[Tensor | None], grad_out: Tensor) -> list[Tensor | None]:
    """``∂⟨grad_out, output⟩/∂input`` for each input that requires grad, recorded for a further backward."""
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    grads = iter(torch.autograd.grad(output, wanted, grad_out, create_graph=True, allow_unused=True))
    return [next(grads) if t is not None and t.requires_grad else None for t in inputs]


def batch_norm(x: Tensor, weight: Tensor, bias: Tensor, norm: BatchNorm, training: bool) -> Tensor:
    """``y = γ·x̂ + β`` [BN] with the batch's statistics (``training``, running ones left alone) or the running
    ones."""
    if training:
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, norm.eps)
    return F.batch_norm(x, norm.running_mean, norm.running_var, weight, bias, False, 0.0, norm.eps)


def plain_block(norms1: Sequence[BatchNorm], norms2: Sequence[BatchNorm], x: Tensor,
                params: Sequence[Tensor], masks: Sequence[Tensor], drop_rate: float, training: bool) -> Tensor:
    """``[x_0, …, x_L]`` with ``x_l = H_l([x_0, …, x_{l−1}])`` [F2] in plain operations, from the explicit
    block's parameters (per layer ``γ1, β1, W1`` + ``γ2, β2, W2``) and the dropout masks its forward drew."""
    per_layer = 6 if norms2 else 3
    features = [x]
    for index, norm1 in enumerate(norms1):
        gamma1, beta1, weight1 = params[index * per_layer:index * per_layer + 3]
        out = F.relu(batch_norm(torch.cat(features, dim=1), gamma1, beta1, norm1, training))
        if norms2:
            gamma2, beta2, weight2 = params[index * per_layer + 3:(index + 1) * per_layer]
            out = F.relu(batch_norm(conv(out, weight1.to(out.dtype), None), gamma2, beta2, norms2[index], training))
            out = conv(out, weight2.to(out.dtype), None, padding=1)  # (N, k, *spatial)
        else:
            out = conv(out, weight1.to(out.dtype), None, padding=1)  # (N, k, *spatial)
        if masks:
            # O = D ⊙ x / (1 − p)   [F6], the forward's own mask
            out = out * masks[index] / (1.0 - drop_rate)
        features.append(out)
    return torch.cat(features, dim=1)  # (N, C_0 + L·k, *spatial)
