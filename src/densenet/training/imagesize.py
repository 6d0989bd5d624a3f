"""The image size a run trains at when the recipe names none: what the data has.

``folder`` and a ``csv`` table of images: the typical shorter side of its training images
(:func:`~densenet.data.sizes.typical_side`), at most :data:`MAX_DEFAULT_SIDE` (larger photos are resized, as
ImageNet training does) and at least the model's smallest input
(:attr:`~densenet.config.DenseNetConfig.min_input_size`); the other data sets: their own size (8 digits, 32 CIFAR
and synthetic). The resolved size goes into the run's ``config.yaml``, so a resumed run keeps it.
"""

from __future__ import annotations

import dataclasses

from densenet.data.csv_table import csv_split
from densenet.data.datasets import folder_files
from densenet.data.images import ImageFiles
from densenet.data.sizes import typical_side
from densenet.registry import get_config
from densenet.training.recipe import TrainConfig

MAX_DEFAULT_SIDE = 224


def with_image_size(config: TrainConfig) -> TrainConfig:
    """``config`` with ``image_size`` filled in (unchanged when it names one).

    Raises:
        FileNotFoundError, ValueError: the folder or the model cannot be read (as loading them would).
    """
    if config.image_size is not None:
        return config
    spec = config.data_spec()
    if spec.name not in ("folder", "csv") or config.resume:  # a run recorded without a size predates this rule
        return dataclasses.replace(config, image_size=spec.crop)
    files = folder_files(spec) if spec.name == "folder" else csv_split(spec.data_dir, train=True)
    if not isinstance(files, ImageFiles):  # a table of other files: their own size
        return dataclasses.replace(config, image_size=spec.crop)
    side = typical_side(files) or MAX_DEFAULT_SIDE  # none readable: loading the data says so
    smallest = get_config(config.model, **config.model_args).min_input_size
    return dataclasses.replace(config, image_size=max(smallest, min(side, MAX_DEFAULT_SIDE)))
