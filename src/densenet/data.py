"""Datasets and transforms: ``digits``, ``cifar10`` / ``cifar100``, ``folder`` and ``synthetic``.

Two kinds of source feed the same loaders:

- :class:`ImageTensors` — every image decoded once into one ``uint8`` tensor in memory (digits, CIFAR, synthetic,
  and an image folder with ``cache``). Batches are gathered and augmented as whole tensors: the paper's CIFAR
  augmentation (4-pixel zero-padded random crop, horizontal flip) vectorised over the batch, then per-channel
  normalisation with :func:`torchvision.transforms.v2.functional.normalize`.
- :class:`ImageFiles` — an ImageFolder tree read image by image with torchvision transforms (ImageNet's random
  resized crop / resize 256 + centre crop 224, or the CIFAR crop and flip), in worker processes.

Randomness never depends on the number of workers or on where an epoch starts: the shuffled order is a function
of ``(seed, epoch)`` (:class:`torch.utils.data.DistributedSampler`), each batch's augmentation of
``(seed, epoch, rank, batch)`` and each file's of ``(seed, epoch, index)``. That is what lets an interrupted run
resume mid-epoch and end with the same weights.

Unreadable images (corrupt or truncated files) are skipped: each is logged once by path with the reason, and
every epoch reports how many were skipped. A split in which no image can be read is an error.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import datasets
from torchvision.transforms import v2

logger = logging.getLogger("densenet")

DATASETS = ("digits", "cifar10", "cifar100", "folder", "synthetic")
AUGMENTATIONS = ("auto", "cifar", "shift", "imagenet", "none")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")

# Per-channel mean and standard deviation of the training images (CIFAR) and torchvision's ImageNet constants.
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DIGITS_TEST_FRACTION = 0.2
SYNTHETIC_SIZES = (1024, 256)


MAX_IMAGE_SIDE = 8192  # largest resize/crop a Preprocessing accepts (a 3×8192² float32 input is 805 MB)
MAX_SYNTHETIC_IMAGES = 10_000_000  # the synthetic set is generated in memory


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input at evaluation time; saved with the weights.

    Attributes:
        image_mode: PIL mode the image is converted to: ``"L"`` (1 channel) or ``"RGB"`` (3 channels).
        resize: the shorter side is resized to this many pixels …
        crop: … then the centre ``crop × crop`` is taken.
        mean: per-channel mean subtracted after scaling pixels to [0, 1].
        std: per-channel standard deviation divided by.
    """

    image_mode: str
    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.image_mode not in ("L", "RGB"):
            raise ValueError(f"image_mode must be 'L' or 'RGB', got {self.image_mode!r}")
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IMAGE_SIDE:
                raise ValueError(f"{name} must be an integer in [1, {MAX_IMAGE_SIDE}], got {value!r}")
        if self.crop > self.resize:
            raise ValueError(f"crop {self.crop} is larger than resize {self.resize}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values for image mode {self.image_mode}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (*self.mean, *self.std)):
            raise ValueError(f"mean and std must be lists of numbers, got {list(self.mean)} and {list(self.std)}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not all(math.isfinite(v) for v in self.mean) or not all(math.isfinite(v) and v > 0 for v in self.std):
            raise ValueError(f"mean must be finite and std finite and > 0, got {self.mean} and {self.std}")

    @property
    def channels(self) -> int:
        """Channels of the network input."""
        return 1 if self.image_mode == "L" else 3

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {"image_mode": self.image_mode, "resize": self.resize, "crop": self.crop, "mean": list(self.mean),
                "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: Any) -> Preprocessing:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            ValueError: ``data`` is not such a mapping (a key missing, a value of the wrong type or range).
        """
        try:
            mean, std = data["mean"], data["std"]
            if not isinstance(mean, (list, tuple)) or not isinstance(std, (list, tuple)):
                raise TypeError("mean and std must be lists")
            return cls(data["image_mode"], data["resize"], data["crop"], tuple(mean), tuple(std))
        except (KeyError, TypeError) as error:
            raise ValueError(f"preprocessing must map image_mode, resize, crop, mean and std, got {data!r}") from error

    def transform(self) -> v2.Compose:
        """PIL image → normalised ``(C, crop, crop)`` float tensor: resize, centre crop, scale, normalise."""
        return v2.Compose([v2.Resize(self.resize, antialias=True), v2.CenterCrop(self.crop), *_to_float(self)])

    def normalize_batch(self, images: Tensor) -> Tensor:
        """``uint8 (N, C, H, W)`` → resized, centre-cropped, normalised ``float32 (N, C, crop, crop)``."""
        if images.shape[-1] != self.crop or images.shape[-2] != self.crop:
            images = v2.functional.center_crop(v2.functional.resize(images, [self.resize], antialias=True),
                                               [self.crop])
        images = images.float().div_(255)  # (N, C, crop, crop) in [0, 1]
        return v2.functional.normalize(images, list(self.mean), list(self.std))


def _to_float(preprocessing: Preprocessing) -> list[Any]:
    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(preprocessing.mean, preprocessing.std)]


@dataclass
class ImageTensors:
    """A split held in memory: ``images`` ``uint8 (N, C, H, W)`` and ``targets`` ``int64 (N,)``."""

    images: Tensor
    targets: Tensor
    class_names: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def channels(self) -> int:
        """Channels per image."""
        return self.images.shape[1]

    def subset(self, indices: Tensor) -> ImageTensors:
        """The images at ``indices``."""
        return ImageTensors(self.images[indices], self.targets[indices], self.class_names, self.skipped)


@dataclass
class ImageFiles:
    """A split read from files: ``samples`` are ``(path, class index)`` pairs, decoded when loaded."""

    root: Path
    samples: list[tuple[str, int]]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.samples)


Split = ImageTensors | ImageFiles


@dataclass(frozen=True)
class DataSpec:
    """Which data set to read and how.

    Attributes:
        name: one of :data:`DATASETS`.
        data_dir: root of ``cifar10`` / ``cifar100`` (torchvision's batches) or of ``folder`` (``train/`` and
            ``val/`` or ``test/``, one sub-folder per class).
        download: let torchvision download CIFAR into ``data_dir`` when it is missing.
        image_size: side of the network input (``folder``: images are resized to it; ``synthetic``: generated at it).
        augment: training augmentation, one of :data:`AUGMENTATIONS`; ``auto`` picks by data set.
        cache: ``folder`` only: decode every image once into memory (for small images such as CIFAR's JPEGs).
        in_chans: channels of the network input (``folder`` / ``synthetic``: 1 converts images to grayscale).
        train_limit: use at most this many training images (a fixed random subset; ``synthetic``: generate this many).
        eval_limit: the same for the evaluation split.
        seed: seed of the subsets and of the synthetic data.
    """

    name: str = "digits"
    data_dir: str | None = None
    download: bool = False
    image_size: int | None = None
    augment: str = "auto"
    cache: bool = False
    in_chans: int = 3
    train_limit: int | None = None
    eval_limit: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise ValueError(f"unknown dataset {self.name!r}; known: {', '.join(DATASETS)}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augment {self.augment!r}; known: {', '.join(AUGMENTATIONS)}")
        for name in ("train_limit", "eval_limit", "image_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.image_size is not None and self.image_size > MAX_IMAGE_SIDE:
            raise ValueError(f"image_size must be at most {MAX_IMAGE_SIDE}, got {self.image_size}")
        for name in ("train_limit", "eval_limit"):
            value = getattr(self, name)
            if self.name == "synthetic" and value is not None and value > MAX_SYNTHETIC_IMAGES:
                raise ValueError(f"{name} of the synthetic data set makes that many images in memory: at most "
                                 f"{MAX_SYNTHETIC_IMAGES:,}, got {value:,}")
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3 for image data, got {self.in_chans}")
        if self.name in ("cifar10", "cifar100", "folder") and not self.data_dir:
            raise ValueError(f"dataset {self.name} needs a data directory (--data-dir)")
        if self.cache and self.name != "folder":
            raise ValueError("cache applies to the folder dataset only (the others are held in memory already)")
        if self.augment_kind == "imagenet" and self.name != "folder":
            raise ValueError(f"augment 'imagenet' needs the folder dataset, not {self.name}")
        if self.augment_kind == "imagenet" and self.cache:
            raise ValueError("augment 'imagenet' crops full-size images; it cannot run on a cached folder")

    @property
    def augment_kind(self) -> str:
        """The augmentation ``auto`` resolves to."""
        if self.augment != "auto":
            return self.augment
        if self.name == "digits":
            return "shift"
        if self.name == "folder":
            small = self.cache or (self.image_size is not None and self.image_size < 128)
            return "cifar" if small else "imagenet"
        return "cifar" if self.name.startswith("cifar") else "none"

    @property
    def crop(self) -> int:
        """Side of the network input."""
        if self.name == "digits":
            return self.image_size or 8
        if self.name == "folder" and self.augment_kind == "imagenet":
            return self.image_size or 224
        return self.image_size or 32


def load_split(spec: DataSpec, split: str, preprocessing: Preprocessing | None = None) -> Split:
    """Read the ``"train"`` or ``"eval"`` split of ``spec``.

    ``preprocessing`` (of the weights being evaluated) sets the image mode and size of a cached folder; without
    it they come from ``spec``.

    Raises:
        FileNotFoundError: a missing data directory, split folder or data set files.
        ValueError: an empty directory, a class folder without images, or no readable image at all.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    train = split == "train"
    limit = spec.train_limit if train else spec.eval_limit
    if spec.name == "digits":
        data: Split = _digits(train)
    elif spec.name in ("cifar10", "cifar100"):
        data = _cifar(spec, train)
    elif spec.name == "synthetic":
        size = limit or SYNTHETIC_SIZES[0 if train else 1]
        return _synthetic(size, spec.in_chans, spec.crop, spec.seed + (0 if train else 1))
    else:
        data = _limited(_folder(spec, train), limit, spec.seed)
        if not spec.cache:
            return data
        mode = preprocessing.image_mode if preprocessing else ("L" if spec.in_chans == 1 else "RGB")
        return decode_all(data, mode, preprocessing.crop if preprocessing else spec.crop)
    return _limited(data, limit, spec.seed)


def _limited(data: Split, limit: int | None, seed: int) -> Split:
    if limit is None or limit >= len(data):
        return data
    chosen = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    if isinstance(data, ImageTensors):
        return data.subset(chosen)
    return ImageFiles(data.root, [data.samples[i] for i in chosen.tolist()], data.class_names)


def _digits(train: bool) -> ImageTensors:
    """scikit-learn's 1,797 8×8 digits (pixel values 0–16), split 80/20 stratified by class with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    indices = list(range(len(digits.target)))
    train_idx, test_idx = train_test_split(indices, test_size=DIGITS_TEST_FRACTION, stratify=digits.target,
                                           random_state=0)
    chosen = sorted(train_idx if train else test_idx)
    values = torch.as_tensor(digits.images[chosen], dtype=torch.float32)  # (N, 8, 8) in [0, 16]
    images = (values * (255 / 16)).round().to(torch.uint8).unsqueeze(1)  # (N, 1, 8, 8)
    targets = torch.as_tensor(digits.target[chosen], dtype=torch.int64)
    return ImageTensors(images, targets, [str(d) for d in range(10)])


def _cifar(spec: DataSpec, train: bool) -> ImageTensors:
    root = Path(spec.data_dir or "").expanduser()
    _require_not_file(root)
    if not spec.download and not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist (add --download to fetch {spec.name})")
    builder = datasets.CIFAR10 if spec.name == "cifar10" else datasets.CIFAR100
    try:
        dataset = builder(str(root), train=train, download=spec.download)
    except RuntimeError as error:
        raise FileNotFoundError(f"{spec.name} not found in {root}: {error}".rstrip(".") +
                                ("" if spec.download else " (add --download to fetch it)")) from error
    images = torch.as_tensor(dataset.data).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32) uint8
    targets = torch.as_tensor(dataset.targets, dtype=torch.int64)
    return ImageTensors(images, targets, list(dataset.classes))


def _synthetic(size: int, channels: int, side: int, seed: int) -> ImageTensors:
    """Ten classes, each a fixed random pattern plus as much uniform noise: learnable, but not trivially."""
    patterns = torch.rand(10, channels, side, side, generator=torch.Generator().manual_seed(12345))
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 10, (size,), generator=generator)
    noise = torch.rand(size, channels, side, side, generator=generator)
    images = ((patterns[targets] + noise) * 127.5).round().to(torch.uint8)  # (N, C, side, side)
    return ImageTensors(images, targets, [f"class{i}" for i in range(10)])


def _require_not_file(root: Path) -> None:
    if root.is_file():
        raise NotADirectoryError(f"data directory {root} is a file; --data-dir names the directory that holds the data")


def _folder(spec: DataSpec, train: bool) -> ImageFiles:
    root = Path(spec.data_dir or "").expanduser()
    _require_not_file(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist")
    if train:
        split_dir = root / "train"
    else:
        split_dir = next((root / name for name in ("val", "test") if (root / name).is_dir()), root / "val")
    if not split_dir.is_dir():
        wanted = "train/" if train else "val/ or test/"
        raise FileNotFoundError(f"data directory {root} has no {wanted} folder (expected {root}/{wanted}<class>/…)")
    if not any(entry.is_dir() for entry in split_dir.iterdir()):
        raise ValueError(f"{split_dir} holds no class folders (expected {split_dir}/<class>/<image>)")
    folder = datasets.ImageFolder(str(split_dir), allow_empty=True, is_valid_file=_is_image)
    counts = [0] * len(folder.classes)
    for _, target in folder.samples:
        counts[target] += 1
    empty = [name for name, count in zip(folder.classes, counts, strict=True) if count == 0]
    if empty:
        raise ValueError(f"class folder(s) with no images in {split_dir}: {', '.join(empty)} "
                         f"(image extensions: {' '.join(IMAGE_EXTENSIONS)})")
    return ImageFiles(split_dir, list(folder.samples), list(folder.classes))


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS) and not Path(path).name.startswith(".")


def read_image(path: str | Path, mode: str) -> Image.Image:
    """Open an image file fully decoded and converted to ``mode`` (grayscale, RGBA and palette images included).

    Raises:
        ValueError: the file is not a readable image (corrupt, truncated, or over PIL's decompression-bomb limit
            of ``Image.MAX_IMAGE_PIXELS`` pixels); the message names it.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not later inside a transform
            if image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")
            return image.convert(mode)
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error


@dataclass(frozen=True)
class Unreadable:
    """Stands in for an image that could not be decoded."""

    path: str
    reason: str


class _FileDataset(torch.utils.data.Dataset):
    """Images of an :class:`ImageFiles` split, keyed by ``(epoch, index)`` so each image's augmentation is
    seeded by ``(seed, epoch, index)`` whatever worker loads it."""

    def __init__(self, files: ImageFiles, mode: str, transform: Callable[[Any], Any], seed: int) -> None:
        self.samples = files.samples
        self.mode = mode
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, int] | Unreadable:
        epoch, index = key
        path, target = self.samples[index]
        try:
            image = read_image(path, self.mode)
        except (ValueError, OSError) as error:  # corrupt, truncated, or gone since the folder was listed
            return Unreadable(path, str(error.__cause__ or error))
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(mix_seed(self.seed, epoch, index))  # the CPU's only: leaves CUDA's
            return self.transform(image), target


def _collate(items: list[Any]) -> tuple[Tensor, Tensor, list[Unreadable]]:
    """Stack the readable images of a batch; return the unreadable ones beside them."""
    bad = [item for item in items if isinstance(item, Unreadable)]
    good = [item for item in items if not isinstance(item, Unreadable)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.int64), bad
    images = torch.stack([image for image, _ in good])
    return images, torch.as_tensor([target for _, target in good], dtype=torch.int64), bad


def _ignore_sigint(_: int) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers, the same in every process and Python session."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = ((state ^ (value & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 31
    return state & 0x7FFFFFFFFFFFFFFF


def decode_all(files: ImageFiles, mode: str, side: int, workers: int | None = None) -> ImageTensors:
    """Decode every image once into memory, resized (shorter side) and centre-cropped to ``side × side``
    (``workers`` processes; default: every CPU, up to 8, since nothing else runs meanwhile)."""
    transform = v2.Compose([v2.Resize(side, antialias=True), v2.CenterCrop(side), v2.PILToTensor()])
    loader = DataLoader(_FileDataset(files, mode, transform, 0), batch_size=256, collate_fn=_collate,
                        num_workers=min(8, os.cpu_count() or 1) if workers is None else workers,
                        worker_init_fn=_ignore_sigint,
                        sampler=[(0, i) for i in range(len(files))])
    images, targets, skipped = [], [], []
    for batch_images, batch_targets, bad in loader:
        _report_unreadable(bad, set())
        skipped += [item.path for item in bad]
        if len(batch_targets):
            images.append(batch_images)
            targets.append(batch_targets)
    if not images:
        raise ValueError(f"no readable image in {files.root}")
    if skipped:
        logger.warning("skipped %d unreadable image(s) in %s", len(skipped), files.root)
    return ImageTensors(torch.cat(images), torch.cat(targets), files.class_names, skipped)


def default_workers(workers: int | None) -> int:
    """Loader worker processes: ``workers`` if given, else half the CPUs (at least 1, at most 8)."""
    if workers is not None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        return workers
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def _report_unreadable(bad: Sequence[Unreadable], seen: set[str]) -> None:
    for item in bad:
        if item.path not in seen:
            seen.add(item.path)
            logger.warning("skipping unreadable image %s: %s", item.path, item.reason)


def preprocessing_for(spec: DataSpec, train: Split) -> Preprocessing:
    """The evaluation preprocessing of a training run on ``spec`` (its normalisation from ``train`` when the
    data set has no published statistics)."""
    mode = "L" if spec.name == "digits" else ("L" if spec.in_chans == 1 else "RGB")
    crop = spec.crop
    resize = round(crop * 256 / 224) if spec.augment_kind == "imagenet" else crop
    if spec.name == "cifar10":
        mean, std = CIFAR10_STATS
    elif spec.name == "cifar100":
        mean, std = CIFAR100_STATS
    elif isinstance(train, ImageTensors):
        mean, std = _channel_stats(train.images)
    else:
        mean, std = IMAGENET_STATS
    if mode == "L" and len(mean) == 3:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return Preprocessing(mode, resize, crop, tuple(mean), tuple(std))


def _channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    values = images.transpose(0, 1).flatten(1).double() / 255  # (C, N·H·W)
    return tuple(values.mean(1).tolist()), tuple(values.std(1).clamp_min(1e-3).tolist())


class EpochBatches:
    """The batches one process sees in each epoch.

    The order is :class:`~torch.utils.data.DistributedSampler`'s: shuffled by ``(seed, epoch)``, split across
    ``world_size`` processes (padded so every process gets as many). Training drops the last partial batch so
    every process runs the same number of steps; evaluation (``shuffle=False``) keeps every image exactly once.
    """

    def __init__(self, size: int, batch_size: int, *, shuffle: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.size = size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    def indices(self, epoch: int) -> list[int]:
        """This process's sample indices for ``epoch``."""
        if not self.shuffle:
            return list(range(self.rank, self.size, self.world_size))
        sampler = DistributedSampler(range(self.size), num_replicas=self.world_size, rank=self.rank, shuffle=True,
                                     seed=self.seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    def __len__(self) -> int:
        if not self.shuffle:
            return math.ceil(len(range(self.rank, self.size, self.world_size)) / self.batch_size)
        return math.ceil(self.size / self.world_size) // self.batch_size

    def batches(self, epoch: int, start: int = 0) -> list[list[int]]:
        """Batches ``start, start + 1, …`` of ``epoch``."""
        order = self.indices(epoch)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return batches[start:len(self)]


class Loader:
    """Batches of normalised ``float32`` images and ``int64`` targets for one process.

    Call :meth:`set_epoch` before iterating; ``len(loader)`` is the number of batches per epoch. ``skipped``
    collects the paths of unreadable images met so far, once per epoch they were left out of: read from files,
    as each batch meets them; decoded into memory (``--cache``), the ones dropped at decoding, at the start of
    each epoch on rank 0 (so that a sum over processes counts each once).
    """

    def __init__(self, data: Split, preprocessing: Preprocessing, batches: EpochBatches, *, augment: str = "none",
                 workers: int | None = None, pin_memory: bool = False) -> None:
        if isinstance(data, ImageTensors) and data.channels != preprocessing.channels:
            raise ValueError(f"the data has {data.channels}-channel images, the network takes {preprocessing.channels}")
        self.data = data
        self.preprocessing = preprocessing
        self.sampling = batches
        self.augment = augment
        self.skipped: list[str] = []
        self._seen: set[str] = set(getattr(data, "skipped", []))  # reported when decoded
        self._epoch = 0
        self._start = 0
        self._file_loader: DataLoader | None = None
        if isinstance(data, ImageFiles):
            transform = _file_transform(preprocessing, augment)
            self._batch_list: list[list[tuple[int, int]]] = []
            count = default_workers(workers)
            self._file_loader = DataLoader(
                _FileDataset(data, preprocessing.image_mode, transform, batches.seed), batch_sampler=self._batch_list,
                collate_fn=_collate, num_workers=count, worker_init_fn=_ignore_sigint if count else None,
                persistent_workers=count > 0, pin_memory=pin_memory)
        elif augment == "imagenet":
            raise ValueError("augment 'imagenet' needs images read from files")

    def __len__(self) -> int:
        return len(self.sampling)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate over ``epoch`` from its batch ``start`` on."""
        self._epoch = epoch
        self._start = start

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        batches = self.sampling.batches(self._epoch, self._start)
        if self._file_loader is None:
            if self.sampling.rank == 0:
                self.skipped += self.data.skipped  # left out of every epoch
            yield from self._tensor_batches(batches)
            return
        self._batch_list[:] = [[(self._epoch, index) for index in batch] for batch in batches]
        for images, targets, bad in self._file_loader:
            if bad:
                _report_unreadable(bad, self._seen)
                self.skipped += [item.path for item in bad]
            if len(targets):
                yield images, targets

    def _tensor_batches(self, batches: list[list[int]]) -> Iterator[tuple[Tensor, Tensor]]:
        assert isinstance(self.data, ImageTensors)
        for position, batch in enumerate(batches, start=self._start):
            index = torch.as_tensor(batch)
            images = self.data.images[index]  # (B, C, H, W) uint8
            if self.augment in ("cifar", "shift"):
                generator = torch.Generator().manual_seed(
                    mix_seed(self.sampling.seed, self._epoch, self.sampling.rank, position))
                padding = 4 if self.augment == "cifar" else 1
                images = random_crop(images, padding, generator)
                if self.augment == "cifar":
                    images = random_flip(images, generator)
            yield self.preprocessing.normalize_batch(images), self.data.targets[index]


def _file_transform(preprocessing: Preprocessing, augment: str) -> v2.Compose:
    crop = preprocessing.crop
    if augment == "imagenet":
        return v2.Compose([v2.RandomResizedCrop(crop, antialias=True), v2.RandomHorizontalFlip(),
                           *_to_float(preprocessing)])
    if augment in ("cifar", "shift"):
        steps: list[Any] = [v2.Resize(preprocessing.resize, antialias=True), v2.CenterCrop(crop),
                            v2.RandomCrop(crop, padding=4 if augment == "cifar" else 1)]
        if augment == "cifar":
            steps.append(v2.RandomHorizontalFlip())
        return v2.Compose([*steps, *_to_float(preprocessing)])
    return preprocessing.transform()


def random_crop(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Zero-pad each image by ``padding`` and cut a random window of its original size (one offset per image).

    ``(N, C, H, W)`` → ``(N, C, H, W)``, any dtype.
    """
    n, _, height, width = images.shape
    padded = F.pad(images, (padding,) * 4)  # (N, C, H + 2p, W + 2p)
    dy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    rows = (dy + torch.arange(height)).view(n, 1, height, 1)  # (N, 1, H, 1)
    cols = (dx + torch.arange(width)).view(n, 1, 1, width)  # (N, 1, 1, W)
    batch = torch.arange(n).view(n, 1, 1, 1)
    channels = torch.arange(images.shape[1]).view(1, -1, 1, 1)
    return padded[batch, channels, rows, cols]  # (N, C, H, W)


def random_flip(images: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability ½. ``(N, C, H, W)`` → ``(N, C, H, W)``."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
