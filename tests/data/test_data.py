"""Data sets, transforms, sampling and loaders (densenet.data.datasets)."""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image

from densenet.data.datasets import DataSpec, load_split, preprocessing_for
from densenet.data.images import ImageFiles, ImageTensors, read_image
from densenet.data.loader import EpochBatches, Loader
from densenet.data.transforms import eval_transform, random_crop, random_flip
from densenet.meta import Preprocessing
from imagefolder import CIFAR_TAR, CLASSES, extract_cifar_subset, make_image_folder


def _loader(split, spec, batch=8, shuffle=True, augment=None, workers=0, rank=0, world=1):
    preprocessing = preprocessing_for(spec, split)
    batches = EpochBatches(len(split), batch, shuffle=shuffle, seed=spec.seed, rank=rank, world_size=world)
    return Loader(split, preprocessing, batches, augment=augment or spec.augment_kind, workers=workers)


def test_digits_fixed_stratified_split():
    train = load_split(DataSpec("digits"), "train")
    test = load_split(DataSpec("digits"), "eval")
    assert isinstance(train, ImageTensors) and isinstance(test, ImageTensors)
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.uint8
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    counts = torch.bincount(test.targets, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of each class's ~180 images
    again = load_split(DataSpec("digits", seed=7), "eval")
    assert torch.equal(again.images, test.images)  # the split does not move with the run's seed
    assert train.class_names == [str(d) for d in range(10)]


def test_synthetic_sizes_and_seed():
    spec = DataSpec("synthetic", image_size=12, in_chans=1, train_limit=40, eval_limit=10)
    train = load_split(spec, "train")
    assert train.images.shape == (40, 1, 12, 12) and len(load_split(spec, "eval")) == 10
    assert torch.equal(load_split(spec, "train").images, train.images)
    assert not torch.equal(load_split(DataSpec("synthetic", image_size=12, in_chans=1, train_limit=40, seed=1),
                                      "train").images, train.images)


def test_limit_is_a_fixed_subset():
    full = load_split(DataSpec("digits"), "train")
    part = load_split(DataSpec("digits", train_limit=100), "train")
    assert len(part) == 100
    rows = {tuple(image.flatten().tolist()) for image in full.images}
    assert all(tuple(image.flatten().tolist()) in rows for image in part.images)


def test_epoch_batches_shard_and_resume():
    rank0 = EpochBatches(24, 4, shuffle=True, seed=3, rank=0, world_size=2)
    rank1 = EpochBatches(24, 4, shuffle=True, seed=3, rank=1, world_size=2)
    first = [i for batches in (rank0.batches(0), rank1.batches(0)) for batch in batches for i in batch]
    assert sorted(first) == list(range(24))  # the two processes share the epoch without overlap
    assert rank0.batches(0) == rank0.batches(0) and rank0.batches(0) != rank0.batches(1)
    assert rank0.batches(1, start=1) == rank0.batches(1)[1:]
    assert len(rank0) == 3 and len(EpochBatches(22, 4, shuffle=True, world_size=2)) == 2  # partial batch dropped
    evaluation = EpochBatches(7, 2, shuffle=False, rank=1, world_size=2)
    assert evaluation.batches(0) == [[1, 3], [5]] and len(evaluation) == 2


def test_random_crop_takes_windows_of_the_padded_image():
    images = torch.arange(2 * 3 * 5 * 5).view(2, 3, 5, 5)
    out = random_crop(images, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for n in range(2):
        windows = [padded[n, :, y:y + 5, x:x + 5] for y in range(5) for x in range(5)]
        assert any(torch.equal(out[n], window) for window in windows)
    flipped = random_flip(images, torch.Generator().manual_seed(0))
    for n in range(2):
        assert torch.equal(flipped[n], images[n]) or torch.equal(flipped[n], images[n].flip(-1))


def test_random_crop_offsets_are_uniform_and_each_output_is_its_window():
    n, size, padding = 5000, 6, 2
    spots = 2 * padding + 1  # offsets 0 … 2p on each axis
    base = (torch.arange(size * size) + 1).view(1, 1, size, size)  # every pixel distinct and nonzero (padding is 0)
    images = torch.cat([base, base + 100], dim=1).expand(n, 2, size, size).contiguous()  # (N, 2, 6, 6)
    out = random_crop(images, padding, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    # out[y, x] = padded[y + dy, x + dx] = image[y + dy - p, x + dx - p], so out[p, p] is the pixel (dy, dx)
    value = out[:, 0, padding, padding] - 1
    dy, dx = value // size, value % size
    assert int(dy.max()) < spots and int(dx.max()) < spots and int(value.min()) >= 0
    counts = torch.bincount(dy * spots + dx, minlength=spots * spots)
    expected = n / spots**2  # 200 each; a binomial's standard deviation here is about 14
    assert counts.min() > 0.7 * expected and counts.max() < 1.3 * expected, counts.view(spots, spots)
    padded = torch.nn.functional.pad(images, (padding,) * 4)  # (N, 2, 10, 10)
    for y in range(spots):
        for x in range(spots):
            chosen = (dy == y) & (dx == x)
            assert torch.equal(out[chosen], padded[chosen][:, :, y:y + size, x:x + size])  # both channels alike


def test_random_flip_mirrors_about_half_of_the_images_each_entirely():
    n = 4000
    images = torch.arange(n * 2 * 3).view(n, 1, 2, 3)  # no image is its own mirror
    out = random_flip(images, torch.Generator().manual_seed(0))
    mirrored = (out == images.flip(-1)).flatten(1).all(1)
    unchanged = (out == images).flatten(1).all(1)
    assert bool((mirrored ^ unchanged).all())  # each image whole, one way or the other
    assert 0.45 < float(mirrored.float().mean()) < 0.55  # p = 1/2; the standard deviation is 0.008


def test_augmentation_follows_the_generator_seed():
    images = torch.randint(0, 256, (64, 3, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)

    def augment(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return random_flip(random_crop(images, 4, generator), generator)

    assert torch.equal(augment(3), augment(3))
    assert not torch.equal(augment(3), augment(4))
    assert not torch.equal(augment(3), images)


def _augmenting_loader(images: torch.Tensor, augment: str, seed: int) -> Loader:
    """Batches of 4 in a fixed order (so that epochs differ by augmentation alone), values x / 255."""
    data = ImageTensors(images, torch.arange(len(images)) % 2, ["even", "odd"])
    preprocessing = Preprocessing("RGB", 12, 12, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    batches = EpochBatches(len(images), 4, shuffle=False, seed=seed)
    return Loader(data, preprocessing, batches, augment=augment, workers=0)


def _epoch(loader: Loader, epoch: int, start: int = 0) -> list[torch.Tensor]:
    loader.set_epoch(epoch, start)
    return [images for images, _ in loader]


def test_loader_augmentation_replays_by_seed_epoch_and_batch():
    images = torch.randint(1, 256, (16, 3, 12, 12), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    first = _epoch(_augmenting_loader(images, "cifar", seed=5), 1)
    again = _augmenting_loader(images, "cifar", seed=5)  # a fresh loader, as after a restart
    assert all(torch.equal(a, b) for a, b in zip(first, _epoch(again, 1), strict=True))
    assert torch.equal(_epoch(again, 1, start=2)[0], first[2])  # batch 2 alone, as when resuming mid-epoch
    assert all(not torch.equal(a, b) for a, b in zip(first, _epoch(again, 2), strict=True))  # another epoch
    other_seed = _epoch(_augmenting_loader(images, "cifar", seed=6), 1)
    assert all(not torch.equal(a, b) for a, b in zip(first, other_seed, strict=True))
    plain = _augmenting_loader(images, "none", seed=5)  # the control: without augmentation, epochs are alike
    assert all(torch.equal(a, b) for a, b in zip(_epoch(plain, 1), _epoch(plain, 2), strict=True))
    torch.testing.assert_close(torch.cat(_epoch(plain, 1)), images.float() / 255)


@pytest.mark.parametrize("augment, padding, flips", [("cifar", 4, True), ("shift", 1, False)])
def test_loader_augmentation_is_a_window_of_the_padded_image(augment, padding, flips):
    images = torch.randint(1, 256, (16, 3, 12, 12), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    padded = torch.nn.functional.pad(images, (padding,) * 4).float() / 255  # (16, 3, 12 + 2p, 12 + 2p)
    out = torch.cat(_epoch(_augmenting_loader(images, augment, seed=0), 0) + _epoch(_augmenting_loader(
        images, augment, seed=0), 1)).view(2, 16, 3, 12, 12)
    spots = range(2 * padding + 1)
    moved = mirrored = 0
    for epoch in range(2):
        for n in range(16):
            found = [(y, x, flip) for y in spots for x in spots for flip in (False, True)
                     if torch.equal(out[epoch, n], _window(padded[n], y, x, flip))]
            assert found, (epoch, n)
            moved += (found[0][0], found[0][1]) != (padding, padding)
            mirrored += found[0][2]
    assert moved > 16  # of 32 images; the chance of no shift is 1/81 (cifar) or 1/9 (shift) per image
    assert mirrored > 4 if flips else mirrored == 0  # cifar flips half the images; shift never


def _window(padded: torch.Tensor, y: int, x: int, flip: bool) -> torch.Tensor:
    window = padded[:, y:y + 12, x:x + 12]
    return window.flip(-1) if flip else window


def test_tensor_loader_normalises_and_replays():
    spec = DataSpec("synthetic", train_limit=64, eval_limit=16)
    split = load_split(spec, "train")
    loader = _loader(split, spec)
    loader.set_epoch(2)
    batches = list(loader)
    assert len(batches) == len(loader) == 8
    images, targets = batches[0]
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32 and targets.dtype == torch.int64
    loader.set_epoch(2, start=3)
    tail = list(loader)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches[3:], tail, strict=True))
    loader.set_epoch(3)
    assert not torch.equal(next(iter(loader))[0], images)
    preprocessing = loader.preprocessing
    evaluation = Loader(load_split(spec, "eval"), preprocessing, EpochBatches(16, 5, shuffle=False), workers=0)
    evaluation.set_epoch(0)
    stacked = torch.cat([b for b, _ in evaluation])
    mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
    expected = (load_split(spec, "eval").images.float() / 255 - mean) / std
    torch.testing.assert_close(stacked, expected)


def test_folder_reads_every_mode(tmp_path):
    root = make_image_folder(tmp_path)
    spec = DataSpec("folder", data_dir=str(root), image_size=16)
    train = load_split(spec, "train")
    assert isinstance(train, ImageFiles) and train.class_names == sorted(CLASSES) and len(train) == 36
    assert spec.augment_kind == "cifar"
    for path in ("red/002.png", "green/003.png", "blue/004.png"):  # RGBA, palette, grayscale
        assert read_image(root / "train" / path, "RGB").mode == "RGB"
        assert read_image(root / "train" / path, "L").mode == "L"
    loader = _loader(train, spec, batch=6)
    loader.set_epoch(0)
    images, targets = next(iter(loader))
    assert images.shape == (6, 3, 16, 16) and torch.isfinite(images).all() and targets.shape == (6,)


def test_folder_file_loader_replays_with_workers(tmp_path):
    root = make_image_folder(tmp_path, train=8, val=2)
    spec = DataSpec("folder", data_dir=str(root), image_size=16)
    split = load_split(spec, "train")
    serial, parallel = _loader(split, spec, batch=4), _loader(split, spec, batch=4, workers=2)
    for loader in (serial, parallel):
        loader.set_epoch(1)
    pairs = list(zip(serial, parallel, strict=True))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in pairs)  # workers change nothing
    serial.set_epoch(1, start=2)
    assert torch.equal(next(iter(serial))[0], pairs[2][0][0])


def test_cached_folder_equals_file_reading(tmp_path):
    root = make_image_folder(tmp_path, train=6, val=5, split_names=("train", "test"))
    files_spec = DataSpec("folder", data_dir=str(root), image_size=16, augment="none")
    cached_spec = DataSpec("folder", data_dir=str(root), image_size=16, augment="none", cache=True)
    files, cached = load_split(files_spec, "eval"), load_split(cached_spec, "eval")
    assert isinstance(cached, ImageTensors) and cached.images.shape == (15, 3, 16, 16)
    preprocessing = Preprocessing("RGB", 16, 16, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    outputs = []
    for split in (files, cached):
        loader = Loader(split, preprocessing, EpochBatches(len(split), 4, shuffle=False), workers=0)
        loader.set_epoch(0)
        outputs.append(torch.cat([images for images, _ in loader]))
    torch.testing.assert_close(outputs[0], outputs[1])


def test_unreadable_images_are_skipped_and_reported(tmp_path, caplog):
    root = make_image_folder(tmp_path, train=6, val=2)
    corrupt = root / "train" / "red" / "corrupt.png"
    corrupt.write_bytes(b"not an image at all")
    good = (root / "train" / "green" / "001.png").read_bytes()
    truncated = root / "train" / "green" / "truncated.png"
    truncated.write_bytes(good[: len(good) // 2])
    spec = DataSpec("folder", data_dir=str(root), image_size=16)
    split = load_split(spec, "train")
    loader = _loader(split, spec, batch=5)
    with caplog.at_level(logging.WARNING, logger="densenet"):
        for epoch in range(2):
            loader.set_epoch(epoch)
            assert len(split) == 20 and len(loader) == 4
            assert sum(len(targets) for _, targets in loader) == 18  # every image but the two unreadable ones
    assert sorted(set(loader.skipped)) == sorted([str(corrupt), str(truncated)])
    assert len(loader.skipped) == 4  # counted every epoch
    messages = [r.getMessage() for r in caplog.records]
    assert sum(str(corrupt) in m for m in messages) == 1  # reported once, by path
    with pytest.raises(ValueError, match=r"cannot read image .*corrupt\.png"):
        read_image(corrupt, "RGB")

    cached_spec = DataSpec("folder", data_dir=str(root), image_size=16, cache=True)
    with caplog.at_level(logging.WARNING, logger="densenet"):
        cached = _loader(load_split(cached_spec, "train"), cached_spec, batch=5)
    assert sum("skipped 2 unreadable" in r.getMessage() for r in caplog.records) == 1  # dropped once, at decoding
    for epoch in range(2):
        cached.set_epoch(epoch)
        assert sum(len(targets) for _, targets in cached) == 15  # 18 readable images, batches of 5
    assert sorted(cached.skipped) == sorted([str(corrupt), str(truncated)])  # dropped once: counted once (epoch 1)
    other_rank = _loader(load_split(cached_spec, "train"), cached_spec, batch=5, rank=1, world=2)
    other_rank.set_epoch(0)
    assert sum(len(targets) for _, targets in other_rank) > 0 and other_rank.skipped == []  # rank 0 counts them


def test_image_over_the_decompression_bomb_limit_is_unreadable(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path, train=1, val=1, size=16)
    image = next((root / "train" / "red").iterdir())
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64)  # 16×16 > 2 × 64: PIL raises DecompressionBombError
    with pytest.raises(ValueError, match=rf"cannot read image {image}"):
        read_image(image, "RGB")


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"),
    ("empty", "has no train/ folder"),
    ("no_classes", "holds no class folders"),
    ("empty_class", r"class folder\(s\) with no images in .*train: green \(image extensions"),
    ("no_val", r"has no val/ or test/ folder"),
])
def test_folder_bad_layouts(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "no_classes":
        (root / "train").mkdir()
    if layout in ("empty_class", "no_val"):
        make_image_folder(root, train=2, val=1)
    if layout == "empty_class":
        for image in (root / "train" / "green").iterdir():
            image.unlink()
    if layout == "no_val":
        for image in (root / "val").rglob("*.*"):
            image.unlink()
        for folder in sorted((root / "val").iterdir()):
            folder.rmdir()
        (root / "val").rmdir()
    split = "eval" if layout == "no_val" else "train"
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_split(DataSpec("folder", data_dir=str(root)), split)


def test_cifar_without_files_asks_for_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="--download"):
        load_split(DataSpec("cifar10", data_dir=str(tmp_path)), "train")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_split(DataSpec("cifar100", data_dir=str(tmp_path / "nowhere")), "train")


def test_bad_specs():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        DataSpec("mnist")
    with pytest.raises(ValueError, match="needs a data directory"):
        DataSpec("folder")
    with pytest.raises(ValueError, match="folder and csv datasets only"):
        DataSpec("digits", cache=True)


def test_preprocessing_round_trip_and_transform():
    preprocessing = Preprocessing("RGB", 36, 32, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    assert Preprocessing.from_dict(preprocessing.to_dict()) == preprocessing
    image = Image.new("RGB", (50, 40), (255, 0, 128))
    tensor = eval_transform(preprocessing)(image)
    assert tensor.shape == (3, 32, 32)
    expected = torch.tensor([(1 - 0.1) / 0.5, (0 - 0.2) / 0.5, (128 / 255 - 0.3) / 0.5])
    torch.testing.assert_close(tensor[:, 0, 0], expected)
    with pytest.raises(ValueError, match="mean and std need 1 values"):
        Preprocessing("L", 8, 8, (0.1, 0.2, 0.3), (1.0, 1.0, 1.0))


@pytest.mark.skipif(not CIFAR_TAR.is_file(), reason="the shared CIFAR-10 JPEGs are not available")
def test_real_cifar10_jpegs(tmp_path):
    root = extract_cifar_subset(tmp_path / "cifar10-jpeg", per_class=5)
    spec = DataSpec("folder", data_dir=str(root), augment="cifar", cache=True)
    train, test = load_split(spec, "train"), load_split(spec, "eval")
    assert isinstance(train, ImageTensors) and train.images.shape == (50, 3, 32, 32)
    assert len(test) == 50 and train.class_names[:3] == ["airplane", "automobile", "bird"]
    assert 40 < train.images.float().mean() < 200  # real photographs, not blank decodes
    loader = _loader(train, spec, batch=10)
    loader.set_epoch(0)
    images, _ = next(iter(loader))
    assert images.shape == (10, 3, 32, 32) and abs(float(images.mean())) < 1.5
