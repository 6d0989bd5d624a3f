"""Prediction and evaluation with trained weights: image files (or the volume or signal files the saved
preprocessing names) → tensors → the network → top-k classes.

:func:`load_model` returns the weights as an :class:`~densenet.deploy.optimize.OptimizedDenseNet` (the same function,
faster); the network runs in one place, :func:`run_model`. The functions here take either that or a plain
:class:`DenseNet` (the training engine evaluates the model it trains).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from densenet.data.arrays import EXTENSIONS, load_arrays
from densenet.data.csv_table import label_matrix
from densenet.data.datasets import DataSpec, load_split
from densenet.data.images import IMAGE_EXTENSIONS, read_image
from densenet.data.loader import EpochBatches, Loader
from densenet.data.transforms import eval_transform
from densenet.deploy.int8 import QuantizedDenseNet
from densenet.deploy.optimize import OptimizedDenseNet, optimize_for_inference
from densenet.meta import MULTI_LABEL, SINGLE_LABEL, ArrayPreprocessing, ModelMeta, Preprocessing
from densenet.model import DenseNet
from densenet.training.multilabel import DEFAULT_THRESHOLD
from densenet.training.task import Result, task_of
from densenet.weights import from_pretrained

Model = DenseNet | OptimizedDenseNet | QuantizedDenseNet


@dataclass
class Prediction:
    """The ``k`` most probable classes of one image, most probable first; for a multi-label model every label in
    output order, and the positives.

    Attributes:
        path: the image file.
        indices: class indices.
        names: class names (the index as text when the weights carry no names).
        probabilities: softmax probabilities [F7] (multi-label: each label's sigmoid).
        positives: multi-label only: the labels whose probability reaches their saved threshold.
    """

    path: Path
    indices: list[int]
    names: list[str]
    probabilities: list[float]
    positives: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        if self.positives is not None:
            return {"file": str(self.path), "probabilities": dict(zip(self.names, self.probabilities, strict=True)),
                    "positives": self.positives}
        return {"file": str(self.path), "top_k": [
            {"index": i, "class": n, "probability": p}
            for i, n, p in zip(self.indices, self.names, self.probabilities, strict=True)]}


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> OptimizedDenseNet | QuantizedDenseNet:
    """A ``save_pretrained`` directory's network on ``device``, optimised for inference; int8 when the directory
    was written by ``densenet quantize`` (:mod:`~densenet.deploy.quantize`; CPU only)."""
    from densenet.deploy.quantize import is_quantized, load_quantized

    if is_quantized(directory):
        if torch.device(device).type != "cpu":
            raise ValueError(f"{directory} holds an int8 model, which runs on the CPU only (got device {device})")
        return load_quantized(directory)
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


def input_paths(inputs: Iterable[str | Path], preprocessing: Preprocessing | ArrayPreprocessing) -> list[Path]:
    """:func:`image_paths` for the files the weights read: images, or volume or signal files."""
    if isinstance(preprocessing, ArrayPreprocessing):
        return image_paths(inputs, EXTENSIONS[preprocessing.kind], preprocessing.kind)
    return image_paths(inputs)


def load_input(path: str | Path, preprocessing: Preprocessing | ArrayPreprocessing) -> Tensor:
    """One file ready for the network: an image ``(C, crop, crop)``, or a volume or signal
    ``(C, *(size,) * spatial_dims)``.

    Raises:
        ValueError, OSError: the file cannot be read (the message names it).
    """
    if isinstance(preprocessing, ArrayPreprocessing):
        return load_arrays([path], preprocessing)[0]
    return eval_transform(preprocessing)(read_image(path, preprocessing.image_mode))


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


def scored(logits: Tensor, k: int, meta: ModelMeta) -> list[tuple[list[int], list[str], list[float], list[str] | None]]:
    """Per row of ``logits``: single-label: :func:`top_k` (positives ``None``); multi-label: every label in output
    order with its sigmoid probability, and the labels at or above their saved threshold (0.5 without one)."""
    if meta.task != MULTI_LABEL:
        return [(*row, None) for row in top_k(logits, k, meta.class_names)]
    width = logits.shape[1]
    names = list(meta.class_names) if meta.class_names else [str(i) for i in range(width)]
    thresholds = meta.thresholds or (DEFAULT_THRESHOLD,) * width
    rows = []
    for row in torch.sigmoid(logits.float()).tolist():
        positives = [name for name, p, t in zip(names, row, thresholds, strict=True) if p >= t]
        rows.append((list(range(width)), names, row, positives))
    return rows


@dataclass(frozen=True)
class Failed:
    """An input that could not be predicted: the file and why (a message that names it)."""

    path: Path
    reason: str


def predict_each(model: Model, paths: Sequence[str | Path], k: int = 5,
                 batch_size: int = 64) -> Iterator[Prediction | Failed]:
    """For each of ``paths``, in order, its top-``k`` classes [F7] (multi-label: every label and the positives,
    :func:`scored`), or :class:`Failed` when it cannot be read; the readable files of each ``batch_size`` run
    through the network together."""
    _check_counts(k, batch_size)
    preprocessing = preprocessing_of(model)
    device = next(model.parameters()).device
    model.eval()
    for start in range(0, len(paths), batch_size):
        chunk = [Path(path) for path in paths[start:start + batch_size]]
        inputs, readable, failed = [], [], {}
        for path in chunk:
            try:
                inputs.append(load_input(path, preprocessing))  # (C, *spatial)
                readable.append(path)
            except (ValueError, OSError) as error:  # corrupt, truncated, or gone since it was listed
                failed[path] = Failed(path, str(error))
        logits = run_model(model, torch.stack(inputs).to(device)) if inputs else None
        rows = scored(logits, k, model.meta) if logits is not None else []
        predicted = {path: Prediction(path, *row) for path, row in zip(readable, rows, strict=True)}
        for path in chunk:
            yield failed[path] if path in failed else predicted[path]


def _check_counts(k: int, batch_size: int) -> None:
    if k < 1 or batch_size < 1:
        raise ValueError(f"k and batch_size must be at least 1, got {k} and {batch_size}")


def predict(model: Model, inputs: Iterable[str | Path], k: int = 5, batch_size: int = 64) -> list[Prediction]:
    """Top-``k`` classes of every file in ``inputs`` (files, or directories searched recursively, of the kind the
    weights read); for a multi-label model every label's probability and the positives (:func:`scored`).

    Raises:
        ValueError: a file cannot be read (the message names it); :func:`predict_each` goes on past such files.
    """
    _check_counts(k, batch_size)  # before the inputs are listed
    predictions = []
    for item in predict_each(model, input_paths(inputs, preprocessing_of(model)), k, batch_size):
        if isinstance(item, Failed):
            raise ValueError(item.reason)
        predictions.append(item)
    return predictions


def evaluate(model: Model, batches: Iterable[tuple[Tensor, Tensor]], class_names: Sequence[str]) -> Result:
    """Loss, top-1, top-5, per-class accuracy and confusion matrix of ``model`` over ``(images, targets)`` batches
    (multi-label weights: loss, per-label AUROC and AP, :class:`~densenet.training.multilabel.MultiLabelResult`)."""
    device = next(model.parameters()).device
    model.eval()
    accumulator = task_of(model.meta).accumulator(list(class_names))
    for images, targets in batches:
        logits = run_model(model, images.to(device))
        accumulator.update(logits, targets.to(device))
    return accumulator.result()


def evaluate_dataset(model: Model, spec: DataSpec, batch_size: int = 256, workers: int | None = None) -> Result:
    """Evaluate ``model`` on the evaluation split of ``spec``, preprocessed as the weights say.

    Raises:
        ValueError: the data's classes or channels do not fit the weights.
    """
    preprocessing = preprocessing_of(model)
    split = load_split(spec, "eval", preprocessing)
    data_task = SINGLE_LABEL if label_matrix(split) is None else MULTI_LABEL
    if data_task != model.meta.task:
        raise ValueError(f"the weights are {model.meta.task.replace('_', '-')}; {spec.name}'s evaluation split is "
                         f"{data_task.replace('_', '-')}")
    classes = model.config.num_classes
    if len(split.class_names) != classes:
        raise ValueError(f"the weights classify {classes} classes; {spec.name} has {len(split.class_names)}")
    names = model.meta.class_names
    if names and list(names) != list(split.class_names):
        raise ValueError(f"the weights' classes ({', '.join(names[:5])}, …) differ from "
                         f"{spec.name}'s ({', '.join(split.class_names[:5])}, …)")
    loader = Loader(split, preprocessing, EpochBatches(len(split), batch_size, shuffle=False), workers=workers)
    return evaluate(model, loader, split.class_names)
