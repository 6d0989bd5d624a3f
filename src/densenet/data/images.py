"""Images and splits: a split held in memory as one ``uint8`` tensor (:class:`ImageTensors`) or read from
files (:class:`ImageFiles`); reading one file (any PIL mode converted), decoding a whole folder once into
memory, and unreadable files skipped: each logged once by path with the reason, and counted."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from densenet.data.seeds import mix_seed

logger = logging.getLogger("densenet")


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


@dataclass
class ImageTensors:
    """A split held in memory: ``images`` ``uint8 (N, C, H, W)`` and ``targets`` ``int64 (N,)`` (multi-label:
    ``float32 (N, L)``, ``nan`` = unknown)."""

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
    """A split read from files: ``samples`` are ``(path, target)`` pairs, decoded when loaded; the target is a
    class index, or a ``float32 (L,)`` label vector for a multi-label split (:mod:`densenet.data.csv_table`)."""

    root: Path
    samples: list[tuple[str, Any]]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.samples)


Split = ImageTensors | ImageFiles


def is_image(path: str | Path) -> bool:
    """Whether ``path`` names an image file by its extension (hidden files excluded)."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS) and not Path(path).name.startswith(".")


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


class FileDataset(torch.utils.data.Dataset):
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


def collate(items: list[Any]) -> tuple[Tensor, Tensor, list[Unreadable]]:
    """Stack the readable images of a batch; return the unreadable ones beside them."""
    bad = [item for item in items if isinstance(item, Unreadable)]
    good = [item for item in items if not isinstance(item, Unreadable)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.int64), bad
    images = torch.stack([image for image, _ in good])
    if isinstance(good[0][1], Tensor):  # multi-label vectors: (B, L) float32
        return images, torch.stack([target for _, target in good]), bad
    return images, torch.as_tensor([target for _, target in good], dtype=torch.int64), bad


def ignore_sigint(_: int) -> None:
    """A loader worker's start: SIGINT and SIGTERM are ignored. Ctrl-C reaches every process of the terminal's
    group, and a service manager's SIGTERM (systemd, ``kill -- -PGID``) every process of the group too: the main
    process handles them (saving a checkpoint) and ends its workers itself; a worker that died of the signal first
    would fail the main process's next batch. A worker whose main process is gone exits by itself (PyTorch's
    watchdog)."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def decode_all(files: ImageFiles, mode: str, side: int) -> ImageTensors:
    """Decode every image once into memory, resized (shorter side) and centre-cropped to ``side × side``, with
    one worker process per CPU (at most 8: nothing else runs meanwhile, whatever the loader's own ``--workers``)."""
    transform = v2.Compose([v2.Resize(side, antialias=True), v2.CenterCrop(side), v2.PILToTensor()])
    loader = DataLoader(FileDataset(files, mode, transform, 0), batch_size=256, collate_fn=collate,
                        num_workers=min(8, os.cpu_count() or 1),
                        worker_init_fn=ignore_sigint,
                        sampler=[(0, i) for i in range(len(files))])
    images, targets, skipped = [], [], []
    for batch_images, batch_targets, bad in loader:
        report_unreadable(bad, set())
        skipped += [item.path for item in bad]
        if len(batch_targets):
            images.append(batch_images)
            targets.append(batch_targets)
    if not images:
        raise ValueError(f"no readable image in {files.root}")
    if skipped:
        logger.warning("skipped %d unreadable image(s) in %s", len(skipped), files.root)
    return ImageTensors(torch.cat(images), torch.cat(targets), files.class_names, skipped)


def report_unreadable(bad: Sequence[Unreadable], seen: set[str]) -> None:
    for item in bad:
        if item.path not in seen:
            seen.add(item.path)
            logger.warning("skipping unreadable image %s: %s", item.path, item.reason)
