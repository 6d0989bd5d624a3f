"""Do the maps mean something? Two checks with a known answer.

- **Pointing game** (Zhang et al., 2016): a map "hits" when its maximum lies inside the object's box; the score is
  the fraction of hits. A map with no maximum (flat, e.g. all zero) points nowhere and misses.
- **Model randomisation** (Adebayo et al., "Sanity checks for saliency maps", 2018): the same maps from a network
  whose weights are all re-drawn must lose what they had; a method whose maps survive it explains the image, not
  the model. :func:`randomized_copy` re-draws every weight (the cascading test's last step, "all layers").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from densenet.model import DenseNet


def points_inside(heatmap: np.ndarray, box: Sequence[int]) -> bool:
    """Whether the maximum of a 2-D ``heatmap`` falls inside ``box`` = ``(top, left, bottom, right)`` (bottom and
    right exclusive). Ties: the first maximum in row-major order; a flat map is a miss."""
    if float(heatmap.max()) <= float(heatmap.min()):
        return False
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    top, left, bottom, right = box
    return bool(top <= row < bottom and left <= col < right)


def pointing_game(heatmaps: Sequence[np.ndarray], boxes: Sequence[Sequence[int]]) -> float:
    """The fraction of ``heatmaps`` whose maximum falls inside the matching box."""
    if len(heatmaps) != len(boxes) or not boxes:
        raise ValueError(f"need one box per heatmap (and at least one), got {len(heatmaps)} maps, {len(boxes)} boxes")
    return sum(points_inside(h, b) for h, b in zip(heatmaps, boxes, strict=True)) / len(boxes)


def box_fraction(boxes: Sequence[Sequence[int]], size: tuple[int, int]) -> float:
    """The pointing game's chance level: the mean fraction of the image the boxes cover (a uniformly random point
    hits with that probability)."""
    area = size[0] * size[1]
    return float(np.mean([(bottom - top) * (right - left) / area for top, left, bottom, right in boxes]))


def randomized_copy(model: DenseNet, seed: int = 0) -> DenseNet:
    """A network of ``model``'s architecture and metadata with every weight re-drawn from the initial distribution
    (and fresh batch-norm statistics), in eval mode."""
    if not isinstance(model, DenseNet):
        raise TypeError(f"randomized_copy expects a densenet.DenseNet, got {type(model).__name__}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = DenseNet(model.config, meta=model.meta)
    reference = next(model.parameters())
    return fresh.to(device=reference.device, dtype=reference.dtype).eval()
