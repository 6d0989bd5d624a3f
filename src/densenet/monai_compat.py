"""MONAI's DenseNet checkpoints: their keys in this library's (= torchvision's) names, and the config they fit.

MONAI's ``monai.networks.nets.DenseNet`` (``DenseNet121/169/201/264``, ``spatial_dims`` 1, 2 or 3; read here from
MONAI 1.6.1's ``networks/nets/densenet.py``) is torchvision's network under two other names:

- each dense layer nests its modules in a ``Sequential`` called ``layers``:
  ``features.denseblock1.denselayer1.layers.norm1.weight`` is torchvision's ``…denselayer1.norm1.weight``;
- the head is ``class_layers`` (ReLU, adaptive average pool, flatten, ``out``): ``class_layers.out.weight`` and
  ``.bias`` are torchvision's ``classifier.weight`` and ``.bias``.

Everything else is the same layer for layer: the stem (7×7/2 pad 3 conv without bias, BN, ReLU, 3×3/2 pad 1
max-pool — MONAI keeps the max-pool in every dimension), the bottleneck layers (BN-ReLU-Conv1×1 to ``bn_size·k``,
BN-ReLU-Conv3×3 pad 1 to ``k``), the transitions (BN-ReLU-Conv1×1 to ``⌊C/2⌋``, 2×2/2 average pool), the final
``norm5``, then ReLU, global average pool and a linear layer with bias; batch norms with ``eps = 1e-5`` and
momentum 0.1. Two differences do not show in the weights:

- MONAI's ``dropout_prob`` drops whole channels in 2-D and 3-D (``nn.Dropout2d``/``Dropout3d``); ours drops single
  values, as torchvision does [F6]. Evaluation is the same; a training run with dropout draws other masks.
- Our transitions pool before their 1×1 conv (both are linear, so the function is the same up to rounding, with
  a quarter of the MACs in 2-D); MONAI convolves first.

MONAI's ``act=`` and ``norm=`` arguments can swap the ReLU and the batch norm for other layers (instance norm,
PReLU …); such checkpoints compute another function, and only the default ``("relu", "batch")`` ones are read
here (other norms have other keys, which ``load_weights`` rejects by name). This module does not import MONAI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from densenet.config import DenseNetConfig

# features.denseblockB.denselayerL.layers.<module>  →  features.denseblockB.denselayerL.<module>
_LAYERS = re.compile(r"(denselayer\d+)\.layers\.")
_HEAD = "class_layers.out."
_DENSE_LAYER = re.compile(r"^features\.denseblock(\d+)\.denselayer(\d+)\.conv1\.weight$")


def rename_monai_key(key: str) -> str:
    """A MONAI DenseNet key in torchvision's names; any other key unchanged.

    ``features.denseblock2.denselayer7.layers.conv2.weight`` → ``features.denseblock2.denselayer7.conv2.weight``;
    ``class_layers.out.bias`` → ``classifier.bias``.
    """
    if key.startswith(_HEAD):
        return "classifier." + key[len(_HEAD):]
    return _LAYERS.sub(r"\1.", key)


def config_from_state_dict(state: Mapping[str, Tensor]) -> DenseNetConfig:
    """The :class:`DenseNetConfig` a MONAI or torchvision DenseNet state dict fits (ImageNet stem, bottleneck
    layers, compression ½ — the only kind MONAI builds), read off the tensors' shapes.

    ``in_chans`` and ``num_init_features`` come from ``features.conv0.weight`` ``(C_0, C_in, 7, …)``, the growth rate
    ``k`` and ``bn_size`` from the first layer's ``conv2`` ``(k, bn_size·k, 3, …)``, the blocks from the dense-layer
    indices, ``num_classes`` from the classifier (0 when there is none), ``spatial_dims`` from the number of
    ``conv0``'s kernel axes.

    Raises:
        ValueError: the state dict is not a DenseNet's with an ImageNet stem and bottleneck layers.
    """
    state = {rename_monai_key(key): value for key, value in state.items()}
    stem = state.get("features.conv0.weight")
    first = state.get("features.denseblock1.denselayer1.conv2.weight")
    if stem is None or first is None or stem.dim() < 3:
        raise ValueError("not a DenseNet state dict with an ImageNet stem and bottleneck layers: no "
                         "features.conv0.weight or features.denseblock1.denselayer1(.layers).conv2.weight")
    layers: dict[int, int] = {}
    for key in state:
        match = _DENSE_LAYER.match(key)
        if match:
            block, layer = int(match.group(1)), int(match.group(2))
            layers[block] = max(layers.get(block, 0), layer)
    growth_rate, bottleneck_width = first.shape[0], first.shape[1]
    head = state.get("classifier.weight")
    fields = {
        "growth_rate": growth_rate, "block_config": tuple(layers[block] for block in sorted(layers)),
        "num_init_features": stem.shape[0], "bn_size": bottleneck_width // growth_rate, "compression": 0.5,
        "num_classes": 0 if head is None else head.shape[0], "in_chans": stem.shape[1], "stem": "imagenet",
        "spatial_dims": stem.dim() - 2,
    }
    return DenseNetConfig(**fields)
