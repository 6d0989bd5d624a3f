"""What the volume and signal readers share: the optional libraries they need (the ``volumes`` extra), ``.npy``
reading that never unpickles, and the check that an array is a usable ``float32`` tensor."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

EXTRA_HINT = "pip install 'densenet[volumes]'"


class MissingExtraError(ImportError, ValueError):
    """An optional library of the ``volumes`` extra is not installed (a ``ValueError`` too, so the CLI prints it
    as one line)."""


def require_extra(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (``monai.transforms``, ``nibabel``), or say which extra installs it.

    Raises:
        MissingExtraError: it is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(f"{purpose} needs {module.split('.')[0]}, which is not installed: "
                                f"{EXTRA_HINT}") from error


def read_npy(path: Path) -> np.ndarray:
    """A ``.npy`` array of real numbers (booleans and integers included), never unpickling objects.

    Raises:
        ValueError: not a readable ``.npy`` file of real numbers; the message names it.
    """
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error
    if not isinstance(array, np.ndarray) or np.iscomplexobj(array) or not (
            np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"{path} does not hold an array of real numbers (dtype {getattr(array, 'dtype', '?')})")
    return array


def finite_tensor(array: np.ndarray, path: Path, what: str) -> Tensor:
    """``array`` as a ``float32`` tensor.

    Raises:
        ValueError: an axis is empty or a value is NaN or infinite (it would turn the per-sample z-score into NaN).
    """
    if 0 in array.shape:
        raise ValueError(f"{what} {path} has an empty axis (shape {tuple(array.shape)})")
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{what} {path} holds NaN or infinite values")
    return tensor
