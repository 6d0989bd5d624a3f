"""Registry of named DenseNet architectures: ``register_model``, ``list_models``, ``create_model``.

Each variant is a small function returning its :class:`DenseNetConfig`; the parameter count in its docstring
is the published one (torchvision for the ImageNet models, the paper's Table 2 for the CIFAR models), except
DenseNet-264's, which neither publishes: its count is the closed form [F8], equal to the counted parameters.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

from densenet.config import DenseNetConfig
from densenet.features import DenseNetFeatures
from densenet.meta import ModelMeta
from densenet.model import DenseNet
from densenet.pretrained import get_weights, load_pretrained

ConfigBuilder = Callable[[], DenseNetConfig]

_REGISTRY: dict[str, ConfigBuilder] = {}
# The config fields that define a registered network's layers; the others (classes, input channels, dropout, the
# training path) may change and the network keeps its registered name.
ARCHITECTURE_KEYS = ("growth_rate", "block_config", "num_init_features", "bn_size", "compression", "stem")


def register_model(builder: ConfigBuilder) -> ConfigBuilder:
    """Register ``builder`` (a function returning a :class:`DenseNetConfig`) under its function name."""
    name = builder.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = builder
    return builder


def list_models(pattern: str | None = None) -> list[str]:
    """Registered names, sorted; ``pattern`` is a shell-style filter such as ``"densenet_bc*"``."""
    names = sorted(_REGISTRY)
    return [name for name in names if fnmatch.fnmatchcase(name, pattern)] if pattern else names


def get_config(name: str, **overrides: Any) -> DenseNetConfig:
    """The config registered as ``name``, with ``overrides`` applied.

    Raises:
        ValueError: unknown name (the message lists the closest registered names) or a bad override.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else f"known: {', '.join(list_models())}"
        raise ValueError(f"unknown model {name!r}; {hint}")
    config = _REGISTRY[name]()
    return config.replace(**overrides) if overrides else config


def create_model(name: str, *, pretrained: bool = False, weights: str | None = None, features_only: bool = False,
                 out_indices: Sequence[int] | int | None = None, progress: bool = True,
                 class_names: list[str] | None = None, **overrides: Any) -> DenseNet | DenseNetFeatures:
    """Build the registered model ``name``, freshly initialised or from pretrained weights (timm's arguments).

    ``model.meta.name`` is ``name`` unless ``overrides`` change the architecture itself (growth rate, blocks,
    widths, compression or stem): a network with other layers is not ``name`` any more and is saved as a custom
    one. Classes, input channels, dropout and the training path keep the name (timm's convention).

    Args:
        name: a name from :func:`list_models`.
        pretrained: load the architecture's default weights (:mod:`densenet.pretrained`; downloaded once into
            torch.hub's cache). Another ``num_classes`` keeps a fresh classifier, another ``in_chans`` an adapted
            first convolution; ``model.meta`` gets the weights' class names and preprocessing.
        weights: load these weights instead of the default ones (a tag such as ``"imagenet1k"``); implies
            ``pretrained``.
        features_only: return a :class:`~densenet.features.DenseNetFeatures` backbone (multi-scale maps with
            ``feature_info``) instead of a classifier.
        out_indices: with ``features_only``: which maps (default all; an int ``n``: the last ``n``).
        progress: show a progress bar while downloading.
        class_names: optional output names (their count must equal ``num_classes``).
        **overrides: config fields to change, e.g. ``num_classes=2, in_chans=1, drop_rate=0.2``.

    Raises:
        ValueError: unknown name or weights, a bad override, or pretrained weights with other layers.
        DownloadError: the weights cannot be fetched (the message says where to place the file by hand).
    """
    config = get_config(name, **overrides)
    changed = [key for key in ARCHITECTURE_KEYS if getattr(config, key) != getattr(get_config(name), key)]
    model = DenseNet(config, meta=ModelMeta(name=None if changed else name, class_names=class_names))
    if pretrained or weights is not None:
        if changed:
            raise ValueError(f"pretrained weights fit {name}'s layers; {', '.join(changed)} would change them")
        load_pretrained(model, get_weights(name, weights), progress=progress)
    if features_only:
        return DenseNetFeatures(model.features, model.config, out_indices, model.meta)
    if out_indices is not None:
        raise ValueError("out_indices applies to features_only=True")
    return model


def _imagenet(growth_rate: int, block_config: tuple[int, ...], num_init_features: int) -> DenseNetConfig:
    return DenseNetConfig(
        growth_rate=growth_rate, block_config=block_config, num_init_features=num_init_features, num_classes=1000
    )


def _cifar(depth: int, growth_rate: int, bottleneck: bool) -> DenseNetConfig:
    """The paper's CIFAR models: three equal blocks of ``(L − 4)/3`` (or ``/6`` with bottleneck) layers."""
    layers_per_block = (depth - 4) // (6 if bottleneck else 3)
    return DenseNetConfig(
        growth_rate=growth_rate,
        block_config=(layers_per_block,) * 3,
        num_init_features=2 * growth_rate if bottleneck else 16,
        bn_size=4 if bottleneck else 0,
        compression=0.5 if bottleneck else 1.0,
        num_classes=10,
        stem="cifar",
    )


@register_model
def densenet121() -> DenseNetConfig:
    """DenseNet-121, k=32, blocks 6-12-24-16: 7,978,856 parameters."""
    return _imagenet(32, (6, 12, 24, 16), 64)


@register_model
def densenet161() -> DenseNetConfig:
    """DenseNet-161, k=48, blocks 6-12-36-24, 96 initial maps: 28,681,000 parameters."""
    return _imagenet(48, (6, 12, 36, 24), 96)


@register_model
def densenet169() -> DenseNetConfig:
    """DenseNet-169, k=32, blocks 6-12-32-32: 14,149,480 parameters."""
    return _imagenet(32, (6, 12, 32, 32), 64)


@register_model
def densenet201() -> DenseNetConfig:
    """DenseNet-201, k=32, blocks 6-12-48-32: 20,013,928 parameters."""
    return _imagenet(32, (6, 12, 48, 32), 64)


@register_model
def densenet264() -> DenseNetConfig:
    """DenseNet-264, k=32, blocks 6-12-64-48 (the paper's deepest ImageNet model): 33,337,704 parameters."""
    return _imagenet(32, (6, 12, 64, 48), 64)


@register_model
def densenet40_k12() -> DenseNetConfig:
    """DenseNet (L=40, k=12), no bottleneck or compression: 1.0M parameters."""
    return _cifar(40, 12, bottleneck=False)


@register_model
def densenet100_k12() -> DenseNetConfig:
    """DenseNet (L=100, k=12), no bottleneck or compression: 7.0M parameters."""
    return _cifar(100, 12, bottleneck=False)


@register_model
def densenet100_k24() -> DenseNetConfig:
    """DenseNet (L=100, k=24), no bottleneck or compression: 27.2M parameters."""
    return _cifar(100, 24, bottleneck=False)


@register_model
def densenet_bc100_k12() -> DenseNetConfig:
    """DenseNet-BC (L=100, k=12), θ=0.5: 0.8M parameters."""
    return _cifar(100, 12, bottleneck=True)


@register_model
def densenet_bc250_k24() -> DenseNetConfig:
    """DenseNet-BC (L=250, k=24), θ=0.5: 15.3M parameters."""
    return _cifar(250, 24, bottleneck=True)


@register_model
def densenet_bc190_k40() -> DenseNetConfig:
    """DenseNet-BC (L=190, k=40), θ=0.5: 25.6M parameters."""
    return _cifar(190, 40, bottleneck=True)
