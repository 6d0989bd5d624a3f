"""Training checkpoints: the complete state of a run in one file, written atomically, read without unpickling code.

A checkpoint holds plain containers of tensors and numbers only, so ``torch.load(path, weights_only=True)``
reads it: the model and optimiser state dicts, the scheduler's and gradient scaler's state, the random number
generators of torch, CUDA, NumPy and Python (converted to tensors and lists), the position in training (epoch
and step), the best metric, the metrics history and the recipe.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from densenet.fileio import atomic_path

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = "densenet-train-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the run; the message names the file."""


def rng_state() -> dict[str, Any]:
    """The state of every random number generator training may draw from, as tensors and plain lists."""
    keys, position, has_gauss, cached_gaussian = np.random.get_state()[1:]
    version, python_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],  # a CPU run leaves CUDA alone
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):  # fewer GPUs visible now
            torch.cuda.set_rng_state(cuda_state, index)
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` (plus format tags) to ``path`` atomically: the old file stays until the new one is complete."""
    path = Path(path)
    with atomic_path(path) as temporary:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, temporary)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a readable training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (KeyError, IndexError, TypeError, AttributeError) as error:  # the unpickler on a text or foreign file
        raise CheckpointError(f"{path} is not a readable checkpoint: not a file written by torch.save") from error
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"{path} is not a readable checkpoint: {reason[:200]}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a densenet training checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {state.get('format_version')}, expected {FORMAT_VERSION}")
    return state
