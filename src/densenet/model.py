"""The DenseNet network, built from a :class:`~densenet.config.DenseNetConfig`."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from densenet.config import DenseNetConfig
from densenet.features import check_indices, run_features
from densenet.meta import ModelMeta
from densenet.nn import dims as nd
from densenet.nn.layers import DenseBlock, Features, Transition, cifar_stem, imagenet_stem, symbolic_tracing


class DenseNet(nn.Module):
    """Densely connected convolutional network (Huang et al., CVPR 2017).

    ``features`` holds the stem, ``denseblockN`` / ``transitionN`` and the final ``norm5``; ``classifier`` is
    the linear layer — the same names as torchvision's ``DenseNet``, so their state dicts load unchanged.

    Args:
        config: the architecture; keyword arguments (torchvision's names: ``growth_rate``, ``block_config``,
            ``num_init_features``, ``bn_size``, ``drop_rate``, ``num_classes``, ``memory_efficient``, plus
            ``compression``, ``in_chans``, ``stem``, ``spatial_dims``) override its fields or, without a config,
            the defaults (DenseNet-121). ``spatial_dims`` 1, 2 or 3 builds the same network for signals, images or
            volumes (``nn.Conv1d``/``2d``/``3d`` and the matching batch norms and pools).
        meta: what travels beside the weights (registered name, class names, preprocessing) as ``model.meta``;
            the network never reads it, :meth:`save_pretrained` writes it. Default: nothing known.
    """

    def __init__(
        self, config: DenseNetConfig | None = None, *, meta: ModelMeta | None = None, **overrides: Any
    ) -> None:
        super().__init__()
        config = (config or DenseNetConfig()).replace(**overrides) if overrides else (config or DenseNetConfig())
        self.config = config
        self.meta = (meta or ModelMeta()).check(config)

        dims = config.spatial_dims
        stem = imagenet_stem if config.stem == "imagenet" else cifar_stem
        modules: OrderedDict[str, nn.Module] = stem(config.in_chans, config.num_init_features, dims)
        channels = config.num_init_features
        for index, num_layers in enumerate(config.block_config, start=1):
            block = DenseBlock(num_layers, channels, config.growth_rate, config.bn_size, config.drop_rate,
                               config.memory_efficient, dims)
            modules[f"denseblock{index}"] = block
            channels = block.out_channels
            if index < len(config.block_config):
                out_channels = config.transition_channels(channels)
                modules[f"transition{index}"] = Transition(channels, out_channels, config.memory_efficient, dims)
                channels = out_channels
        modules["norm5"] = nd.batch_norm_module(dims, channels)
        self.features = Features(modules, config.stem, config.memory_efficient)
        self.num_features = channels
        self.classifier = self._new_classifier(config.num_classes)
        self._init_weights()

    def _new_classifier(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        classifier = nn.Linear(self.num_features, num_classes)
        nn.init.zeros_(classifier.bias)
        return classifier

    def _init_weights(self) -> None:
        """torchvision's initialisation: Kaiming-normal convs, BN weight 1 / bias 0, linear bias 0."""
        for module in self.modules():
            if isinstance(module, nd.ConvModule):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nd.BatchNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` for input this network cannot take (see :func:`check_input`)."""
        check_input(self.config, x)

    def forward_features(self, x: Tensor) -> Tensor:
        """``(N, in_chans, *spatial)`` → ``(N, num_features, *spatial')``: everything up to the final BN-ReLU.

        The memory-efficient path runs channels-last from the input on (the dense blocks store their features
        channels-last anyway; the stem's conv and max-pool are several times faster so on CPU) — for images and
        volumes; signals stay as they come (see :func:`input_layout`).
        """
        x = input_layout(self.config, x)
        return F.relu(self.features(x), inplace=True)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool [F4] and classifier [F5]: ``(N, C, *spatial)`` → ``(N, num_classes)``.

        With ``pre_logits`` the pooled ``(N, C)`` features are returned instead of logits.
        """
        # O_k = (1/HW) Σ_ij x_ijk, over every spatial axis   [F4]
        x = nd.global_avg_pool(x, self.config.spatial_dims)  # (N, C)
        # O = Wx + b   [F5]
        return x if pre_logits else self.classifier(x)  # (N, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_chans, *spatial)`` → logits ``(N, num_classes)``."""
        if not symbolic_tracing():  # FX traces shapes as symbols: nothing to check
            self.check_input(x)
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: Tensor, indices: Sequence[int] | int | None = None,
                              intermediates_only: bool = False) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm's ``forward_intermediates``: the final features and the multi-scale maps at ``indices``.

        Args:
            x: ``(N, in_chans, *spatial)``.
            indices: which maps of :func:`densenet.features.feature_taps` (default all; an int ``n``: the last
                ``n``; negative indices count from the end).
            intermediates_only: return the maps alone.

        Returns:
            ``(final, maps)``: ``final`` is :meth:`forward_features`'s ``(N, C, *spatial')``; or ``maps`` alone.
        """
        self.check_input(x)
        final, maps = run_features(self.features, self.config, x, check_indices(self.config, indices))
        return maps if intermediates_only else (final, maps)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch for recomputation in training, mapped onto ``memory_efficient``.

        The explicit path is this library's form of gradient checkpointing, and more: each dense block keeps one
        shared feature buffer and recomputes its BN-ReLU outputs in a hand-written backward, and the stem and the
        transitions keep their inputs only, so memory grows linearly with depth and batch-norm statistics are
        updated once (checkpointing would run them twice). ``enable=False`` switches to the plain autograd path,
        which stores every intermediate. The function computed does not change.
        """
        self.config = self.config.replace(memory_efficient=bool(enable))
        for module in self.modules():
            if hasattr(module, "memory_efficient") and module is not self:
                module.memory_efficient = bool(enable)

    def __prepare_scriptable__(self) -> nn.Module:
        """Called by ``torch.jit.script``; refuses with the supported alternatives."""
        raise TypeError("torch.jit.script cannot compile densenet.DenseNet (its blocks choose between Python "
                        "code paths at run time); use torch.export.export(model.eval(), (x,)) — or torch.jit.trace, "
                        "or densenet export --format exported-program")

    def get_classifier(self) -> nn.Module:
        """The final linear layer (``nn.Identity`` when ``num_classes`` is 0)."""
        return self.classifier

    def reset_classifier(self, num_classes: int, class_names: list[str] | None = None) -> None:
        """Replace the classifier by a freshly initialised one with ``num_classes`` outputs (0: none); the class
        names in :attr:`meta` become ``class_names``."""
        self.config = self.config.replace(num_classes=num_classes)
        self.meta = self.meta.replace(class_names=class_names).check(self.config)
        reference = self.features.conv0.weight
        self.classifier = self._new_classifier(num_classes).to(device=reference.device, dtype=reference.dtype)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` and ``config.json`` to ``directory``; see :func:`densenet.from_pretrained`."""
        # weights.py imports this module; importing it at call time keeps the module graph one-way.
        from densenet.weights import save_pretrained

        return save_pretrained(self, directory)


_LAYOUTS = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}


def check_input(config: DenseNetConfig, x: Tensor) -> None:
    """Raise ``ValueError`` for input this network cannot take, before torch fails deep inside."""
    dims = config.spatial_dims
    if x.dim() != dims + 2:
        raise ValueError(f"expected a {dims + 2}-D input {_LAYOUTS[dims]} (spatial_dims={dims}), got shape "
                         f"{tuple(x.shape)}")
    if x.shape[1] != config.in_chans:
        raise ValueError(
            f"expected {config.in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})"
        )
    config.check_input_size(tuple(x.shape[2:]))


def input_layout(config: DenseNetConfig, x: Tensor) -> Tensor:
    """The layout the network runs in: channels-last for images and volumes on the memory-efficient path, the
    input's own otherwise (signals gain nothing from it: 1D convs run on plain ``(N, C, L)``)."""
    if config.memory_efficient and config.spatial_dims > 1:
        return nd.channels_last(x, config.spatial_dims)
    return x


def check_batch_statistics(config: DenseNetConfig, batch: int, side: int) -> None:
    """Raise ``ValueError`` when training on batches of ``batch`` inputs of side ``side`` along every axis would
    leave a batch norm one value per channel (the last one sees the smallest maps): torch cannot compute batch
    statistics from it."""
    dims = config.spatial_dims
    final = config.feature_map_size(side)
    if batch * final**dims < 2:
        sides, finals = "×".join([str(side)] * dims), "×".join([str(final)] * dims)
        raise ValueError(f"a batch of {batch} input(s) at {sides} leaves the last batch norm "
                         f"{finals}×{batch} = one value per channel, too few for batch statistics: use a larger "
                         "batch or image size")
