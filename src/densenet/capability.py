"""What this machine's CPU runs fast: bfloat16 in oneDNN's kernels, or not.

oneDNN computes bfloat16 convolutions on CPUs with AVX-512 (BW, VL, DQ), AVX-NE-CONVERT or AMX. Elsewhere (an AVX2
CPU such as AMD's Zen 3) PyTorch's bfloat16 convolutions fall back to its generic kernels (``slow_conv2d``), many
times slower than float32 — a bfloat16 model still computes the same function there, but is no longer the fast
choice, and oneDNN's own bfloat16 primitives cannot be created at all. The deploy paths ask :func:`onednn_bfloat16`
before choosing oneDNN for bfloat16, and training and inference in bfloat16 say once when it will be slow
(:func:`warn_slow_bfloat16`).
"""

from __future__ import annotations

import functools
import warnings

import torch


@functools.cache
def onednn_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions on this CPU (PyTorch's own test, the one its convolutions use)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and check is not None and check())


def slow_bfloat16_reason() -> str:
    """The one line that says why bfloat16 is slow on this CPU."""
    return ("this CPU has no bfloat16 instructions oneDNN uses (AVX-512 BW/VL/DQ, AVX-NE-CONVERT or AMX): bfloat16 "
            "convolutions run on PyTorch's generic kernels, several times slower than float32 — float32 is the "
            "faster choice here")


@functools.cache
def warn_slow_bfloat16() -> None:
    """Warn (``RuntimeWarning``) once per process with :func:`slow_bfloat16_reason`, where bfloat16 is slow on this
    CPU."""
    if not onednn_bfloat16():
        warnings.warn(f"densenet: {slow_bfloat16_reason()}", RuntimeWarning, stacklevel=3)
