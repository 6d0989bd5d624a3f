"""A tiny ImageFolder tree generated on the fly: one colour per class, saved in several image modes."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("red", "green", "blue")
CIFAR_TAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def colour_image(class_index: int, size: int, rng: np.random.Generator) -> Image.Image:
    """An RGB image whose channel ``class_index`` is bright and the others dark, with noise."""
    pixels = rng.integers(0, 60, size=(size, size, 3))
    pixels[..., class_index] += 160
    return Image.fromarray(pixels.astype(np.uint8))


def make_image_folder(root: Path, train: int = 12, val: int = 4, size: int = 16, seed: int = 0,
                      split_names: tuple[str, str] = ("train", "val")) -> Path:
    """``root/{train,val}/{red,green,blue}/*`` in RGB JPEG, RGB PNG, RGBA PNG, palette PNG and grayscale PNG."""
    rng = np.random.default_rng(seed)
    for split, count in zip(split_names, (train, val), strict=True):
        for class_index, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = colour_image(class_index, size + i % 3, rng)  # sizes vary: resize/crop must cope
                kind = i % 5
                if kind == 0:
                    image.save(folder / f"{i:03d}.jpg", quality=95)
                elif kind == 1:
                    image.save(folder / f"{i:03d}.png")
                elif kind == 2:
                    image.convert("RGBA").save(folder / f"{i:03d}.png")
                elif kind == 3:
                    image.convert("P").save(folder / f"{i:03d}.png")
                else:
                    image.convert("L").save(folder / f"{i:03d}.png")
    return root


def extract_cifar_subset(root: Path, per_class: int) -> Path:
    """The first ``per_class`` train and test JPEGs of each class from the shared CIFAR-10 archive."""
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR_TAR) as archive:
        for member in archive:
            parts = Path(member.name).parts  # cifar10-jpeg/<split>/<class>/<file>
            if not member.isfile() or len(parts) != 4:
                continue
            key = (parts[1], parts[2])
            if counts.get(key, 0) >= per_class:
                continue
            counts[key] = counts.get(key, 0) + 1
            target = root / parts[1] / parts[2] / parts[3]
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None
            target.write_bytes(source.read())
    return root
