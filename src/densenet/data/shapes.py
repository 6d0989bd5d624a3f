"""A generated multi-label image set with a known answer, written as a CSV data set (:mod:`densenet.data.csv_table`).

Each image is ``size × size`` RGB noise. Five labels, each present with probability ``present`` independently of
the others: four shapes — ``circle`` (a ring), ``square``, ``triangle`` (both filled), ``cross`` — drawn in a
random colour and size, each in its own quadrant (which quadrant is random), and one texture, ``stripes``: bright
horizontal stripes over the whole background. A label's answer is exactly whether it was drawn; a fraction
``unknown`` of the cells is left empty in the CSV (the image still has or lacks the shape, the label is just not
told), so training must mask them.

``ROOT/images/{train,val}/NNNNN.png``, ``ROOT/train.csv`` and ``ROOT/val.csv`` (``path`` + one column per label).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from densenet.fileio import atomic_path, write_text

SHAPE_LABELS = ("circle", "square", "triangle", "cross")
LABELS = (*SHAPE_LABELS, "stripes")


def draw_image(present: np.ndarray, size: int, rng: np.random.Generator) -> Image.Image:
    """One image with the labels ``present`` (bool ``(5,)``, in :data:`LABELS` order) drawn into noise."""
    pixels = rng.integers(0, 90, size=(size, size, 3))  # dark noise
    if present[LABELS.index("stripes")]:
        period = max(2, size // 8)
        rows = (np.arange(size) // (period // 2 or 1)) % 2 == 0
        pixels[rows] += 70
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    half = size // 2
    quadrants = rng.permutation(4)
    for shape, quadrant in zip(SHAPE_LABELS, quadrants, strict=True):
        if not present[LABELS.index(shape)]:
            continue
        side = int(rng.integers(max(4, half * 5 // 8), half - 1))  # the shape's box, inside its quadrant
        x0 = (quadrant % 2) * half + int(rng.integers(0, half - side))
        y0 = (quadrant // 2) * half + int(rng.integers(0, half - side))
        x1, y1 = x0 + side, y0 + side
        colour = tuple(int(c) for c in rng.integers(150, 256, size=3))
        if shape == "circle":  # a ring: hollow, unlike the filled square and triangle
            draw.ellipse((x0, y0, x1, y1), outline=colour, width=max(1, side // 5))
        elif shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif shape == "triangle":
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=colour)
        else:
            width = max(1, side // 4)
            draw.line((x0, (y0 + y1) / 2, x1, (y0 + y1) / 2), fill=colour, width=width)
            draw.line(((x0 + x1) / 2, y0, (x0 + x1) / 2, y1), fill=colour, width=width)
    return image


def write_shapes_dataset(root: str | Path, train: int = 400, val: int = 200, size: int = 32, present: float = 0.4,
                         unknown: float = 0.15, seed: int = 0) -> Path:
    """Generate the set into ``root`` (created); return ``root``. The validation split has its unknown cells too.

    Raises:
        ValueError: a count below 1, a size below 16, or a probability outside [0, 1).
    """
    if train < 1 or val < 1 or size < 16:
        raise ValueError(f"need train, val >= 1 and size >= 16, got {train}, {val}, {size}")
    if not 0 < present < 1 or not 0 <= unknown < 1:
        raise ValueError(f"need 0 < present < 1 and 0 <= unknown < 1, got {present}, {unknown}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        folder = root / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", *LABELS])
        for index in range(count):
            labels = rng.random(len(LABELS)) < present
            hidden = rng.random(len(LABELS)) < unknown
            relative = f"images/{split}/{index:05d}.png"
            with atomic_path(root / relative) as temporary:
                draw_image(labels, size, rng).save(temporary, format="PNG")
            writer.writerow([relative, *("" if h else int(v) for v, h in zip(labels, hidden, strict=True))])
        write_text(root / f"{split}.csv", buffer.getvalue())
    return root
