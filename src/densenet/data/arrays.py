"""Volumes and signals as splits: read from class folders of files (:class:`ArrayFiles`) or held in memory
(:class:`ArrayTensors`, the synthetic shapes); MONAI's transforms that resample, standardise and augment each sample
(:func:`array_transform`); and the dataset the loader batches (:class:`ArrayDataset`), where an unreadable file —
corrupt, of the wrong number of dimensions, or with other channels than the network's — is skipped and counted as
:mod:`densenet.data.images` does for images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from densenet.data.arrayio import require_extra
from densenet.data.images import Unreadable
from densenet.data.seeds import mix_seed
from densenet.data.signals import SIGNAL_EXTENSIONS, is_signal, read_signal
from densenet.data.volumes import VOLUME_EXTENSIONS, is_volume, read_volume
from densenet.meta import ArrayPreprocessing

# data set → the kind of input it holds
ARRAY_DATASETS = {"volumes": "volume", "signals": "signal", "shapes3d": "volume"}
DEFAULT_SIZES = {"volume": 32, "signal": 256}
READERS: dict[str, Callable[[str | Path], Tensor]] = {"volume": read_volume, "signal": read_signal}
FILE_TESTS: dict[str, Callable[[str | Path], bool]] = {"volume": is_volume, "signal": is_signal}
EXTENSIONS = {"volume": VOLUME_EXTENSIONS, "signal": SIGNAL_EXTENSIONS}
INTENSITY_SCALE = 0.1  # augmentation: x ← x·(1 + u), u ~ U(−0.1, 0.1) …
INTENSITY_SHIFT = 0.1  # … then x ← x + v, v ~ U(−0.1, 0.1), in units of the standardised intensity


@dataclass
class ArrayFiles:
    """A split of volume or signal files: ``samples`` are ``(path, class index)`` pairs, read when loaded."""

    root: Path
    samples: list[tuple[str, int]]
    class_names: list[str]
    kind: str

    def __len__(self) -> int:
        return len(self.samples)


@dataclass
class ArrayTensors:
    """A split held in memory: ``arrays`` ``float32 (N, C, *spatial)`` and ``targets`` ``int64 (N,)``."""

    arrays: Tensor
    targets: Tensor
    class_names: list[str]
    kind: str
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, indices: Tensor) -> ArrayTensors:
        """The samples at ``indices``."""
        return ArrayTensors(self.arrays[indices], self.targets[indices], self.class_names, self.kind, self.skipped)


ArraySplit = ArrayFiles | ArrayTensors


def first_channels(split: ArraySplit) -> int:
    """Channels of the split's first readable sample: the channels of the network trained on it (files with other
    channels are skipped when loaded).

    Raises:
        ValueError: no file of the split is readable.
    """
    if isinstance(split, ArrayTensors):
        return split.arrays.shape[1]
    read = READERS[split.kind]
    for path, _ in split.samples:
        try:
            return read(path).shape[0]
        except (ValueError, OSError):
            continue
    raise ValueError(f"no readable {split.kind} in {split.root}")


def array_transform(preprocessing: ArrayPreprocessing, augment: bool) -> Any:
    """MONAI's transforms for one sample: ``float32 (C, *any spatial)`` → ``(C, *(size,) * spatial_dims)``.

    Always: resample every spatial axis to ``size`` (``Resize``: trilinear for volumes, linear for signals, with
    Gaussian anti-aliasing when shrinking; voxel spacing is not consulted), then standardise each channel
    (``NormalizeIntensity(channel_wise=True)``: ``x ← (x − mean) / std``). With ``augment``: volumes are flipped
    along each axis with probability ½ (``RandFlip``); then, volumes and signals alike, zero-padded by
    ``max(1, size // 8)`` on each side and cropped back to ``size`` at a random place (``SpatialPad`` +
    ``RandSpatialCrop``), their intensity scaled by ``1 + u`` and shifted by ``v`` (``RandScaleIntensity``,
    ``RandShiftIntensity``; ``u, v ~ U(−0.1, 0.1)``). Seed it with ``set_random_state`` before each call. The input
    is left unchanged.

    Raises:
        MissingExtraError: MONAI is not installed.
    """
    transforms = require_extra("monai.transforms", "resampling and augmenting volumes and signals")
    dims = preprocessing.spatial_dims
    size = (preprocessing.size,) * dims
    steps: list[Any] = [transforms.Lambda(torch.clone),  # MONAI standardises in place: leave the caller's tensor be
                        transforms.Resize(size, mode="trilinear" if dims == 3 else "linear", anti_aliasing=True),
                        transforms.NormalizeIntensity(channel_wise=True)]
    if augment:
        if preprocessing.kind == "volume":
            steps += [transforms.RandFlip(prob=0.5, spatial_axis=axis) for axis in range(dims)]
        margin = max(1, preprocessing.size // 8)
        steps += [transforms.SpatialPad(tuple(side + 2 * margin for side in size)),
                  transforms.RandSpatialCrop(size, random_size=False),
                  transforms.RandScaleIntensity(factors=INTENSITY_SCALE, prob=1.0),
                  transforms.RandShiftIntensity(offsets=INTENSITY_SHIFT, prob=1.0)]
    return transforms.Compose([*steps, transforms.ToTensor(dtype=torch.float32, track_meta=False)])


class ArrayDataset(torch.utils.data.Dataset):
    """Samples of an :class:`ArraySplit`, keyed by ``(epoch, index)`` so each sample's augmentation is seeded by
    ``(seed, epoch, index)`` whatever worker loads it; an unreadable file, or one whose channels differ from the
    network's, comes back as :class:`~densenet.data.images.Unreadable`."""

    def __init__(self, data: ArraySplit, preprocessing: ArrayPreprocessing, augment: bool, seed: int) -> None:
        if data.kind != preprocessing.kind:
            raise ValueError(f"the network reads {preprocessing.kind}s; the data holds {data.kind}s")
        self.data = data
        self.channels = preprocessing.channels
        self.transform = array_transform(preprocessing, augment)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int] | Unreadable:
        epoch, index = key
        sample = self._read(index)
        if isinstance(sample, Unreadable):
            return sample
        array, target = sample
        self.transform.set_random_state(seed=mix_seed(self.seed, epoch, index) % 2**32)
        return self.transform(array), target  # (C, *spatial) float32

    def _read(self, index: int) -> tuple[Tensor, int] | Unreadable:
        if isinstance(self.data, ArrayTensors):
            return self.data.arrays[index], int(self.data.targets[index])
        path, target = self.data.samples[index]
        try:
            array = READERS[self.data.kind](path)  # (C, *spatial)
        except (ValueError, OSError) as error:  # corrupt, wrong dimensions, or gone since the folder was listed
            return Unreadable(path, str(error.__cause__ or error))
        if array.shape[0] != self.channels:
            return Unreadable(path, f"it has {array.shape[0]} channel(s), the network takes {self.channels}")
        return array, target


def load_arrays(paths: Sequence[str | Path], preprocessing: ArrayPreprocessing) -> Tensor:
    """Read, resample and standardise volume or signal files: ``float32 (N, C, *(size,) * spatial_dims)``.

    Raises:
        ValueError: a file is unreadable or has other channels than the network's (the message names it).
    """
    transform = array_transform(preprocessing, augment=False)
    arrays = []
    for path in paths:
        array = READERS[preprocessing.kind](path)
        if array.shape[0] != preprocessing.channels:
            raise ValueError(f"{path} has {array.shape[0]} channel(s); the network takes {preprocessing.channels}")
        arrays.append(transform(array))
    return torch.stack(arrays)
