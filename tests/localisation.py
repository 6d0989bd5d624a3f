"""A generated localisation set with a known answer: one class-specific object at a random position on a
textured background, written as an image folder with each object's box beside it (``boxes.json``).

Design (measured in benchmarks/NOTES.md, "explain: pointing game"):

- The background is binary noise, every pixel ``128 ± CONTRAST``; the object is its shape (square, cross, ring)
  drawn as a checkerboard of the same two values. Object and background have the same pixel values and the same
  local energy, so a network with random weights has no reason to single the object out (a bright object on a
  plain background is found by the maps of random networks too, which would defeat the randomisation check);
  a trained network has to learn the checkerboard shapes.
- A fourth class, ``background``, is noise alone. Without it the network learns one shape class as "neither of
  the other two" and its maps point away from that class's object (measured: 0 % for it, 100 % for the others).
  Boxes are recorded for the object classes only; the pointing game is played on those images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

SHAPES = ("square", "cross", "ring")
CLASSES = (*SHAPES, "background")
CONTRAST = 100


def _object(shape: str, side: int) -> np.ndarray:
    """A ``side × side`` boolean mask of the class's shape."""
    mask = np.zeros((side, side), dtype=bool)
    third = max(side // 3, 1)
    if shape == "square":
        mask[:] = True
    elif shape == "cross":
        mask[third:side - third, :] = True
        mask[:, third:side - third] = True
    else:  # ring: the square's border, two pixels thick
        mask[:] = True
        mask[2:side - 2, 2:side - 2] = False
    return mask


def localisation_image(shape: str, size: int, side: int, rng: np.random.Generator
                       ) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A ``size × size`` gray RGB image of binary noise with the checkerboard object ``shape`` (none for
    ``background``) at a random position; returns the image and the object's box ``(top, left, bottom, right)``,
    bottom and right exclusive."""
    pixels = 128 + CONTRAST * rng.choice([-1.0, 1.0], size=(size, size))  # (size, size)
    top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    if shape != "background":
        rows, cols = np.mgrid[0:side, 0:side]
        checker = 128 + CONTRAST * np.where((rows + cols) % 2 == 0, 1.0, -1.0)  # the same two values, in order
        mask = _object(shape, side)
        pixels[top:top + side, left:left + side][mask] = checker[mask]
    rgb = np.repeat(np.clip(pixels, 0, 255).astype(np.uint8)[..., None], 3, axis=2)  # (size, size, 3)
    return Image.fromarray(rgb), (top, left, top + side, left + side)


def make_localisation_folder(root: Path, train: int, test: int, size: int = 24, side: int = 7,
                             seed: int = 0) -> Path:
    """``root/{train,test}/<class>/NNN.png`` (``train`` and ``test`` images per class) and ``root/boxes.json``
    (``{relative path: [top, left, bottom, right]}`` for the object classes)."""
    rng = np.random.default_rng(seed)
    boxes: dict[str, list[int]] = {}
    for split, count in (("train", train), ("test", test)):
        for shape in CLASSES:
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                image, box = localisation_image(shape, size, side, rng)
                image.save(folder / f"{index:03d}.png")
                if shape != "background":
                    boxes[f"{split}/{shape}/{index:03d}.png"] = list(box)
    (root / "boxes.json").write_text(json.dumps(boxes))
    return root
