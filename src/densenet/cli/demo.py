"""The main job: train a DenseNet-BC on scikit-learn's bundled digits, then predict held-out digits from PNG files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from densenet.data.datasets import load_split
from densenet.data.images import ImageTensors
from densenet.deploy.inference import Prediction, load_model, predict
from densenet.fileio import atomic_path
from densenet.training.engine import LAST_DIR, TrainResult, train
from densenet.training.recipe import TrainConfig

HELDOUT_DIR = "heldout"


@dataclass
class DemoResult:
    """The training run and the predictions for the held-out digits (with their true labels)."""

    run: TrainResult
    predictions: list[Prediction]
    truths: list[str]


def write_digits(split: ImageTensors, directory: Path, count: int) -> tuple[list[Path], list[str]]:
    """Save the first ``count`` images of ``split`` as 8×8 grayscale PNGs; return the paths and true labels."""
    assert isinstance(split, ImageTensors)  # the digits are held in memory
    directory.mkdir(parents=True, exist_ok=True)
    paths, truths = [], []
    for index in range(min(count, len(split))):
        label = split.class_names[int(split.targets[index])]
        path = directory / f"digit{index:02d}.png"
        with atomic_path(path) as temporary:
            Image.fromarray(split.images[index, 0].numpy()).save(temporary, format="PNG")
        paths.append(path)
        truths.append(label)
    return paths, truths


def run_demo(config: TrainConfig, samples: int = 8) -> DemoResult:
    """Train ``config`` (a ``digits`` recipe), write ``samples`` held-out test digits as PNG files into the run
    directory and predict them with the final weights, read back from ``last/``."""
    return train_and_predict(config, "digits", write_digits, samples)


HeldoutWriter = Callable[[Any, Path, int], tuple[list[Path], list[str]]]  # (split, directory, count) → paths, truths


def train_and_predict(config: TrainConfig, dataset: str, write: HeldoutWriter, samples: int) -> DemoResult:
    """A demo's run: train ``config`` (on ``dataset``), ``write`` ``samples`` held-out examples as files into the
    run directory, and predict those files with the final weights, read back from ``last/``."""
    if config.dataset != dataset:
        raise ValueError(f"the demo trains on {dataset}, not {config.dataset}")
    run = train(config)
    if run.interrupted:
        return DemoResult(run, [], [])
    heldout = load_split(config.data_spec(), "eval")
    paths, truths = write(heldout, run.run_dir / HELDOUT_DIR, samples)
    model = load_model(run.run_dir / LAST_DIR)
    return DemoResult(run, predict(model, paths, k=3), truths)
