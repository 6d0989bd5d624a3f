"""The DenseNet architecture as data.

A :class:`DenseNetConfig` holds every number that defines a DenseNet (Huang et al., 2017) and nothing
else. It is validated when constructed, serialises to a plain dict (``config.json`` of ``save_pretrained``)
and is passed whole to :class:`densenet.model.DenseNet` and to :mod:`densenet.analysis`, which derive the
network from it independently of each other.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

STEMS = ("imagenet", "cifar")
SPATIAL_DIMS = (1, 2, 3)
_AXES = {1: "length", 2: "height and width", 3: "depth, height and width"}


@dataclass(frozen=True)
class DenseNetConfig:
    """Architecture of a DenseNet.

    Attributes:
        growth_rate: ``k``, the number of feature maps each dense layer adds.
        block_config: number of dense layers ``L_b`` in each dense block.
        num_init_features: channels ``C_0`` produced by the stem.
        bn_size: bottleneck width multiplier; each layer's 1×1 conv produces ``bn_size·k`` maps
            (DenseNet-B). ``0`` means no bottleneck: the layer is BN-ReLU-Conv3×3 alone.
        compression: ``θ`` in (0, 1]; a transition maps ``C`` channels to ``⌊θ·C⌋`` (DenseNet-C when < 1).
        drop_rate: dropout probability applied to each layer's ``k`` new feature maps.
        num_classes: outputs of the classifier; ``0`` builds no classifier (features only).
        in_chans: channels of the input image.
        stem: ``"imagenet"`` (7×7/2 conv, BN, ReLU, 3×3/2 max-pool) or ``"cifar"`` (one 3×3 conv).
        memory_efficient: train through the explicit, memory-linear dense block (``True``) or through the
            plain autograd reference with ``torch.cat`` (``False``). Does not change the function computed.
        spatial_dims: ``d``, the spatial dimensions of the input: 1 (signals ``(N, C, L)``), 2 (images
            ``(N, C, H, W)``) or 3 (volumes ``(N, C, D, H, W)``). Every kernel, stride and pool is the same along
            each axis (a 3×3 conv becomes 3 in 1D and 3×3×3 in 3D).
    """

    growth_rate: int = 32
    block_config: tuple[int, ...] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    compression: float = 0.5
    drop_rate: float = 0.0
    num_classes: int = 1000
    in_chans: int = 3
    stem: str = "imagenet"
    memory_efficient: bool = True
    spatial_dims: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.block_config, (list, tuple)):
            raise ValueError(f"block_config must be a list of layer counts, e.g. [6, 12, 24, 16], got "
                             f"{self.block_config!r}")
        object.__setattr__(self, "block_config", tuple(self.block_config))
        for name in ("growth_rate", "num_init_features", "in_chans"):
            _require_int(name, getattr(self, name), minimum=1)
        for name in ("bn_size", "num_classes"):
            _require_int(name, getattr(self, name), minimum=0)
        if not self.block_config:
            raise ValueError("block_config must name at least one dense block")
        for layers in self.block_config:
            _require_int("block_config entry", layers, minimum=1)
        if not isinstance(self.compression, (int, float)) or not 0.0 < self.compression <= 1.0:
            raise ValueError(f"compression must be in (0, 1], got {self.compression!r}")
        if not isinstance(self.drop_rate, (int, float)) or not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate!r}")
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {self.stem!r}")
        if not isinstance(self.memory_efficient, bool):
            raise ValueError(f"memory_efficient must be a bool, got {self.memory_efficient!r}")
        if isinstance(self.spatial_dims, bool) or self.spatial_dims not in SPATIAL_DIMS:
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {self.spatial_dims!r}")
        object.__setattr__(self, "compression", float(self.compression))
        object.__setattr__(self, "drop_rate", float(self.drop_rate))
        channels = self.num_init_features
        for index, layers in enumerate(self.block_config[:-1], start=1):
            channels += layers * self.growth_rate
            if self.transition_channels(channels) < 1:
                raise ValueError(f"compression {self.compression} leaves transition {index} with no channels")
            channels = self.transition_channels(channels)

    @property
    def bottleneck(self) -> bool:
        """Whether dense layers carry the 1×1 bottleneck conv (DenseNet-B)."""
        return self.bn_size > 0

    def transition_channels(self, channels: int) -> int:
        """Channels out of a transition: ``⌊θ·C⌋`` (the epsilon keeps e.g. ``0.29·100`` at 29, not 28)."""
        return math.floor(self.compression * channels + 1e-9)

    def feature_map_size(self, size: int) -> int:
        """Side of the last dense block's maps for an input of side ``size``.

        ``⌊(W − K + 2P)/S⌋ + 1`` [F9] through the stem (7×7/2 pad 3 conv and 3×3/2 pad 1 max-pool for the
        ImageNet stem; the CIFAR stem's 3×3 pad 1 conv keeps the size) and each transition's 2×2/2 pool.
        """
        # ⌊(W − K + 2P)/S⌋ + 1 for the stem's conv and max-pool, then for each transition's 2×2/2 pool   [F9]
        if self.stem == "imagenet":
            size = (size - 7 + 2 * 3) // 2 + 1
            size = (size - 3 + 2 * 1) // 2 + 1
        for _ in self.block_config[:-1]:
            size = (size - 2) // 2 + 1
        return size

    @property
    def min_input_size(self) -> int:
        """The smallest input side for which every feature map keeps at least one pixel."""
        size = 1
        while self.feature_map_size(size) < 1:
            size += 1
        return size

    @property
    def default_input_size(self) -> int:
        """The input side the architecture is designed for: 224 with the ImageNet stem (96 per axis for volumes,
        the side of MONAI's 3D DenseNet tutorials), 32 with the CIFAR stem."""
        if self.stem != "imagenet":
            return 32
        return 96 if self.spatial_dims == 3 else 224

    def check_input_size(self, size: int | tuple[int, ...], name: str = "this network", what: str = "input",
                         hint: str = "") -> None:
        """Raise ``ValueError`` when an input of ``size`` (a side, or one side per spatial axis) leaves some feature
        map without a pixel; the message names ``what`` and ``name`` and ends with ``hint``."""
        sides = (size,) if isinstance(size, int) else tuple(size)
        if min(sides) < self.min_input_size:
            shown = "×".join(str(side) for side in sides)
            raise ValueError(f"{what} {shown} is too small for {name}: {_AXES[self.spatial_dims]} must be at least "
                             f"{self.min_input_size}{hint}")

    def replace(self, **changes: Any) -> DenseNetConfig:
        """A copy with ``changes`` applied (validated like a new config)."""
        unknown = sorted(set(changes) - set(field_names()))
        if unknown:
            raise ValueError(f"unknown DenseNet config key(s): {', '.join(unknown)}; known: {', '.join(field_names())}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of the architecture."""
        data = {name: getattr(self, name) for name in field_names()}
        data["block_config"] = list(self.block_config)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DenseNetConfig:
        """Rebuild a config from :meth:`to_dict` output; unknown keys are an error, not ignored."""
        unknown = sorted(set(data) - set(field_names()))
        if unknown:
            raise ValueError(f"unknown DenseNet config key(s): {', '.join(unknown)}; known: {', '.join(field_names())}")
        return cls(**data)


def field_names() -> tuple[str, ...]:
    """The field names of :class:`DenseNetConfig`, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(DenseNetConfig))


def _require_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
