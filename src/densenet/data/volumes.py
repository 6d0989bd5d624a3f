"""Reading one volume file into a channel-first ``float32`` tensor: NIfTI (``.nii``, ``.nii.gz``, through nibabel,
reoriented to the closest canonical orientation, RAS+) and NumPy (``.npy``) arrays.

Channel conventions:

* a 3-D array is one channel: NIfTI ``(X, Y, Z)`` and ``.npy`` ``(D, H, W)`` → ``(1, D, H, W)``;
* a 4-D NIfTI keeps its channels (or time points) on the last axis, as the format does: ``(X, Y, Z, C)`` →
  ``(C, X, Y, Z)``; a 5-D NIfTI ``(X, Y, Z, 1, C)`` (vector-valued voxels, ``dim[4] = 1``) likewise;
* a 4-D ``.npy`` is channel-first, as PyTorch and MONAI store it: ``(C, D, H, W)``.

:func:`read_volume` is a plain ``path → tensor`` function, so any data set that lists files can plug it in.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from torch import Tensor

from densenet.data.arrayio import finite_tensor, read_npy, require_extra

VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".npy")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")


def is_volume(path: str | Path) -> bool:
    """Whether ``path`` names a volume file by its extension (hidden files excluded)."""
    return str(path).lower().endswith(VOLUME_EXTENSIONS) and not Path(path).name.startswith(".")


def read_volume(path: str | Path) -> Tensor:
    """A volume file as a ``float32 (C, D, H, W)`` tensor (see the module's channel conventions).

    NIfTI files are reoriented with ``nibabel.as_closest_canonical`` (axes ordered and flipped to RAS+, so that
    the first axis runs towards the subject's right … the third towards superior, whatever the scanner wrote),
    and their scaling (``scl_slope``, ``scl_inter``) applied.

    Raises:
        ValueError: the file cannot be read (corrupt, truncated, not an array of numbers), has another number of
            dimensions than 3 or 4, an empty axis, or values that are not finite; the message names it.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    name = path.name.lower()
    if name.endswith(".npy"):
        array = read_npy(path)
        channel_first = True
    elif name.endswith(NIFTI_EXTENSIONS):
        array = _read_nifti(path)
        channel_first = False
    else:
        raise ValueError(f"{path} is not a volume file (extensions: {' '.join(VOLUME_EXTENSIONS)})")
    if not channel_first and array.ndim == 5 and array.shape[3] == 1:
        array = array[:, :, :, 0, :]  # (X, Y, Z, 1, C) → (X, Y, Z, C)
    if array.ndim not in (3, 4):
        raise ValueError(f"volume {path} has {array.ndim} dimensions (shape {tuple(array.shape)}); a volume has 3 "
                         "(one channel) or 4 (channels first in .npy, last in NIfTI)")
    if array.ndim == 3:
        array = array[None]  # (1, D, H, W)
    elif not channel_first:
        array = np.moveaxis(array, -1, 0)  # (X, Y, Z, C) → (C, X, Y, Z)
    return finite_tensor(array, path, "volume")


def _read_nifti(path: Path) -> np.ndarray:
    nibabel = require_extra("nibabel", "reading NIfTI volumes")
    try:
        image = nibabel.as_closest_canonical(nibabel.load(path))
        return np.asarray(image.get_fdata(dtype=np.float32))
    except (nibabel.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as error:
        raise ValueError(f"cannot read volume {path}: {error}") from error
