"""Preprocessing and augmentation: the evaluation transform a :class:`~densenet.meta.Preprocessing` describes,
the paper's CIFAR augmentation vectorised over a batch, and torchvision transforms for image files."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

from densenet.meta import Preprocessing

AUGMENTATIONS = ("auto", "cifar", "shift", "imagenet", "none")


def _to_float(preprocessing: Preprocessing) -> list[Any]:
    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(preprocessing.mean, preprocessing.std)]


def file_transform(preprocessing: Preprocessing, augment: str) -> v2.Compose:
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
    return eval_transform(preprocessing)


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


def eval_transform(preprocessing: Preprocessing) -> v2.Compose:
    """PIL image → normalised ``(C, crop, crop)`` float tensor: resize, centre crop, scale, normalise."""
    return v2.Compose([v2.Resize(preprocessing.resize, antialias=True), v2.CenterCrop(preprocessing.crop),
                       *_to_float(preprocessing)])


def normalize_batch(preprocessing: Preprocessing, images: Tensor) -> Tensor:
    """``uint8 (N, C, H, W)`` → resized, centre-cropped, normalised ``float32 (N, C, crop, crop)``."""
    crop = preprocessing.crop
    if images.shape[-1] != crop or images.shape[-2] != crop:
        images = v2.functional.center_crop(v2.functional.resize(images, [preprocessing.resize], antialias=True),
                                           [crop])
    images = images.float().div_(255)  # (N, C, crop, crop) in [0, 1]
    return v2.functional.normalize(images, list(preprocessing.mean), list(preprocessing.std))
