"""Fused CPU kernels for the dense block's BN-ReLUs on rows [BN] (``fused_bn_relu.cpp``).

On the CPU, ATen makes several passes over a layer's ``(M, C_l)`` input rows for what is one formula: the recomputed
``r = σ(a·x + b)`` is an ``addcmul`` and a ``clamp_min_``; BN1's backward is σ' (``threshold_backward``), a
contiguous copy of the strided rows (the batch-norm sums are ~30× slower on a strided view), the sums
``Σδ``, ``Σδ(x − μ)`` and the in-place ``∂L/∂x += a·δ``. The kernels here make one pass each (two for BN2's
backward):

- :func:`affine_relu_rows`: ``out = σ(a·x + b)``;
- :func:`bn_relu_backward_rows`: ``δ = ∂L/∂r ⊙ 1[σ(a·x + b) > 0]`` (the mask recomputed from ``x`` by the same
  arithmetic as the forward's), ``∂L/∂x += a·δ`` in place, and returns ``∂L/∂γ = Σδx̂ = σ⁻¹Σδ(x − μ)`` and
  ``∂L/∂β = Σδ`` — what :func:`densenet.nn.batchnorm.bn_relu_backward_into` computes with ATen's operations;
- :func:`bn_relu_backward_full_rows`: the whole BN-ReLU backward of contiguous rows (a dense layer's BN2; the
  transitions' and the 2-D stem's BN, :mod:`densenet.nn.recompute`), the sums in one pass and
  ``∂L/∂x = a·(δ − (1/M)(Σδ + x̂·Σδx̂))`` in a second — ATen: σ', the sums, two ``addcmul``;
- :func:`copy_rows_with_stats`: a new map (or a bottleneck output) copied into its place and its batch statistics
  taken in the same pass — ATen: the copy, then ``native_batch_norm`` (which also writes a discarded output);
- :func:`affine_add_rows`: ``out = y + (a·x + b)`` from strided rows into contiguous ones — a new map's complete
  gradient with the deferred BN terms (the dense block's ``settled``); ATen: two copies and two passes.

They are compiled on first use for the machine's CPU (``torch.utils.cpp_extension``: the system's C++ compiler
and the ``ninja`` this package depends on; ~20 s, cached under ``$TORCH_EXTENSIONS_DIR``) and serve float32,
float64 and bfloat16 CPU tensors outside ``torch.compile``; everywhere else (CUDA, float16, a traced graph) the
block runs ATen's operations, which compute the same formula. If the kernels cannot be built, one warning says
why and ATen's operations serve. ``DENSENET_FUSED_KERNELS=0`` turns them off (to compare the two paths).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

from densenet.extensions import build, first_line
from densenet.nn.batchnorm import in_dtype

SWITCH = "DENSENET_FUSED_KERNELS"
_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
_SOURCE = Path(__file__).with_name("fused_bn_relu.cpp")
_loaded: bool | None = None  # None: not tried yet


def _compiler_flags() -> list[str]:
    """Optimised for this CPU (the kernels are built on the machine that runs them), OpenMP for ATen's
    ``parallel_for`` in the kernels, and no contraction to FMA except where the source asks for one: the forward and
    the backward's recomputed ReLU mask must round alike."""
    return ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp"]


def _load() -> bool:
    """Build (or find in the cache) and load the kernels once; ``False`` with one warning if that fails."""
    global _loaded
    if _loaded is None:
        try:
            build("densenet_fused_bn_relu", _SOURCE, _compiler_flags(), ["-fopenmp"])
            _loaded = True
        except Exception as error:  # a missing compiler or ninja, a failed build: ATen's operations serve
            warnings.warn(f"densenet: the fused CPU kernels could not be built ({first_line(error)}); the dense "
                          f"blocks use ATen's operations (same results, slower). Set {SWITCH}=0 to skip the attempt.",
                          RuntimeWarning, stacklevel=3)
            _loaded = False
    return _loaded


def applies(rows: Tensor) -> bool:
    """Whether the kernels serve these rows: a float32 / float64 / bfloat16 CPU tensor, outside ``torch.compile``,
    not switched off, and the kernels built."""
    if rows.device.type != "cpu" or rows.dtype not in _DTYPES or torch.compiler.is_compiling():
        return False
    if os.environ.get(SWITCH, "1") == "0":
        return False
    return _load()


def opmath(vector: Tensor, rows: Tensor) -> Tensor:
    """A per-channel vector in the kernels' arithmetic type for ``rows``: float64 for float64 rows, float32
    otherwise (no operation when it already is)."""
    return in_dtype(vector, torch.float64 if rows.dtype == torch.float64 else torch.float32)


def affine_relu_rows(x: Tensor, scale: Tensor, shift: Tensor, out: Tensor) -> Tensor:
    """``out = σ(a·x + b)`` per channel for ``(M, C)`` rows (channel stride 1, any row stride); ``a``, ``b``:
    ``(C,)`` in :func:`opmath`'s type. Returns ``out``."""
    torch.ops.densenet.affine_relu_rows(x, scale, shift, out)
    return out


def bn_relu_backward_rows(grad: Tensor, grad_relu: Tensor, x: Tensor, scale: Tensor, shift: Tensor, mean: Tensor,
                          invstd: Tensor) -> tuple[Tensor, Tensor]:
    """BN-ReLU backward [BN] on ``(M, C)`` rows: ``grad += a·δ`` with ``δ = ∂L/∂r ⊙ 1[σ(a·x + b) > 0]``; returns
    ``(Σδx̂, Σδ)`` (``∂L/∂γ``, ``∂L/∂β``). Vectors ``(C,)`` in :func:`opmath`'s type; ``grad_relu`` is not changed."""
    return torch.ops.densenet.bn_relu_backward_rows(grad, grad_relu, x, scale, shift, mean, invstd)


def bn_relu_backward_full_rows(grad_relu: Tensor, x: Tensor, scale: Tensor, shift: Tensor, mean: Tensor,
                               invstd: Tensor, training: bool, out: Tensor) -> tuple[Tensor, Tensor]:
    """BN-ReLU backward [BN] on ``(M, C)`` rows into ``out`` (a tensor of its own): ``∂L/∂x = a·(δ − (1/M)(Σδ +
    x̂·Σδx̂))`` with batch statistics, ``a·δ`` with running ones (``training=False``); returns ``(Σδx̂, Σδ)``
    (``∂L/∂γ``, ``∂L/∂β``, in either case). Vectors ``(C,)`` in :func:`opmath`'s type."""
    return torch.ops.densenet.bn_relu_backward_full_rows(grad_relu, x, scale, shift, mean, invstd, training, out)


def affine_add_rows(y: Tensor, x: Tensor, scale: Tensor, shift: Tensor, out: Tensor) -> Tensor:
    """``out = y + (a·x + b)`` per channel for ``(M, C)`` rows (``y``, ``x``: any row stride; ``out``: a tensor of
    its own); ``a``, ``b`` in :func:`opmath`'s type. Returns ``out``."""
    torch.ops.densenet.affine_add_rows(y, x, scale, shift, out)
    return out


def copy_rows_with_stats(src: Tensor, dst: Tensor, eps: float, mean: Tensor, invstd: Tensor) -> None:
    """``dst = src`` for ``(M, C)`` rows (any row strides), and each channel's batch ``μ`` and ``1/√(σ² + ε)``
    (biased ``σ²``) into ``mean``, ``invstd`` (``(C,)``, contiguous, in :func:`opmath`'s type): sums of the values
    less the channel's first one, over blocks of rows in :func:`opmath`'s type and the blocks in float64."""
    torch.ops.densenet.copy_rows_with_stats(src, dst, eps, mean, invstd)
