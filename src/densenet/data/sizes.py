"""The typical size of a folder's images, read from the file headers of a fixed sample (nothing decoded)."""

from __future__ import annotations

import statistics

from PIL import Image, UnidentifiedImageError

from densenet.data.images import ImageFiles

SAMPLE_SIZE = 64


def typical_side(files: ImageFiles, sample: int = SAMPLE_SIZE) -> int | None:
    """The median (the lower middle value) of the shorter side of up to ``sample`` images spread evenly over the
    sorted file list; ``None`` when none of them is readable (unreadable files are left out here and reported when
    loaded)."""
    count = min(sample, len(files.samples))
    if count == 0:
        return None
    picked = [files.samples[i * len(files.samples) // count][0] for i in range(count)]
    sides = []
    for path in picked:
        try:
            with Image.open(path) as image:  # reads the header only
                sides.append(min(image.size))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            continue
    return statistics.median_low(sides) if sides else None
