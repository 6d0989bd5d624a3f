"""The data sets: ``digits``, ``cifar10`` / ``cifar100``, ``folder`` and ``synthetic``; ``volumes``, ``signals`` and
``shapes3d`` (:mod:`densenet.data.arrays`), as a :class:`DataSpec`
names them, read into a split (:mod:`densenet.data.images`), and the evaluation preprocessing a
training run on them saves with its weights."""

from __future__ import annotations

import dataclasses
import functools
import logging
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchvision import datasets

from densenet.data.arrays import (
    ARRAY_DATASETS,
    DEFAULT_SIZES,
    EXTENSIONS,
    FILE_TESTS,
    ArrayFiles,
    ArraySplit,
    first_channels,
)
from densenet.data.csv_table import CSV_KINDS, csv_split, table_kind
from densenet.data.holdout import held_out
from densenet.data.images import (
    IMAGE_EXTENSIONS,
    ImageFiles,
    ImageTensors,
    Split,
    decode_all,
    is_image,
)
from densenet.data.synthetic_volumes import synthetic_shapes
from densenet.data.transforms import AUGMENTATIONS
from densenet.meta import IMAGENET_STATS, MAX_IMAGE_SIDE, ArrayPreprocessing, Preprocessing

logger = logging.getLogger("densenet")


DATASETS = ("digits", "cifar10", "cifar100", "folder", "synthetic", "csv", *ARRAY_DATASETS)
FILE_DATASETS = ("folder", "csv")  # images read from files: resized to image_size, may be cached
# Per-channel mean and standard deviation of the CIFAR training images
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))

DIGITS_TEST_FRACTION = 0.2
SYNTHETIC_SIZES = (1024, 256)
SHAPES3D_SIZES = (512, 128)

MAX_SYNTHETIC_IMAGES = 10_000_000  # the synthetic set is generated in memory
_Limitable = typing.TypeVar("_Limitable", ImageTensors, ImageFiles, ArrayFiles)


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
        val_fraction: ``folder`` with ``train/`` only (``csv`` with ``train.csv`` only): hold out this fraction of it,
            stratified by class, as the evaluation split (:func:`~densenet.data.holdout.held_out`).
        csv_kind: ``csv`` only: what the table's paths are, one of :data:`~densenet.data.csv_table.CSV_KINDS`
            (``auto``: read from the training table's paths when the data is first needed).
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
    val_fraction: float | None = None
    csv_kind: str = "auto"

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
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.val_fraction is not None and self.name not in ("folder", "volumes", "signals", "csv"):
            raise ValueError(f"val_fraction holds out part of a folder's train/ or a csv's train.csv; {self.name} has "
                             "its own split")
        if self.csv_kind not in CSV_KINDS:
            raise ValueError(f"unknown csv_kind {self.csv_kind!r}; known: {', '.join(CSV_KINDS)}")
        if self.csv_kind != "auto" and self.name != "csv":
            raise ValueError(f"csv_kind says what a csv table's paths are; dataset {self.name} does not read one")
        if self.name in ARRAY_DATASETS or self.csv_kind in ("volume", "signal"):
            self._check_arrays()
            return
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3 for image data, got {self.in_chans}")
        if self.name in ("cifar10", "cifar100", *FILE_DATASETS) and not self.data_dir:
            raise ValueError(f"dataset {self.name} needs a data directory (--data-dir)")
        if self.cache and self.name not in FILE_DATASETS:
            raise ValueError("cache applies to the folder and csv datasets only (the others are held in memory "
                             "already)")
        if self.name not in FILE_DATASETS and self.augment_kind == "imagenet":
            raise ValueError(f"augment 'imagenet' needs the folder or csv dataset, not {self.name}")
        if self.cache and self.augment_kind == "imagenet":
            raise ValueError("augment 'imagenet' crops full-size images; it cannot run on a cached folder")

    def _check_arrays(self) -> None:
        """Volumes and signals: a data directory (but for the synthetic shapes), their own augmentation or none."""
        if self.name != "shapes3d" and not self.data_dir:
            holds = "train.csv and val.csv or test.csv" if self.name == "csv" else "train/ and val/ or test/"
            raise ValueError(f"dataset {self.name} needs a data directory (--data-dir) with {holds}")
        if self.augment not in ("auto", "none"):
            raise ValueError(f"dataset {self.name} takes augment auto (flips, crop/pad, intensity) or none, not "
                             f"{self.augment}")
        if self.cache:
            raise ValueError("cache applies to images read from files only (the folder dataset, a csv of images)")

    @functools.cached_property
    def input_kind(self) -> str:
        """What the data set holds: ``image``, ``volume`` or ``signal`` (``csv``: its ``csv_kind``, or with ``auto``
        the kind of its training table's paths).

        Raises:
            FileNotFoundError, ValueError: ``csv`` with ``auto`` and a table whose kind cannot be read.
        """
        if self.name == "csv":
            return table_kind(self.data_dir or "") if self.csv_kind == "auto" else self.csv_kind
        return ARRAY_DATASETS.get(self.name, "image")

    @property
    def reads_arrays(self) -> bool:
        """Whether the data set holds volumes or signals rather than images."""
        return self.input_kind != "image"

    @property
    def augment_kind(self) -> str:
        """The augmentation ``auto`` resolves to."""
        if self.reads_arrays:
            return "none" if self.augment == "none" else self.input_kind
        if self.augment != "auto":
            return self.augment
        if self.name == "digits":
            return "shift"
        if self.name in FILE_DATASETS:
            small = self.cache or (self.image_size is not None and self.image_size < 128)
            return "cifar" if small else "imagenet"
        return "cifar" if self.name.startswith("cifar") else "none"

    @property
    def crop(self) -> int:
        """Side of the network input."""
        if self.reads_arrays:
            return self.image_size or DEFAULT_SIZES[self.input_kind]
        if self.name == "digits":
            return self.image_size or 8
        if self.name in FILE_DATASETS and self.augment_kind == "imagenet":
            return self.image_size or 224
        return self.image_size or 32


def load_split(spec: DataSpec, split: str,
               preprocessing: Preprocessing | ArrayPreprocessing | None = None) -> Split | ArraySplit:
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
    if preprocessing is not None and getattr(preprocessing, "kind", "image") != spec.input_kind:
        raise ValueError(f"the weights read {getattr(preprocessing, 'kind', 'image')}s; dataset {spec.name} holds "
                         f"{spec.input_kind}s")
    if spec.name == "shapes3d":
        return synthetic_shapes(limit or SHAPES3D_SIZES[0 if train else 1], spec.crop, spec.seed + (0 if train else 1))
    if spec.name in ARRAY_DATASETS:
        kind = spec.input_kind
        files = _limited(_folder(spec, train, FILE_TESTS[kind], EXTENSIONS[kind], kind), limit, spec.seed)
        return ArrayFiles(files.root, files.samples, files.class_names, kind)
    if spec.name == "csv" and spec.reads_arrays:
        return _limited(csv_split(spec.data_dir or "", train, spec.input_kind, spec.val_fraction, spec.seed), limit,
                        spec.seed)
    if spec.name == "digits":
        data: Split = _digits(train)
    elif spec.name in ("cifar10", "cifar100"):
        data = _cifar(spec, train)
    elif spec.name == "synthetic":
        size = limit or SYNTHETIC_SIZES[0 if train else 1]
        return _synthetic(size, spec.in_chans, spec.crop, spec.seed + (0 if train else 1))
    else:
        data = _limited(_folder(spec, train) if spec.name == "folder" else csv_split(
            spec.data_dir or "", train, "image", spec.val_fraction, spec.seed), limit, spec.seed)
        if not spec.cache:
            return data
        mode = preprocessing.image_mode if preprocessing else ("L" if spec.in_chans == 1 else "RGB")
        return decode_all(data, mode, preprocessing.crop if preprocessing else spec.crop)
    return _limited(data, limit, spec.seed)


def _limited(data: _Limitable, limit: int | None, seed: int) -> _Limitable:
    if limit is None or limit >= len(data):
        return data
    chosen = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    if isinstance(data, ImageTensors):
        return data.subset(chosen)
    return dataclasses.replace(data, samples=[data.samples[i] for i in chosen.tolist()])  # files of any kind


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


def _folder(spec: DataSpec, train: bool, is_valid: Callable[[str], bool] = is_image,
            extensions: tuple[str, ...] = IMAGE_EXTENSIONS, what: str = "image") -> ImageFiles:
    root = Path(spec.data_dir or "").expanduser()
    _require_not_file(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist")
    if spec.val_fraction is not None:
        if any((root / name).is_dir() for name in ("val", "test")):
            raise ValueError(f"{root} has a val/ or test/ folder already; --val-fraction holds out part of train/ "
                             "only when there is none")
        if not (root / "train").is_dir():
            raise FileNotFoundError(f"data directory {root} has no train/ folder (expected {root}/train/<class>/…)")
        return held_out(_class_folders(root / "train", is_valid, extensions, what), spec.val_fraction, spec.seed,
                        train)
    if train:
        split_dir = root / "train"
    else:
        split_dir = next((root / name for name in ("val", "test") if (root / name).is_dir()), root / "val")
    if not split_dir.is_dir():
        wanted = "train/" if train else "val/ or test/"
        hint = "" if train or not (root / "train").is_dir() else " or hold out part of train/ with --val-fraction F"
        raise FileNotFoundError(f"data directory {root} has no {wanted} folder (expected {root}/{wanted}<class>/…"
                                f"{hint})")
    return _class_folders(split_dir, is_valid, extensions, what)


def folder_files(spec: DataSpec, train: bool = True) -> ImageFiles | ArrayFiles:
    """The files of a ``folder`` (or ``csv``) data set's training (or evaluation) split, before any ``*_limit``."""
    if spec.name == "csv":
        return typing.cast(ImageFiles | ArrayFiles, csv_split(spec.data_dir or "", train, spec.input_kind,
                                                              spec.val_fraction, spec.seed))
    return _folder(spec, train)


def _class_folders(split_dir: Path, is_valid: Callable[[str], bool], extensions: tuple[str, ...],
                   what: str) -> ImageFiles:
    """The ``what`` files (images, volumes, signals) of ``split_dir/<class>/…`` (every class folder must hold one)."""
    if not any(entry.is_dir() for entry in split_dir.iterdir()):
        raise ValueError(f"{split_dir} holds no class folders (expected {split_dir}/<class>/<{what}>)")
    folder = datasets.ImageFolder(str(split_dir), allow_empty=True, is_valid_file=is_valid)
    counts = [0] * len(folder.classes)
    for _, target in folder.samples:
        counts[target] += 1
    empty = [name for name, count in zip(folder.classes, counts, strict=True) if count == 0]
    if empty:
        raise ValueError(f"class folder(s) with no {what}s in {split_dir}: {', '.join(empty)} "
                         f"({what} extensions: {' '.join(extensions)})")
    return ImageFiles(split_dir, list(folder.samples), list(folder.classes))


def preprocessing_for(spec: DataSpec, train: Split | ArraySplit) -> Preprocessing | ArrayPreprocessing:
    """The evaluation preprocessing of a training run on ``spec`` (its normalisation from ``train`` when the
    data set has no published statistics; volumes and signals: the channels of the first readable sample)."""
    if not isinstance(train, ImageTensors | ImageFiles):
        return ArrayPreprocessing(spec.input_kind, first_channels(train), spec.crop)
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
