"""The image size a run trains at when the recipe names none: what the data has.

``folder`` and a ``csv`` table of images: the typical shorter side of its training images
(:func:`~densenet.data.sizes.typical_side`), at most :data:`MAX_DEFAULT_SIDE` (larger photos are resized, as
ImageNet training does) and at least the model's smallest input
(:attr:`~densenet.config.DenseNetConfig.min_input_size`); the other data sets: their own size (8 digits, 32 CIFAR
and synthetic; 32 per axis volumes, 256 signals). The resolved size goes into the run's ``config.yaml``, so a resumed
run keeps it; so does the input kind of a ``csv`` table (``csv_kind: auto`` resolved from its paths).
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
    """``config`` with ``image_size`` filled in (unchanged when it names one), and a ``csv`` table's ``csv_kind``.

    Raises:
        FileNotFoundError, ValueError: the folder or the model cannot be read (as loading them would).
    """
    if config.dataset == "csv" and config.csv_kind == "auto":  # a table of volumes takes their checks and size
        config = dataclasses.replace(config, csv_kind=config.data_spec().input_kind)
    if config.image_size is not None:
        return config
    spec = config.data_spec()
    # (resume: a run recorded without a size predates this rule)
    if spec.name not in ("folder", "csv") or spec.reads_arrays or config.resume:
        return dataclasses.replace(config, image_size=spec.crop)
    files = folder_files(spec) if spec.name == "folder" else csv_split(spec.data_dir or "", True, "image")
    assert isinstance(files, ImageFiles)
    side = typical_side(files) or MAX_DEFAULT_SIDE  # none readable: loading the data says so
    smallest = get_config(config.model, **config.model_args).min_input_size
    return dataclasses.replace(config, image_size=max(smallest, min(side, MAX_DEFAULT_SIDE)))
