"""Weights: read state dicts (torchvision, timm, legacy, MONAI and densenet keys), ``save_pretrained`` /
``from_pretrained``.

Nothing here unpickles code: ``.pth`` files load with ``torch.load(weights_only=True)``, the rest is safetensors.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from densenet import __version__
from densenet.config import DenseNetConfig
from densenet.fileio import atomic_path, write_text
from densenet.meta import ModelMeta
from densenet.model import DenseNet
from densenet.monai_compat import rename_monai_key

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1

logger = logging.getLogger("densenet")

# torchvision's first checkpoints named dense-layer modules "norm.1", "conv.2", … instead of "norm1", "conv2".
_LEGACY_KEY = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")
# Prefixes added by DistributedDataParallel ("module.") and torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Keys under which training scripts commonly nest the state dict.
_NESTING_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema")


class WeightsError(ValueError):
    """Weights that cannot be read or do not fit the model; the message names the file and the keys."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors``, from ``.pth``/``.pt``/``.bin``/``.ckpt`` or from a
    ``save_pretrained`` directory, unwrapping a training checkpoint's ``{"model": …}`` nesting.

    Raises:
        FileNotFoundError: no such file.
        WeightsError: the file is not a readable state dict.
    """
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            loaded: Any = load_file(path)
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (KeyError, IndexError, TypeError, AttributeError) as error:  # the unpickler on a truncated or foreign file
        raise WeightsError(f"{path} is not a readable weights file: not a complete file written by torch.save or "
                           "safetensors") from error
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsError(f"{path} is not a readable weights file: {reason[:200]}") from error
    for key in _NESTING_KEYS:
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
            break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return dict(loaded)


def convert_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename torchvision-legacy, timm, MONAI (:mod:`densenet.monai_compat`), DDP and ``torch.compile`` keys to this
    library's (= torchvision's) names."""
    converted = {}
    for key, value in state_dict.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        converted[_LEGACY_KEY.sub(r"\1\2.", rename_monai_key(key))] = value
    return converted


def load_weights(model: DenseNet, source: str | Path | Mapping[str, Tensor], strict: bool = True, *,
                 name: str | None = None) -> DenseNet:
    """Load a torchvision, timm, MONAI or densenet state dict (file, directory or mapping) into ``model``.

    BN ``num_batches_tracked`` counters missing from old checkpoints keep the model's values. With ``strict``
    (the default) anything else missing, unexpected or of another shape is an error; without it, the keys that
    fit are loaded, the rest keep the model's values, and one warning line per kind names them. Messages name
    ``source`` when it is a path, else ``name`` (default "state dict").

    Raises:
        FileNotFoundError: ``source`` is a path to nothing.
        WeightsError: the file is not a readable state dict, keys or shapes do not match (``strict``), or a value
            is NaN or infinite (the message names the first offending keys).
    """
    state = read_state_dict(source) if isinstance(source, (str, Path)) else dict(source)
    state = convert_state_dict(state)
    expected = model.state_dict()
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [key for key in expected if key in state and state[key].shape != expected[key].shape]
    problems = [f"{label}: {_first_keys(keys)}" for label, keys in (
        ("missing", missing), ("unexpected", unexpected),
        ("shape mismatch", [f"{key} (file {tuple(state[key].shape)}, model {tuple(expected[key].shape)})"
                            for key in mismatched])) if keys]
    where = f"{source}" if isinstance(source, (str, Path)) else (name or "state dict")
    if problems and strict:
        raise WeightsError(f"weights in {where} do not fit this model; " + "; ".join(problems))
    for problem in problems:
        logger.warning("weights in %s: %s (not loaded; the model keeps its own values there)", where, problem)
    state = {key: value for key, value in state.items() if key in expected and key not in mismatched}
    non_finite = [key for key, value in state.items() if value.is_floating_point() and not value.isfinite().all()]
    if non_finite:
        raise WeightsError(f"weights in {where} hold NaN or infinite values (a diverged run?): "
                           f"{_first_keys(non_finite)}")
    model.load_state_dict(state, strict=strict)
    return model


def _first_keys(keys: list[str]) -> str:
    """``a, b, c (+N more)``."""
    return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")


def save_pretrained(model: DenseNet, directory: str | Path) -> Path:
    """Write ``model.safetensors`` (parameters and BN buffers) and ``config.json`` (architecture, class count and
    the model's :class:`~densenet.meta.ModelMeta`: registered name, class names, input preprocessing) into
    ``directory``, each atomically. Returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt"})
    meta = model.meta.check(model.config).to_dict()
    saved = {
        "format_version": FORMAT_VERSION,
        "library": f"densenet {__version__}",
        "model_name": meta["model_name"],
        "architecture": model.config.to_dict(),
        "num_classes": model.config.num_classes,
        "class_names": meta["class_names"],
        "preprocessing": meta["preprocessing"],
        "task": meta["task"],
        "thresholds": meta["thresholds"],
    }
    write_text(directory / CONFIG_FILE, json.dumps(saved, indent=2) + "\n")
    return directory


def read_pretrained_config(directory: str | Path) -> tuple[DenseNetConfig, ModelMeta]:
    """The architecture and the metadata saved in a ``save_pretrained`` directory's ``config.json``.

    Raises:
        FileNotFoundError: the directory or its config.json is missing.
        NotADirectoryError: ``directory`` is a file.
        WeightsError: config.json is not valid.
    """
    directory = Path(directory)
    if directory.is_file():
        raise NotADirectoryError(f"{directory} is a file; expected a directory written by save_pretrained")
    if not directory.is_dir():
        raise FileNotFoundError(f"weights directory {directory} does not exist")
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        inside = [directory / name for name in ("best", "last") if (directory / name / CONFIG_FILE).is_file()]
        hint = f"; did you mean {inside[0]}?" if inside else ""
        raise FileNotFoundError(f"{directory} holds no {CONFIG_FILE}: not a directory written by save_pretrained"
                                f"{hint}")
    try:
        saved = json.loads(config_path.read_text())
        if not isinstance(saved, dict) or not isinstance(saved.get("architecture"), dict):
            raise ValueError("it holds no 'architecture' mapping")
        config = DenseNetConfig.from_dict(saved["architecture"])
        return config, ModelMeta.from_dict(saved).check(config)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise WeightsError(f"{config_path} is not a valid densenet config: {error}") from error


def from_pretrained(directory: str | Path, **overrides: Any) -> DenseNet:
    """Rebuild a model from a ``save_pretrained`` directory alone, its metadata in ``model.meta``.

    Args:
        directory: holds ``config.json`` and ``model.safetensors``.
        **overrides: config fields that do not change the weights' shapes, e.g. ``memory_efficient=False``.
    """
    config, meta = read_pretrained_config(directory)
    model = DenseNet(config.replace(**overrides) if overrides else config, meta=meta)
    return load_weights(model, Path(directory) / WEIGHTS_FILE)
