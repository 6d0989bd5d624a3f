"""``densenet.explain``: heatmaps of a model's classes for image files or preprocessed tensors.

Image files are read and preprocessed as the weights say (resize the shorter side, centre crop, normalise); each
map is computed on the crop and carried back to the file's own resolution: placed where the crop lies in the
resized image (zero outside it: the network never saw that part), then resized to the file's height and width.
Volume files (a 3-D model) are read as training reads them — resampled to the network's side, standardised — and
their maps go back onto the file's voxels by trilinear interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densenet.data.arrays import READERS, load_arrays
from densenet.data.images import read_image
from densenet.data.transforms import eval_transform
from densenet.explain.cam import (
    CamModel,
    Explanation,
    Targets,
    class_names_of,
    compute_maps,
    probabilities,
    resolve_targets,
)
from densenet.meta import ArrayPreprocessing, Preprocessing


def explain(model: nn.Module, images: Tensor | Sequence[str | Path], targets: Targets = None,
            method: str = "gradcam", batch_size: int = 32) -> list[Explanation]:
    """Class activation maps of ``model`` for ``images``.

    Args:
        model: a :class:`~densenet.model.DenseNet` (trained by ``densenet train``, memory-efficient or not, or
            loaded with ``from_pretrained``) or an :class:`~densenet.deploy.optimize.OptimizedDenseNet`.
        images: image (or, for a 3-D model, volume) files, or a preprocessed ``(N, in_chans, *spatial)`` tensor.
        targets: ``None`` (the predicted class; multi-label: the labels predicted present), one class (name or
            index) for every image, or one per image (multi-label: a list of classes each).
        method: one of :data:`densenet.explain.cam.METHODS`.

    Returns:
        One :class:`Explanation` per (image, class), in input order; maps in [0, 1] at each input's resolution.

    Raises:
        ValueError: an image the model cannot take (channels, size), an unreadable file, an unknown class or method.
    """
    if len(images) == 0:
        raise ValueError("no images to explain")
    preprocessing = model.meta.input_preprocessing(model.config)
    if isinstance(images, Tensor):
        paths: list[Path | None] = [None] * images.shape[0]
        inputs = images.float()
        originals: list[np.ndarray] = []
    elif isinstance(preprocessing, ArrayPreprocessing):
        paths = [Path(path) for path in images]
        inputs, originals = _read_volumes(paths, preprocessing)
    else:
        paths = [Path(path) for path in images]
        pictures = [read_image(path, preprocessing.image_mode) for path in paths]
        transform = eval_transform(preprocessing)
        inputs = torch.stack([transform(picture) for picture in pictures])  # (N, C, crop, crop)
        originals = [np.asarray(picture.convert("RGB"), dtype=np.float32) / 255 for picture in pictures]
    device, was_training = next(model.parameters()).device, model.training
    try:
        with torch.no_grad():
            probs = probabilities(model, CamModel(model.eval())(inputs.to(device))).cpu()  # (N, K); checks input
    finally:
        model.train(was_training)
    if not originals:
        originals = [_denormalise(image, preprocessing) for image in inputs]
    pairs = resolve_targets(model, probs, targets)
    maps = compute_maps(model, inputs, pairs, method, batch_size)
    names = class_names_of(model)
    explanations = []
    for (index, label), heatmap in zip(pairs, maps, strict=True):
        if paths[index] is not None and isinstance(preprocessing, ArrayPreprocessing):  # back on the file's voxels
            heatmap = F.interpolate(torch.from_numpy(heatmap)[None, None], size=originals[index].shape,
                                    mode="trilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()
        elif paths[index] is not None:
            heatmap = to_image_resolution(heatmap, originals[index].shape[:2], preprocessing)
        explanations.append(Explanation(index, label, names[label], float(probs[index, label]), heatmap,
                                        originals[index], paths[index]))
    return explanations


def _read_volumes(paths: Sequence[Path], preprocessing: ArrayPreprocessing) -> tuple[Tensor, list[np.ndarray]]:
    """Volume files as the network takes them (resampled, standardised: ``(N, C, size, size, size)``) and as they
    are drawn: each file's first channel at its own resolution (RAS), scaled to [0, 1]."""
    if preprocessing.kind != "volume":
        raise ValueError(f"explain draws images and volumes; these weights read {preprocessing.kind}s")
    inputs = load_arrays(paths, preprocessing)
    return inputs, [_unit_range(READERS["volume"](path)[0]) for path in paths]


def _unit_range(values: Tensor) -> np.ndarray:
    """``values`` scaled to [0, 1] by their minimum and maximum (zeros when constant), ``float32``."""
    low, high = values.min(), values.max()
    scaled = (values - low) / (high - low) if high > low else torch.zeros_like(values)
    return scaled.numpy().astype(np.float32)


def to_image_resolution(heatmap: np.ndarray, size: tuple[int, int], preprocessing: Preprocessing) -> np.ndarray:
    """A ``crop × crop`` map back on an image of ``size`` (height, width): the inverse of resize-then-centre-crop,
    zero where the crop cut the image off. ``float32`` in [0, 1]."""
    height, width = size
    short, long = sorted((height, width))
    scaled_long = int(preprocessing.resize * long / short)  # torchvision's Resize(int): shorter side → resize
    resized = (preprocessing.resize, scaled_long) if height <= width else (scaled_long, preprocessing.resize)
    crop = preprocessing.crop
    top, left = round((resized[0] - crop) / 2), round((resized[1] - crop) / 2)  # torchvision's CenterCrop offsets
    canvas = torch.zeros(1, 1, *resized)
    canvas[0, 0, top:top + crop, left:left + crop] = torch.from_numpy(heatmap)
    if resized != (height, width):
        canvas = F.interpolate(canvas, size=(height, width), mode="bilinear", align_corners=False)
    return canvas[0, 0].clamp(0, 1).numpy().astype(np.float32)


def _denormalise(image: Tensor, preprocessing: Preprocessing | ArrayPreprocessing) -> np.ndarray:
    """A normalised ``(C, H, W)`` image back to RGB ``(H, W, 3)`` in [0, 1] for drawing (gray repeated); a
    standardised volume's first channel scaled to [0, 1]."""
    if isinstance(preprocessing, ArrayPreprocessing):
        return _unit_range(image[0].cpu())
    mean = torch.tensor(preprocessing.mean).view(-1, *[1] * (image.dim() - 1))
    std = torch.tensor(preprocessing.std).view(-1, *[1] * (image.dim() - 1))
    pixels = (image.cpu() * std + mean).clamp(0, 1)  # (C, *spatial)
    if pixels.dim() != 3:  # a volume: its first channel, (D, H, W)
        return pixels[0].numpy().astype(np.float32)
    rgb = pixels.expand(3, -1, -1) if pixels.shape[0] == 1 else pixels[:3]
    return rgb.permute(1, 2, 0).numpy().astype(np.float32)
