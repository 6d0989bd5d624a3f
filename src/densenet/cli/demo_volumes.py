"""``densenet demo --volumes``: train a small 3D DenseNet-BC on the synthetic shapes (spheres, cubes, rods in noise),
then predict held-out volumes read back from NIfTI files."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np

from densenet.cli.demo import DemoResult, train_and_predict
from densenet.data.arrayio import require_extra
from densenet.data.arrays import ArrayTensors
from densenet.fileio import atomic_path
from densenet.training.recipe import TrainConfig

# The demo's recipe, under --config files and flags (configs/volumes_demo.yaml holds the same, with its measurement):
# a DenseNet-BC with k = 8, 16 stem channels and three blocks of 2 bottleneck layers, CIFAR stem, in 3D on 16³
# volumes, channels-last (channels_last_3d).
VOLUMES_DEMO: dict[str, Any] = {
    "dataset": "shapes3d",
    "image_size": 16,
    "model": "densenet_bc100_k12",
    "model_args": {"block_config": [2, 2, 2], "growth_rate": 8, "num_init_features": 16},
    "epochs": 8,
    "batch_size": 32,
    "lr": 0.1,
    "schedule": "cosine",
    "warmup_epochs": 1.0,
    "label_smoothing": 0.1,
    "channels_last": True,
    "seed": 0,
}


def write_volumes(split: ArrayTensors, directory: Path, count: int) -> tuple[list[Path], list[str]]:
    """Save the first ``count`` volumes of ``split`` as ``.nii.gz`` files (identity affine, so RAS as stored); return
    the paths and true labels."""
    assert isinstance(split, ArrayTensors)  # the synthetic shapes are held in memory
    nibabel = require_extra("nibabel", "writing NIfTI volumes")
    directory.mkdir(parents=True, exist_ok=True)
    paths, truths = [], []
    for index in range(min(count, len(split))):
        label = split.class_names[int(split.targets[index])]
        image = nibabel.Nifti1Image(split.arrays[index, 0].numpy().astype(np.float32), np.eye(4))
        path = directory / f"volume{index:02d}.nii.gz"
        with atomic_path(path) as temporary:
            temporary.write_bytes(gzip.compress(image.to_bytes()))
        paths.append(path)
        truths.append(label)
    return paths, truths


def run_volume_demo(config: TrainConfig, samples: int = 8) -> DemoResult:
    """Train ``config`` (a ``shapes3d`` recipe), write ``samples`` held-out volumes as NIfTI files into the run
    directory and predict them with the final weights, read back from ``last/``."""
    return train_and_predict(config, "shapes3d", write_volumes, samples)
