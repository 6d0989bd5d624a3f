"""A synthetic volumetric data set with a known answer: one solid shape per volume — a sphere, a cube or a rod —
at a random position and size, at a random brightness, in Gaussian noise (``shapes3d``)."""

from __future__ import annotations

import torch
from torch import Tensor

from densenet.data.arrays import ArrayTensors

SHAPES = ("sphere", "cube", "rod")
NOISE_STD = 0.4  # noise standard deviation; a shape's brightness is drawn from U(0.75, 1.25)
MAX_SHAPE_VOXELS = 512**3  # the set is generated in memory, one volume at a time


def shape_mask(shape: str, side: int, centre: Tensor, radius: float, axis: int) -> Tensor:
    """Voxels of ``shape`` in a ``side³`` grid, as a ``bool (side, side, side)`` mask.

    ``centre`` ``(3,)`` is in voxels. A sphere is ``‖x − c‖₂ ≤ r``; a cube (axis-aligned) ``‖x − c‖_∞ ≤ r``; a rod is
    a cylinder along ``axis`` of half-length ``2r`` and radius ``max(1, r / 2)``.
    """
    grid = torch.stack(torch.meshgrid(*(torch.arange(side, dtype=torch.float32),) * 3, indexing="ij"))  # (3, s, s, s)
    offset = grid - centre.view(3, 1, 1, 1)  # (3, s, s, s)
    if shape == "sphere":
        return offset.norm(dim=0) <= radius
    if shape == "cube":
        return offset.abs().amax(dim=0) <= radius
    if shape == "rod":
        across = [i for i in range(3) if i != axis]
        return (offset[axis].abs() <= 2 * radius) & (offset[across].norm(dim=0) <= max(1.0, radius / 2))
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def synthetic_shapes(count: int, side: int, seed: int, noise_std: float = NOISE_STD) -> ArrayTensors:
    """``count`` volumes ``float32 (1, side, side, side)``, classes drawn uniformly from :data:`SHAPES`.

    The noise is drawn first, so ``noise_std`` changes its scale and nothing else (``0``: the bare shapes).

    Each shape's size ``r`` is drawn from ``[side/6, side/4.5]`` (at least 1.5 to 2 voxels) and its centre so that the
    whole shape lies inside the volume (for ``side`` ≥ 9); the same ``seed`` gives the same volumes.

    Raises:
        ValueError: ``side`` below 8 (no room for the shapes) or the set would not fit in memory.
    """
    if side < 8:
        raise ValueError(f"the synthetic shapes need volumes of at least 8³ voxels, got {side}³")
    if count * side**3 > MAX_SHAPE_VOXELS:
        raise ValueError(f"{count} synthetic volumes of {side}³ are too many to generate in memory "
                         f"(at most {MAX_SHAPE_VOXELS:,} voxels in all)")
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, len(SHAPES), (count,), generator=generator)
    volumes = torch.randn(count, 1, side, side, side, generator=generator) * noise_std  # (N, 1, s, s, s)
    low, high = max(1.5, side / 6), max(2.0, side / 4.5)
    for index, target in enumerate(targets.tolist()):
        radius = low + (high - low) * float(torch.rand((), generator=generator))
        axis = int(torch.randint(0, 3, (), generator=generator))
        reach = torch.full((3,), radius)  # how far the shape extends from its centre along each axis
        if SHAPES[target] == "rod":
            reach = torch.full((3,), max(1.0, radius / 2))
            reach[axis] = 2 * radius
        centre = reach + torch.rand(3, generator=generator) * (side - 1 - 2 * reach).clamp_min(0)
        brightness = 0.75 + 0.5 * float(torch.rand((), generator=generator))
        volumes[index, 0] += brightness * shape_mask(SHAPES[target], side, centre, radius, axis)
    return ArrayTensors(volumes, targets, list(SHAPES), "volume")
