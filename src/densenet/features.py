"""A DenseNet as a backbone: its multi-scale feature maps, timm's ``features_only`` / ``forward_intermediates``.

The maps are taken where the resolution is about to drop, so each is the richest at its scale: after the stem's
first BN-ReLU (ImageNet stem; the CIFAR stem's conv output), after each dense block but the last (before its
transition), and after the final BN-ReLU. For densenet121 at 224×224: 64@112, 256@56, 512@28, 1024@14, 1024@7.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from densenet.config import DenseNetConfig
from densenet.meta import ModelMeta
from densenet.nn.dims import channels_last


@dataclass(frozen=True)
class FeatureTap:
    """One map a backbone returns: its channels, its stride relative to the input, and the module it follows."""

    num_chs: int
    reduction: int
    module: str

    def to_dict(self) -> dict[str, int | str]:
        """timm's ``feature_info`` entry: ``{"num_chs", "reduction", "module"}``."""
        return {"num_chs": self.num_chs, "reduction": self.reduction, "module": self.module}


def feature_taps(config: DenseNetConfig) -> list[FeatureTap]:
    """Every map a backbone of ``config`` can return, shallowest first (closed form, no module is built)."""
    imagenet = config.stem == "imagenet"
    taps = [FeatureTap(config.num_init_features, 2 if imagenet else 1, "features.relu0" if imagenet else
                       "features.conv0")]
    channels, reduction = config.num_init_features, 4 if imagenet else 1
    for index, layers in enumerate(config.block_config, start=1):
        channels += layers * config.growth_rate
        if index == len(config.block_config):
            taps.append(FeatureTap(channels, reduction, "features.norm5"))
        else:
            taps.append(FeatureTap(channels, reduction, f"features.denseblock{index}"))
            channels, reduction = config.transition_channels(channels), 2 * reduction
    return taps


def check_indices(config: DenseNetConfig, indices: Sequence[int] | int | None) -> list[int]:
    """Tap positions as a sorted list: ``None`` = all, an int ``n`` = the last ``n``, negatives count from the end.

    Raises:
        ValueError: an index outside the taps.
    """
    count = len(feature_taps(config))
    if indices is None:
        return list(range(count))
    if isinstance(indices, int):
        if not 1 <= indices <= count:
            raise ValueError(f"this network has {count} feature maps; cannot take the last {indices}")
        return list(range(count - indices, count))
    chosen = []
    for index in indices:
        if not -count <= index < count:
            raise ValueError(f"feature index {index} is out of range: this network has {count} maps (0–{count - 1})")
        chosen.append(index % count)
    return sorted(set(chosen))


def run_features(features: nn.Sequential, config: DenseNetConfig, x: Tensor,
                 indices: Sequence[int]) -> tuple[Tensor, list[Tensor]]:
    """Run ``features`` (a :class:`densenet.nn.layers.Features`) on ``x`` and collect the maps at ``indices``.

    The stem runs module by module here (the recomputing stem Function returns only the pooled map), the blocks
    and transitions as they always do. Returns the final BN-ReLU output ``(N, C, h, w)`` and the chosen maps.
    """
    if config.memory_efficient and config.spatial_dims > 1:  # the model's layout (densenet.model.input_layout)
        x = channels_last(x, config.spatial_dims)
    wanted = set(indices)
    maps: list[Tensor] = []
    tap = 0
    for name, module in features.named_children():
        x = module(x)
        if name == "norm5":
            x = F.relu(x)
        if name in ("relu0", "norm5") or (name == "conv0" and config.stem == "cifar") or (
                name.startswith("denseblock") and int(name[len("denseblock"):]) < len(config.block_config)):
            if tap in wanted:
                maps.append(x)  # (N, C_tap, H / reduction, W / reduction)
            tap += 1
    return x, maps


class DenseNetFeatures(nn.Module):
    """The feature maps of a DenseNet at the chosen taps (``create_model(name, features_only=True)``).

    Its parameters keep the model's names (``features.…``), so a DenseNet state dict without the classifier
    loads into it; ``feature_info`` describes each returned map; ``meta`` is the model's (its preprocessing).
    """

    def __init__(self, features: nn.Sequential, config: DenseNetConfig,
                 out_indices: Sequence[int] | int | None = None, meta: ModelMeta | None = None) -> None:
        super().__init__()
        self.features = features
        self.config = config
        self.meta = meta or ModelMeta()
        self.out_indices = check_indices(config, out_indices)
        taps = feature_taps(config)
        self.feature_info = [taps[index].to_dict() for index in self.out_indices]

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(N, in_chans, H, W)`` → one ``(N, num_chs, H/reduction, W/reduction)`` map per chosen tap."""
        self.config.check_input_size(tuple(x.shape[2:]))
        return run_features(self.features, self.config, x, self.out_indices)[1]
