"""Post-training int8 quantization: :func:`quantize` turns a trained :class:`DenseNet` and a few hundred
calibration images into a :class:`~densenet.deploy.int8.QuantizedDenseNet` (float32 images in, float32 logits out);
:func:`save_quantized` / :func:`load_quantized` keep it in a ``save_pretrained`` directory.

- Weights: symmetric int8 per output channel, from their exact range (weights are fixed; ``PerChannelMinMaxObserver``)
  — after the folded batch norms and the input codes' scales are multiplied in (:mod:`densenet.deploy.int8`).
- Activations: one affine u8 code per map (the image, each dense layer's new map, each bottleneck output, each
  transition output, the stem output), its range from torch's ``HistogramObserver``: it picks the clipping range
  that minimises the histogram's squared quantization error, so a few outlying values do not stretch the code over
  a range the rest of the map never uses (benchmarks/NOTES.md compares it with the min/max range).

A quantized directory is an ordinary ``save_pretrained`` directory (the float32 weights, so it still loads as a
float model) plus ``quantization.json`` with the calibrated activation codes; the int8 weights are derived at load
(deterministic, milliseconds) rather than stored, so the file does not depend on oneDNN's packed layout.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver, ObserverBase

from densenet.data.datasets import DataSpec, load_split
from densenet.data.loader import EpochBatches, Loader
from densenet.deploy.int8 import INPUT, QParams, QuantizedDenseNet, int8_supported, quantization_points
from densenet.deploy.optimize import OptimizedDenseNet, optimize_for_inference
from densenet.fileio import write_text
from densenet.model import DenseNet
from densenet.weights import from_pretrained, save_pretrained

MIN_CALIBRATION_IMAGES = 32
QUANTIZATION_FILE = "quantization.json"
FORMAT = "densenet-int8"
FORMAT_VERSION = 2  # 2: the image's code too (the stem in int8); 1 had a float32 stem
OBSERVERS = {"histogram": HistogramObserver, "minmax": MinMaxObserver}


class Int8UnavailableError(OSError):
    """This machine cannot run the int8 path (a system limitation, like a missing library: an ``OSError``)."""


def check_int8_model(model: DenseNet) -> None:
    """Raise the one-line reason why ``model`` cannot run in int8 here, if any.

    Raises:
        TypeError: not a :class:`DenseNet`.
        ValueError: an architecture the int8 path cannot take (no bottleneck layers, or not images).
        Int8UnavailableError: this CPU lacks the int8 dot-product instructions.
    """
    if not isinstance(model, DenseNet):
        raise TypeError(f"quantize expects a densenet.DenseNet, got {type(model).__name__}")
    if model.config.spatial_dims != 2:
        raise ValueError(f"the int8 path runs images (spatial_dims 2); this model has spatial_dims "
                         f"{model.config.spatial_dims} — use float32 or bfloat16")
    if not model.config.bottleneck:
        raise ValueError("the int8 path needs bottleneck layers (DenseNet-B/BC: each BN-ReLU before a 1×1 conv); "
                         "this architecture has none (bottleneck: false) — use float32 or bfloat16")
    if not int8_supported():
        raise Int8UnavailableError("this CPU has no int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX) "
                                   "or this torch has no oneDNN int8 convolution: int8 inference is unavailable; "
                                   "float32 and bfloat16 work")


def calibration_batches(calibration: Iterable[Any]) -> Iterator[Tensor]:
    """The input batches of ``calibration``: each item an ``(N, C, H, W)`` tensor or an ``(input, label, …)``
    tuple/list as a DataLoader yields it."""
    for item in calibration:
        batch = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(batch, Tensor) or batch.dim() != 4:
            raise ValueError("calibration must yield (N, C, H, W) image tensors or (images, labels) pairs, got "
                             f"{type(batch).__name__}{'' if not isinstance(batch, Tensor) else tuple(batch.shape)}")
        yield batch


def calibrate(model: OptimizedDenseNet, calibration: Iterable[Any], observer: str = "histogram",
              min_images: int = MIN_CALIBRATION_IMAGES) -> tuple[dict[str, QParams], int]:
    """The u8 code of every quantized map of ``model`` (float32), from its values on the calibration images;
    and how many images were seen.

    Raises:
        ValueError: fewer than ``min_images`` images, or batches that are not images.
    """
    if observer not in OBSERVERS:
        raise ValueError(f"observer must be one of {', '.join(OBSERVERS)}, got {observer!r}")
    observers: dict[str, ObserverBase] = {
        name: OBSERVERS[observer](dtype=torch.quint8, qscheme=torch.per_tensor_affine)
        for name in quantization_points(model)}
    modules = dict(model.named_modules())

    def hook(name: str) -> Callable[[torch.nn.Module, Any, Tensor], None]:
        def observe(_module: torch.nn.Module, _inputs: Any, output: Tensor) -> None:
            if name == "conv0" and model.imagenet_stem:
                output = F.max_pool2d(output, 3, 2, 1)  # the first block reads the pooled stem
            observers[name](output.float())
        return observe

    def observe_input(_module: torch.nn.Module, inputs: tuple[Tensor, ...]) -> None:
        observers[INPUT](inputs[0].float())

    handles = [modules[name].register_forward_hook(hook(name)) for name in observers if name != INPUT]
    handles.append(model.register_forward_pre_hook(observe_input))
    images = 0
    try:
        with torch.no_grad():
            for batch in calibration_batches(calibration):
                model(batch.float())
                images += batch.shape[0]
    finally:
        for handle in handles:
            handle.remove()
    if images < min_images:
        raise ValueError(f"{images} calibration image(s): at least {min_images} are needed to calibrate the "
                         "activation ranges (a few hundred recommended)")
    qparams = {}
    for name, module in observers.items():
        scale, zero_point = module.calculate_qparams()
        qparams[name] = QParams(float(scale), int(zero_point))
    return qparams, images


def quantize(model: DenseNet, calibration: Iterable[Any], observer: str = "histogram",
             min_images: int = MIN_CALIBRATION_IMAGES) -> QuantizedDenseNet:
    """An int8 model computing ``model.eval()``'s function approximately: float32 images in, float32 logits out.

    Args:
        model: a trained :class:`DenseNet` with bottleneck layers (DenseNet-B/BC, every registered model).
        calibration: input batches ``(N, C, H, W)`` preprocessed as for the model, or ``(images, labels)`` pairs
            (a DataLoader); a few hundred images from the training data.
        observer: how each activation range is chosen: ``"histogram"`` (least squared error; default) or
            ``"minmax"``.
        min_images: fewer calibration images than this is an error.

    Raises:
        TypeError, ValueError, Int8UnavailableError: see :func:`check_int8_model` and :func:`calibrate`.
    """
    check_int8_model(model)
    source = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    fast = optimize_for_inference(source)
    qparams, images = calibrate(fast, calibration, observer, min_images)
    quantized = QuantizedDenseNet(fast, qparams)
    quantized.calibration = {"images": images, "observer": observer}
    return quantized


def save_quantized(model: DenseNet, quantized: QuantizedDenseNet, directory: str | Path) -> Path:
    """Write ``model``'s weights (``save_pretrained``) and ``quantized``'s activation codes (``quantization.json``)
    into ``directory``, each file atomically. Returns the directory."""
    directory = save_pretrained(model, directory)
    saved = {"format": FORMAT, "format_version": FORMAT_VERSION,
             "weights": "int8 symmetric per output channel, from the float32 weights at load",
             "calibration": getattr(quantized, "calibration", None),
             "activations": {name: {"scale": q.scale, "zero_point": q.zero_point}
                             for name, q in quantized.qparams.items()}}
    write_text(directory / QUANTIZATION_FILE, json.dumps(saved, indent=2) + "\n")
    return directory


def calibration_data(model: DenseNet, dataset: str, data_dir: str | None, images: int = 512, batch_size: int = 64,
                     workers: int | None = None) -> Loader:
    """``images`` images of ``dataset``'s training split (a fixed random subset), preprocessed as ``model``'s
    weights expect for evaluation (no augmentation), as ``(images, labels)`` batches."""
    preprocessing = model.meta.input_preprocessing(model.config)
    spec = DataSpec(name=dataset, data_dir=data_dir, image_size=preprocessing.crop, augment="none",
                    in_chans=preprocessing.channels, train_limit=images)
    split = load_split(spec, "train", preprocessing)
    return Loader(split, preprocessing, EpochBatches(len(split), batch_size, shuffle=False), workers=workers)


def is_quantized(directory: str | Path) -> bool:
    """Whether ``directory`` holds an int8 model (:func:`save_quantized`)."""
    return (Path(directory) / QUANTIZATION_FILE).is_file()


def load_quantized(directory: str | Path) -> QuantizedDenseNet:
    """The int8 model saved in ``directory`` by :func:`save_quantized`.

    Raises:
        ValueError: ``quantization.json`` is not valid; see also :func:`check_int8_model`.
    """
    path = Path(directory) / QUANTIZATION_FILE
    model = from_pretrained(directory)
    check_int8_model(model)
    try:
        saved = json.loads(path.read_text())
        if saved.get("format") != FORMAT:
            raise ValueError(f"format is {saved.get('format')!r}, not {FORMAT!r}")
        if saved.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format version {saved.get('format_version')!r} (this densenet reads "
                             f"{FORMAT_VERSION}: run densenet quantize again)")
        qparams = {name: QParams(float(q["scale"]), int(q["zero_point"])) for name, q in saved["activations"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"{path} is not a valid int8 quantization file: {error}") from error
    quantized = QuantizedDenseNet(optimize_for_inference(model.float().eval()), qparams)
    quantized.calibration = saved.get("calibration")
    return quantized
