"""DenseNet with the tutorial's math made explicit, torchvision-compatible weights and a complete tool.

The public API. The core (``config``, ``meta``, ``model``, ``registry``, ``weights``, the ``nn``
blocks and the ``tutorial`` formulas) loads with ``import densenet``; data, training, deployment and the
command line live in their own subpackages and load when used (``optimize_for_inference`` and ``quantize`` on
first access).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from densenet.config import DenseNetConfig
from densenet.meta import ModelMeta, Preprocessing
from densenet.model import DenseNet
from densenet.registry import create_model, get_config, list_models, register_model
from densenet.weights import from_pretrained, load_weights, save_pretrained

__all__ = [
    "DenseNet",
    "DenseNetConfig",
    "ModelMeta",
    "Preprocessing",
    "create_model",
    "explain",
    "from_pretrained",
    "get_config",
    "list_models",
    "load_weights",
    "optimize_for_inference",
    "quantize",
    "register_model",
    "save_pretrained",
]


def __getattr__(name: str) -> Any:
    """``optimize_for_inference`` from the deploy room and ``explain`` (the explain room, callable as
    :func:`densenet.explain.api.explain`), imported on first use."""
    if name == "explain":
        import densenet.explain

        return densenet.explain
    if name == "optimize_for_inference":
        from densenet.deploy.optimize import optimize_for_inference

        return optimize_for_inference
    if name == "quantize":
        from densenet.deploy.quantize import quantize

        return quantize
    raise AttributeError(f"module 'densenet' has no attribute {name!r}")
