"""The row form of channels-last maps that the dense block computes on: ``(M, C)`` rows, ``M = N·∏ spatial``.

A channels-last ``(N, C, *spatial)`` tensor is, in memory, ``M`` rows of ``C`` channel values; a view of the first
``C_l`` channels of the block's buffer is an ``(M, C_l)`` matrix with the buffer's row stride. Per-channel batch-norm
vectors ``(C,)`` broadcast along the rows.

Packed rows: a contiguous ``(M, C)`` tensor viewed as ``(M/r, r·C)`` with each ``(C,)`` vector repeated ``r`` times
is the same elementwise operation on longer rows. It matters for narrow rows in bfloat16: a row of 16 channels (one
dense layer's ``k``) is shorter than one AVX-512 vector of 32 bfloat16 values, and such per-channel operations ran
element by element, ~15× slower than on packed rows (measured in benchmarks/NOTES.md).
"""

from __future__ import annotations

from torch import Tensor

_PACKED_WIDTH = 128  # values per packed row to reach: four AVX-512 vectors of bfloat16


def image(rows: Tensor, n: int, spatial: tuple[int, ...]) -> Tensor:
    """``(M, C)`` rows (channel stride 1, any row stride) → ``(N, C, *spatial)`` view with channels-last strides
    (``M = N·∏ spatial``), in one ``as_strided``."""
    row_stride, strides = rows.stride(0), []
    for size in reversed(spatial):
        strides.append(row_stride)
        row_stride *= size
    return rows.as_strided((n, rows.shape[1], *spatial), (row_stride, 1, *reversed(strides)), rows.storage_offset())


def rows_of(image: Tensor) -> Tensor:
    """``(N, C, *spatial)`` → ``(M, C)`` rows; a view for channels-last tensors."""
    return image.movedim(1, -1).reshape(-1, image.shape[1])


def planar(image: Tensor) -> Tensor:
    """A signal's ``(N, C, L)`` channels-last view as ``(N, C, 1, L)``, images and volumes unchanged.

    ``native_batch_norm.out`` writes a 3-D ``out`` with channels-last strides as if it were contiguous (torch 2.14,
    CPU): 1-D has no channels-last memory format for the kernel to recognise. With a unit height the same memory
    is a 2-D channels-last tensor, which it handles.
    """
    return image.unsqueeze(2) if image.dim() == 3 else image


def pack_factor(count: int, width: int) -> int:
    """How many rows of ``width`` channels :func:`packed` lays side by side: doubled while the packed row is under
    128 values and the factor divides ``count`` (so any ``count`` works; an odd one is not packed)."""
    factor = 1
    while factor * width < _PACKED_WIDTH and count % (2 * factor) == 0:
        factor *= 2
    return factor


def packed(rows: Tensor, factor: int) -> Tensor:
    """Contiguous ``(M, C)`` rows as ``(M/r, r·C)``: a per-channel vector repeated ``r`` times (``vector.repeat(r)``)
    broadcasts over it exactly as the vector over the rows."""
    return rows.view(rows.shape[0] // factor, factor * rows.shape[1])


def column_image(rows: Tensor) -> Tensor:
    """Contiguous ``(M, C)`` rows as a ``(1, C, M, 1)`` channels-last image: the layout in which the batch-norm
    kernels (``native_batch_norm_backward``'s sums) take their fast channels-last path for any ``d``."""
    count, channels = rows.shape
    return rows.as_strided((1, channels, count, 1), (count * channels, 1, channels, channels))
