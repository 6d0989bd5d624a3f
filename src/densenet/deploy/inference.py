"""Prediction and evaluation with trained weights: image files (or the volume or signal files the saved
preprocessing names) → tensors → the network → top-k classes.

:func:`load_model` returns the weights as an :class:`~densenet.deploy.optimize.OptimizedDenseNet` (the same function,
faster); the network runs in one place, :func:`run_model`. The functions here take either that or a plain
:class:`DenseNet` (the training engine evaluates the model it trains).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from densenet.data.arrays import EXTENSIONS, load_arrays
from densenet.data.datasets import DataSpec, load_split
from densenet.data.images import IMAGE_EXTENSIONS, read_image
from densenet.data.loader import EpochBatches, Loader
from densenet.data.transforms import eval_transform
from densenet.deploy.optimize import OptimizedDenseNet, optimize_for_inference
from densenet.meta import ArrayPreprocessing, Preprocessing
from densenet.model import DenseNet
from densenet.training.metrics import Accumulator, EvalResult
from densenet.weights import from_pretrained

Model = DenseNet | OptimizedDenseNet


@dataclass
class Prediction:
    """The ``k`` most probable classes of one image, most probable first.

    Attributes:
        path: the image file.
        indices: class indices.
        names: class names (the index as text when the weights carry no names).
        probabilities: softmax probabilities [F7].
    """

    path: Path
    indices: list[int]
    names: list[str]
    probabilities: list[float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {"file": str(self.path), "top_k": [
            {"index": i, "class": n, "probability": p}
            for i, n, p in zip(self.indices, self.names, self.probabilities, strict=True)]}


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> OptimizedDenseNet:
    """A ``save_pretrained`` directory's network on ``device``, optimised for inference."""
    return optimize_for_inference(from_pretrained(directory).to(device))


def preprocessing_of(model: Model) -> Preprocessing | ArrayPreprocessing:
    """The preprocessing saved with the weights; without one, the standard for the architecture
    (:meth:`~densenet.meta.Preprocessing.standard`)."""
    return model.meta.input_preprocessing(model.config)


def image_paths(inputs: Iterable[str | Path], extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
                what: str = "image") -> list[Path]:
    """Files as given and, for each directory, the files below it with one of ``extensions`` (sorted).

    Raises:
        FileNotFoundError: an input does not exist, or no image file was found.
    """
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.is_file() and p.name.lower().endswith(extensions)
                            and not p.name.startswith("."))
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"{item} does not exist")
    if not paths:
        raise FileNotFoundError(f"no {what} files in {', '.join(map(str, inputs))}")
    return paths


def load_images(paths: Sequence[str | Path], preprocessing: Preprocessing | ArrayPreprocessing) -> Tensor:
    """Read, convert, resize, crop and normalise images: ``(N, C, crop, crop)`` float32 (volumes and signals:
    :func:`~densenet.data.arrays.load_arrays`, ``(N, C, *(size,) * spatial_dims)``).

    Raises:
        ValueError: a file is not a readable image (the message names it).
    """
    if isinstance(preprocessing, ArrayPreprocessing):
        return load_arrays(paths, preprocessing)
    transform = eval_transform(preprocessing)
    return torch.stack([transform(read_image(path, preprocessing.image_mode)) for path in paths])


def run_model(model: Model, images: Tensor) -> Tensor:
    """The network's logits for a batch: ``(N, C, *spatial)`` → ``(N, num_classes)``, without autograd."""
    with torch.inference_mode():
        return model(images).float()


def top_k(logits: Tensor, k: int, class_names: Sequence[str] | None) -> list[tuple[list[int], list[str], list[float]]]:
    """Per row of ``logits``: the ``k`` most probable classes, their names and softmax probabilities [F7]."""
    probabilities = F.softmax(logits.float(), dim=1)
    values, indices = probabilities.topk(min(k, logits.shape[1]), dim=1)
    rows = []
    for value_row, index_row in zip(values.tolist(), indices.tolist(), strict=True):
        names = [class_names[i] if class_names else str(i) for i in index_row]
        rows.append((index_row, names, value_row))
    return rows


def predict(model: Model, inputs: Iterable[str | Path], k: int = 5, batch_size: int = 64) -> list[Prediction]:
    """Top-``k`` classes of every image file in ``inputs`` (files, or directories searched recursively)."""
    if k < 1 or batch_size < 1:
        raise ValueError(f"k and batch_size must be at least 1, got {k} and {batch_size}")
    preprocessing = preprocessing_of(model)
    device = next(model.parameters()).device
    model.eval()
    if isinstance(preprocessing, ArrayPreprocessing):
        paths = image_paths(inputs, EXTENSIONS[preprocessing.kind], preprocessing.kind)
    else:
        paths = image_paths(inputs)
    predictions = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        logits = run_model(model, load_images(chunk, preprocessing).to(device))
        for path, (indices, names, probabilities) in zip(chunk, top_k(logits, k, model.meta.class_names), strict=True):
            predictions.append(Prediction(Path(path), indices, names, probabilities))
    return predictions


def evaluate(model: Model, batches: Iterable[tuple[Tensor, Tensor]], class_names: Sequence[str]) -> EvalResult:
    """Loss, top-1, top-5, per-class accuracy and confusion matrix of ``model`` over ``(images, targets)`` batches."""
    device = next(model.parameters()).device
    model.eval()
    accumulator = Accumulator(list(class_names))
    for images, targets in batches:
        logits = run_model(model, images.to(device))
        targets = targets.to(device)
        accumulator.update(logits, targets, F.cross_entropy(logits, targets, reduction="sum"))
    return accumulator.result()


def evaluate_dataset(model: Model, spec: DataSpec, batch_size: int = 256, workers: int | None = None) -> EvalResult:
    """Evaluate ``model`` on the evaluation split of ``spec``, preprocessed as the weights say.

    Raises:
        ValueError: the data's classes or channels do not fit the weights.
    """
    preprocessing = preprocessing_of(model)
    split = load_split(spec, "eval", preprocessing)
    classes = model.config.num_classes
    if len(split.class_names) != classes:
        raise ValueError(f"the weights classify {classes} classes; {spec.name} has {len(split.class_names)}")
    names = model.meta.class_names
    if names and list(names) != list(split.class_names):
        raise ValueError(f"the weights' classes ({', '.join(names[:5])}, …) differ from "
                         f"{spec.name}'s ({', '.join(split.class_names[:5])}, …)")
    loader = Loader(split, preprocessing, EpochBatches(len(split), batch_size, shuffle=False), workers=workers)
    return evaluate(model, loader, split.class_names)
