"""The held-out validation split of a folder (``--val-fraction``) and the typical image size of a folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from densenet.data.holdout import held_out
from densenet.data.images import ImageFiles
from densenet.data.sizes import typical_side


def _files(counts: list[int]) -> ImageFiles:
    samples = [(f"/d/train/c{c}/{i:03d}.png", c) for c, count in enumerate(counts) for i in range(count)]
    return ImageFiles(Path("/d/train"), samples, [f"c{c}" for c in range(len(counts))])


def test_held_out_split_is_stratified_disjoint_and_fixed_by_the_seed():
    files = _files([20, 10, 30])
    train, val = held_out(files, 0.2, 7, True), held_out(files, 0.2, 7, False)
    assert len(val) == 12 and len(train) == 48
    assert [sum(t == c for _, t in val.samples) for c in range(3)] == [4, 2, 6]  # 20 %, 20 %, 20 % of each class
    assert set(train.samples).isdisjoint(val.samples) and sorted(train.samples + val.samples) == sorted(files.samples)
    assert held_out(files, 0.2, 7, False).samples == val.samples  # the same split again
    assert held_out(files, 0.2, 8, False).samples != val.samples  # another seed, another split
    assert train.class_names == val.class_names == files.class_names


@pytest.mark.parametrize("counts, fraction, message", [
    ([5, 1], 0.5, "fewer than 2 images: c1"),
    ([10, 10, 10], 0.05, "holds out 2; a stratified split needs at least 3"),
    ([3, 3], 0.9, "needs at least 2 .* on each side"),
    ([3, 3], 1.0, r"must be in \(0, 1\)"),
])
def test_held_out_split_that_cannot_be_made_is_one_line(counts, fraction, message):
    with pytest.raises(ValueError, match=message):
        held_out(_files(counts), fraction, 0, False)


def test_typical_side_is_the_median_shorter_side_of_readable_images(tmp_path):
    samples = []
    for i, size in enumerate([(40, 50), (60, 40), (40, 40), (100, 120), (200, 100)]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", size).save(path)
        samples.append((str(path), 0))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    samples.append((str(tmp_path / "bad.png"), 0))
    files = ImageFiles(tmp_path, samples, ["a"])
    assert typical_side(files) == 40  # shorter sides 40, 40, 40, 100, 100
    assert typical_side(files, sample=2) == 40  # files 0 and 3: sides 40 and 100, the lower middle
    assert typical_side(ImageFiles(tmp_path, samples[-1:], ["a"])) is None
