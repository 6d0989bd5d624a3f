"""Heatmaps on disk: an overlay PNG (the map in colour on the image, class and probability in the title) and the raw
map as ``.npy``, each written atomically. Volumes are drawn as a montage of the axial, coronal and sagittal slices
through the map's maximum."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from densenet.explain.cam import Explanation
from densenet.fileio import atomic_path, safe_file_stem


def overlay(image: np.ndarray, heatmap: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """The map in the jet colour map blended over a 2-D image: ``(H, W, 3)`` RGB (or ``(H, W)`` gray) in [0, 1]
    and ``(H, W)`` in [0, 1] → ``(H, W, 3)`` ``uint8`` (pytorch-grad-cam's ``show_cam_on_image``)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    return show_cam_on_image(rgb.astype(np.float32), heatmap, use_rgb=True, image_weight=weight)


def panels(image: np.ndarray, heatmap: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """What to draw: one overlay for a 2-D input; for a volume (``(D, H, W)`` image and map) the axial, coronal
    and sagittal slices through the map's maximum."""
    if heatmap.ndim == 2:
        return [("", overlay(image, heatmap))]
    if heatmap.ndim != 3 or image.shape[:3] != heatmap.shape:
        raise ValueError(f"cannot draw a map of shape {heatmap.shape} on an image of shape {image.shape}")
    d, h, w = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return [(f"axial {d}", overlay(image[d], heatmap[d])),
            (f"coronal {h}", overlay(image[:, h], heatmap[:, h])),
            (f"sagittal {w}", overlay(image[:, :, w], heatmap[:, :, w]))]


def save_overlay(explanation: Explanation, path: Path, method: str) -> None:
    """The overlay PNG, titled ``<class> <probability> (<method>)``."""
    from matplotlib.figure import Figure

    views = panels(explanation.image, explanation.heatmap)
    figure = Figure(figsize=(3.2 * len(views), 3.6), dpi=100)
    axes = figure.subplots(1, len(views), squeeze=False)[0]
    for ax, (label, picture) in zip(axes, views, strict=True):
        ax.imshow(picture, interpolation="nearest")
        ax.set_axis_off()
        if label:
            ax.set_title(label, fontsize=9)
    figure.suptitle(f"{explanation.class_name} {explanation.probability:.1%} ({method})", fontsize=11)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")


def file_stem(path: Path) -> str:
    """A file's name without its extension, ``.nii.gz`` counted as one (``scan.nii.gz`` → ``scan``)."""
    name = path.name
    return name[:-len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem


def output_stems(explanations: Sequence[Explanation], multi_label: bool) -> list[str]:
    """File stems: the input's name (``<stem>``), ``<stem>_<label>`` for a multi-label model (the label's name made
    safe for a file name: :func:`~densenet.fileio.safe_file_stem`), ``image<N>`` for a tensor row.

    Raises:
        ValueError: two inputs would write the same files.
    """
    stems = []
    for e in explanations:
        stem = file_stem(e.path) if e.path is not None else f"image{e.index}"
        stems.append(f"{stem}_{safe_file_stem(e.class_name)}" if multi_label else stem)
    seen: dict[str, Explanation] = {}
    for stem, e in zip(stems, explanations, strict=True):
        if stem in seen and seen[stem].index != e.index:
            raise ValueError(f"{seen[stem].path} and {e.path} would both write {stem}.png: explain them separately")
        seen[stem] = e
    return stems


def write_explanations(explanations: Sequence[Explanation], out: Path, method: str, multi_label: bool = False
                       ) -> None:
    """``<stem>.png`` (overlay) and ``<stem>.npy`` (the map, ``float32`` at the input's resolution) in ``out`` for
    each explanation; records the files in ``explanation.files``."""
    stems = output_stems(explanations, multi_label)
    out.mkdir(parents=True, exist_ok=True)
    for explanation, stem in zip(explanations, stems, strict=True):
        picture, raw = out / f"{stem}.png", out / f"{stem}.npy"
        save_overlay(explanation, picture, method)
        with atomic_path(raw) as temporary:
            np.save(temporary, explanation.heatmap.astype(np.float32))
        explanation.files = [picture, raw]
