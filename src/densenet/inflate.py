"""2-D weights as a start for 1-D and 3-D networks: each convolution kernel inflated (3-D) or collapsed (1-D) so
that the N-D network computes what the 2-D one computes on the input it was trained on.

The rule is one identity in both directions: a volume constant along its depth is a stack of one image, and an
image constant along its height is a signal repeated down its rows. A kernel that makes the N-D network answer such
an input as the 2-D network answers the image keeps every activation at the magnitude the pretrained batch norms'
running statistics expect, so nothing else needs rescaling.

- **3-D** (I3D, Carreira & Zisserman 2017): the 2-D kernel repeated along depth and divided by its depth,
  ``w₃[o, i, d, h, w] = w₂[o, i, h, w] / K_D``. On a volume with ``x[d] = x₂`` for every slice,
  ``Σ_d Σ_hw w₂/K_D · x₂ = Σ_hw w₂ x₂``: the 2-D response, on every slice whose depth window lies inside the volume.
- **1-D**: the 2-D kernel summed over its height, ``w₁[o, i, w] = Σ_h w₂[o, i, h, w]``. The signal runs along the
  image's width (time left to right, as it is plotted); on the image ``x₂[h, w] = s[w]``,
  ``Σ_hw w₂[h, w] s[w] = Σ_w (Σ_h w₂[h, w]) s[w]``: the 2-D response on every row whose height window lies inside
  the image. (A mean over the height instead would shrink every response by ``K_H`` and leave the batch norms'
  statistics wrong by as much.)

Zero padding breaks the identity at the borders: a window that reaches past the first or last slice (row) sums
fewer than ``K`` copies, so the outermost positions of each map differ, and the difference spreads inwards by the
receptive field. Batch norms, the classifier and the biases carry over unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

RULES = {
    1: "summed over the kernel's height",
    3: "repeated along depth and divided by the kernel's depth, as in I3D",
}


def inflate_kernel(weight: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """A 2-D convolution kernel ``(C_out, C_in, K_H, K_W)`` as the 1-D or 3-D kernel of ``shape``.

    ``shape`` is the N-D network's ``(C_out, C_in, K_W)`` or ``(C_out, C_in, K_D, K_H, K_W)``; the channels and the
    kernel's 2-D extent must match.

    Raises:
        ValueError: ``weight`` is not 4-D, or ``shape`` is not a 1-D/3-D kernel of the same channels and extent.
    """
    if weight.dim() != 4:
        raise ValueError(f"expected a 2-D convolution kernel (C_out, C_in, K_H, K_W), got shape {tuple(weight.shape)}")
    shape = tuple(shape)
    if len(shape) == 5 and shape[:2] + shape[3:] == tuple(weight.shape):
        depth = shape[2]
        # w₃[o, i, d, h, w] = w₂[o, i, h, w] / K_D   (I3D)
        return weight.unsqueeze(2).expand(shape).div(depth).contiguous()  # (C_out, C_in, K_D, K_H, K_W)
    if len(shape) == 3 and shape == (*weight.shape[:2], weight.shape[3]):
        # w₁[o, i, w] = Σ_h w₂[o, i, h, w]
        return weight.sum(dim=2)  # (C_out, C_in, K_W)
    raise ValueError(f"cannot inflate a 2-D kernel of shape {tuple(weight.shape)} to {shape}")


def inflate_state_dict(state: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], int]:
    """``state`` with each 2-D convolution kernel whose counterpart in ``expected`` (the N-D model's state dict) is
    a 1-D or 3-D kernel of the same channels and extent replaced by :func:`inflate_kernel`'s. Returns the new state
    and how many kernels were inflated; every other tensor, and a kernel that does not fit, is left as it is (the
    loader reports what does not fit)."""
    inflated, count = dict(state), 0
    for key, value in state.items():
        target = expected.get(key)
        if target is None or value.dim() != 4 or target.dim() not in (3, 5):
            continue
        try:
            inflated[key] = inflate_kernel(value, target.shape)
        except ValueError:
            continue
        count += 1
    return inflated, count
