"""Reading one signal file into a channel-first ``float32`` tensor ``(C, L)``: ``.npy`` arrays and ``.csv`` tables.

Conventions: a ``.npy`` file holds ``(L,)`` (one channel) or ``(C, L)`` (channels first); a ``.csv`` file holds one
column per channel and one row per time step (the layout of spreadsheet and most recorder exports), with an
optional header row of names, read as ``(L, C)`` and transposed. :func:`read_signal` is a plain ``path → tensor``
function, so any data set that lists files can plug it in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from densenet.data.arrayio import finite_tensor, read_npy

SIGNAL_EXTENSIONS = (".npy", ".csv")


def is_signal(path: str | Path) -> bool:
    """Whether ``path`` names a signal file by its extension (hidden files excluded)."""
    return str(path).lower().endswith(SIGNAL_EXTENSIONS) and not Path(path).name.startswith(".")


def read_signal(path: str | Path) -> Tensor:
    """A signal file as a ``float32 (C, L)`` tensor (see the module's conventions).

    Raises:
        ValueError: the file cannot be read (not numbers, ragged rows), has another number of dimensions than 1 or 2,
            no samples, or values that are not finite; the message names it.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    name = path.name.lower()
    if name.endswith(".npy"):
        array = read_npy(path)
    elif name.endswith(".csv"):
        array = _read_csv(path).T  # (L, C) → (C, L)
    else:
        raise ValueError(f"{path} is not a signal file (extensions: {' '.join(SIGNAL_EXTENSIONS)})")
    if array.ndim not in (1, 2):
        raise ValueError(f"signal {path} has {array.ndim} dimensions (shape {tuple(array.shape)}); a signal has 1 "
                         "(one channel) or 2 (channels, length)")
    if array.ndim == 1:
        array = array[None]  # (1, L)
    return finite_tensor(array, path, "signal")


def _read_csv(path: Path) -> np.ndarray:
    """The numbers of a comma-separated table as ``(rows, columns)``, skipping a first row that is not numbers."""
    try:
        with path.open(encoding="utf-8") as file:
            first = file.readline()
        if not first.strip():
            raise ValueError("the file is empty")
        header = not _numbers(first)
        table = np.loadtxt(path, delimiter=",", skiprows=1 if header else 0, ndmin=2, dtype=np.float64,
                           encoding="utf-8")
    except (ValueError, OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read signal {path}: {str(error).splitlines()[0]}") from error
    return table


def _numbers(line: str) -> bool:
    try:
        [float(cell) for cell in line.split(",")]
    except ValueError:
        return False
    return True
