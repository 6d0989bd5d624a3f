"""Batches for one process: which samples each epoch holds (:class:`EpochBatches`, DistributedSampler's
order) and the loader that turns them into normalised, augmented tensors (:class:`Loader`)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from densenet.data.arrays import ArrayDataset, ArrayFiles, ArrayTensors
from densenet.data.images import (
    FileDataset,
    ImageFiles,
    ImageTensors,
    Split,
    collate,
    ignore_sigint,
    report_unreadable,
)
from densenet.data.seeds import mix_seed
from densenet.data.transforms import file_transform, normalize_batch, random_crop, random_flip
from densenet.meta import ArrayPreprocessing, Preprocessing

logger = logging.getLogger("densenet")


def default_workers(workers: int | None) -> int:
    """Loader worker processes: ``workers`` if given, else half the CPUs (at least 1, at most 8)."""
    if workers is not None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        return workers
    return max(1, min(8, (os.cpu_count() or 2) // 2))


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
    collects the paths of unreadable images met so far: read from files, once per epoch they were left out of, as
    each batch meets them; decoded into memory (``--cache``), the ones dropped at decoding, once, in the first
    epoch on rank 0 (so that a sum over processes counts each once).
    """

    def __init__(self, data: Split | ArrayFiles | ArrayTensors, preprocessing: Preprocessing | ArrayPreprocessing,
                 batches: EpochBatches, *, augment: str = "none",
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
        self._batch_list: list[list[tuple[int, int]]] = []
        if isinstance(data, ImageFiles | ArrayFiles | ArrayTensors):
            if isinstance(data, ImageFiles):
                dataset: torch.utils.data.Dataset = FileDataset(data, preprocessing.image_mode,
                                                                file_transform(preprocessing, augment), batches.seed)
            else:  # volumes and signals (files, or the synthetic shapes in memory), one by one
                dataset = ArrayDataset(data, preprocessing, augment != "none", batches.seed)
            count = default_workers(workers)
            self._file_loader = DataLoader(
                dataset, batch_sampler=self._batch_list,
                collate_fn=collate, num_workers=count, worker_init_fn=ignore_sigint if count else None,
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
            if self.sampling.rank == 0 and self._epoch == 0:
                self.skipped += self.data.skipped  # dropped once, when decoded: counted in the first epoch only
            yield from self._tensor_batches(batches)
            return
        self._batch_list[:] = [[(self._epoch, index) for index in batch] for batch in batches]
        for images, targets, bad in self._file_loader:
            if bad:
                report_unreadable(bad, self._seen)
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
            yield normalize_batch(self.preprocessing, images), self.data.targets[index]
