"""Training checkpoints: the complete state of a run in one file, written atomically, read without unpickling code.

A checkpoint holds plain containers of tensors and numbers only, so ``torch.load(path, weights_only=True)``
reads it: the model and optimiser state dicts, the scheduler's and gradient scaler's state, the random number
generators of torch, CUDA, NumPy and Python (converted to tensors and lists), the position in training (epoch
and step), the running totals of an unfinished epoch, the best metric, the metrics history and the recipe.

:class:`TrainingCheckpoint` is the schema: its fields are the file's keys, and both saving and restoring go
through it, so the fields, their types and their validation live in one place.
"""

from __future__ import annotations

import dataclasses
import pickle
import random
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from densenet.fileio import atomic_path
from densenet.training.runlog import METRIC_COLUMNS

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


@dataclass
class EpochTotals:
    """Running totals of the unfinished epoch, saved under ``partial`` in a checkpoint (mid-epoch ones included).

    Attributes:
        loss_sum: summed training loss over the images seen (loss × batch size per micro-batch).
        correct: images whose top-1 prediction was right.
        seen: images trained on so far in this epoch.
        seconds: training time of the epoch so far (evaluation excluded).
        lr: the mean learning rate of the steps taken so far in the epoch.
        skipped: unreadable images left out of the epoch so far.
    """

    loss_sum: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    seconds: float = 0.0
    lr: float = 0.0
    skipped: float = 0.0

    def to_dict(self) -> dict[str, float]:
        """The saved form: a plain dict with the field names as keys."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], path: Path) -> EpochTotals:
        """Read the saved form back; raise :class:`CheckpointError` naming ``path`` if a total is missing."""
        names = [item.name for item in dataclasses.fields(cls)]
        bad = [name for name in names if not _is_number(values.get(name))]
        if bad:
            raise CheckpointError(f"{path} is malformed: the epoch's running totals lack {', '.join(bad)}")
        return cls(**{name: float(values[name]) for name in names})


@dataclass
class TrainingCheckpoint:
    """Everything a run needs to continue, as saved in ``checkpoint.pt`` (one key per field, in this order).

    Attributes:
        model, optimizer, scheduler, scaler: the state dicts of the network, SGD, the LR schedule and the gradient
            scaler.
        rng: every process's random-generator state (:func:`rng_state`), in rank order.
        epoch: finished epochs.
        step: optimiser steps taken in the unfinished epoch (``0`` at an epoch end).
        steps_per_epoch: steps per epoch of the run that wrote it (a resume must have as many).
        partial: running totals of the unfinished epoch.
        best_acc: best evaluation top-1 so far (``-1`` before the first evaluation).
        history: one row of metrics per finished epoch (the columns of ``metrics.csv``).
        config: the recipe, for the record (a resume reads ``config.yaml``, not this).
    """

    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    rng: list[Any]
    epoch: int
    step: int
    steps_per_epoch: int
    partial: EpochTotals
    best_acc: float
    history: list[dict[str, float]]
    config: dict[str, Any] = field(default_factory=dict)

    def to_state(self) -> dict[str, Any]:
        """The dict :func:`save_checkpoint` writes (``partial`` as a plain dict)."""
        state = {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}
        state["partial"] = self.partial.to_dict()
        return state

    def save(self, path: str | Path) -> Path:
        """Write atomically to ``path``."""
        return save_checkpoint(self.to_state(), path)

    @classmethod
    def from_state(cls, state: dict[str, Any], path: str | Path) -> TrainingCheckpoint:
        """Check every required field's type (``config`` is optional) and build the checkpoint.

        Raises:
            CheckpointError: a field missing or of the wrong type; the message names ``path`` and the field.
        """
        path = Path(path)
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            value = state.get(item.name)
            required = item.default_factory is dataclasses.MISSING
            if required and (not isinstance(value, _runtime_kinds(hints[item.name])) or isinstance(value, bool)):
                raise CheckpointError(f"{path} is malformed: {item.name!r} is missing or of the wrong type "
                                      f"({type(value).__name__})")
        values = {item.name: state[item.name] for item in dataclasses.fields(cls) if item.name in state}
        values["partial"] = EpochTotals.from_dict(state["partial"], path)
        if not isinstance(values.get("config", {}), dict):
            values.pop("config")
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> TrainingCheckpoint:
        """:func:`load_checkpoint`, then :meth:`from_state`."""
        return cls.from_state(load_checkpoint(path), path)

    def check_position(self, steps_per_epoch: int, path: str | Path) -> None:
        """Raise :class:`CheckpointError` unless the checkpoint fits a run of ``steps_per_epoch`` steps per epoch and
        its position, best accuracy and history make sense."""
        if self.steps_per_epoch != steps_per_epoch:
            raise CheckpointError(f"{path} was written with {self.steps_per_epoch} steps per epoch, this run has "
                                  f"{steps_per_epoch}: data or batch size changed")
        problem = None
        if not 0 <= self.epoch < 2**31 or not 0 <= self.step <= self.steps_per_epoch:
            problem = f"epoch {self.epoch}, step {self.step} of {self.steps_per_epoch}"
        elif not (self.best_acc == -1.0 or 0.0 <= self.best_acc <= 1.0):
            problem = f"best accuracy {self.best_acc}"
        elif len(self.history) != self.epoch:
            problem = f"a history of {len(self.history)} rows for {self.epoch} epochs"
        elif not all(isinstance(row, dict) and all(_is_number(row.get(key)) for key in METRIC_COLUMNS)
                     for row in self.history):
            problem = f"history rows without the metrics {', '.join(METRIC_COLUMNS)}"
        if problem:
            raise CheckpointError(f"{path} is malformed: {problem}")


def kept_checkpoint(path: Path) -> str:
    """Where a diverged run can be resumed from, for its error message."""
    if path.is_file():
        return f"the last good checkpoint is {path}"
    return "no checkpoint was written yet"


def _runtime_kinds(hint: Any) -> type | tuple[type, ...]:
    """The ``isinstance`` check of a field's type: the container for ``dict[...]``/``list[...]``, ``int`` or
    ``float`` for a number, a plain dict for a nested dataclass (saved as one)."""
    if hint is float:
        return (int, float)
    if dataclasses.is_dataclass(hint):
        return dict
    return typing.get_origin(hint) or hint


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))
