"""Class activation maps of a DenseNet, computed by pytorch-grad-cam at the network's final feature map.

Where the map is taken. A DenseNet's classifier sees the final BN-ReLU's output ``A`` (``(N, C, h, w)``) through
global average pooling [F4] and the linear layer [F5]: ``y_c = Σ_k W_ck · (1/hw) Σ_ij A_kij + b_c``. Grad-CAM
(Selvaraju et al.) weights each map ``A_k`` by ``α_k = (1/hw) Σ_ij ∂y_c/∂A_kij`` and keeps
``ReLU(Σ_k α_k A_k)``. No module of ours outputs ``A``: the final ReLU is functional and in place, so hooking
``features.norm5`` (what torchvision users pass to pytorch-grad-cam) records the gradient before that ReLU, masked
by it — the failure mode of pytorch-grad-cam #147/#26 in a milder form. :class:`CamModel` therefore runs the
features without autograd (any form: the explicit memory-efficient Functions, the plain path, or
:class:`~densenet.deploy.optimize.OptimizedDenseNet`, whose forward is ``no_grad``), exposes ``A`` as the output
of an ``nn.Identity`` (``final_maps``) that requires grad, and computes [F4] + [F5] on it. Gradients then flow
through the head alone — exactly ``∂y_c/∂A`` — and never through the explicit Functions or any in-place ReLU.
Methods that need gradients below ``A`` (guided backprop, integrated gradients) are not offered.

One map per (image, class) pair: a single-label model explains the predicted (or requested) class; a multi-label
model (``model.meta.task``, when the weights carry it) explains each requested label, by default every label
predicted present. Maps have the input's spatial dimensions (2-D or 3-D: pytorch-grad-cam handles both).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densenet.meta import MULTI_LABEL, SINGLE_LABEL
from densenet.model import check_input

METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam", "scorecam")
"""The CAM methods offered (all from pytorch-grad-cam, all computed at the final feature map)."""

Target = int | str
Targets = Target | Sequence[Target | Sequence[Target]] | None


@dataclass
class Explanation:
    """One heatmap: which image, which class, how probable, and the map.

    Attributes:
        index: the image's position in the input.
        class_index: the class explained.
        class_name: its name (the index as text when the weights carry no names).
        probability: softmax probability [F7] (sigmoid for a multi-label model).
        heatmap: ``float32`` in [0, 1], the input's spatial shape (the file's, for image files).
        image: what the map is drawn on: ``float32`` RGB ``(H, W, 3)`` in [0, 1] (volumes: ``(D, H, W)``).
        path: the image file, when read from one.
        files: files written for it (filled in by :func:`densenet.explain.write.write_explanations`).
    """

    index: int
    class_index: int
    class_name: str
    probability: float
    heatmap: np.ndarray
    image: np.ndarray
    path: Path | None = None
    files: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record (no arrays)."""
        return {"path": None if self.path is None else str(self.path), "class": self.class_name,
                "class_index": self.class_index, "probability": self.probability,
                "files": [str(path) for path in self.files]}


class CamModel(nn.Module):
    """``model``'s logits with its final feature map exposed as :attr:`final_maps` (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(getattr(model, "classifier", None), nn.Linear):
            raise ValueError("this model has no classifier (num_classes 0): there is no class to explain")
        self.model = model
        self.final_maps = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_chans, *spatial)`` → logits ``(N, num_classes)``, with autograd from ``final_maps`` on."""
        if hasattr(self.model, "check_input"):  # DenseNet's own (N-D once volumes land)
            self.model.check_input(x)
        else:  # OptimizedDenseNet
            check_input(self.model.config, x)
        with torch.no_grad():
            maps = self.model.forward_features(x)  # (N, C, *spatial'), after the final BN-ReLU
        maps = self.final_maps(maps.detach().float().requires_grad_())
        classifier: nn.Linear = self.model.classifier
        # O_k = (1/hw) Σ_ij A_kij   [F4], then O = Wx + b   [F5]; the weights detached: no .grad left on the model
        pooled = maps.flatten(2).mean(dim=2)  # (N, C)
        bias = None if classifier.bias is None else classifier.bias.detach().float()
        return F.linear(pooled, classifier.weight.detach().float(), bias)  # (N, num_classes)


def is_multi_label(model: nn.Module) -> bool:
    """Whether the weights say the model is multi-label (``meta.task``: a sigmoid per label) rather than single-label
    (softmax)."""
    return getattr(getattr(model, "meta", None), "task", SINGLE_LABEL) == MULTI_LABEL


def label_thresholds(model: nn.Module, width: int) -> Tensor:
    """A multi-label model's saved per-label decision thresholds (0.5 for weights without them): ``(L,)``."""
    saved = getattr(getattr(model, "meta", None), "thresholds", None)
    return torch.tensor(saved if saved is not None else [0.5] * width)


def class_names_of(model: nn.Module) -> list[str]:
    """The weights' class names, or the indices as text."""
    names = getattr(getattr(model, "meta", None), "class_names", None)
    return list(names) if names else [str(i) for i in range(model.config.num_classes)]


def probabilities(model: nn.Module, logits: Tensor) -> Tensor:
    """Softmax over classes [F7], or a sigmoid per class for a multi-label model: ``(N, K)`` → ``(N, K)``."""
    return torch.sigmoid(logits) if is_multi_label(model) else F.softmax(logits, dim=1)


def class_index(names: Sequence[str], target: Target) -> int:
    """The index of ``target`` (a class name, or an index).

    Raises:
        ValueError: no such class; the message lists the known ones.
    """
    if isinstance(target, str) and target in names:
        return names.index(target)
    if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(names):
        return target
    shown = ", ".join(names[:20]) + (", …" if len(names) > 20 else "")
    raise ValueError(f"unknown class {target!r}: the weights know {shown}")


def resolve_targets(model: nn.Module, probs: Tensor, targets: Targets) -> list[tuple[int, int]]:
    """The ``(image index, class index)`` pairs to explain.

    ``targets``: ``None`` (single-label: the predicted class; multi-label: every label at or above its saved
    threshold, 0.5 without one, or the most probable when none is), one class for every image, or one entry per
    image (a class, or for a multi-label model a list of classes).
    """
    names = class_names_of(model)
    count = probs.shape[0]
    if targets is None:
        if not is_multi_label(model):
            return [(i, int(c)) for i, c in enumerate(probs.argmax(dim=1).tolist())]
        pairs, thresholds = [], label_thresholds(model, probs.shape[1])
        for i, row in enumerate(probs):
            present = (row >= thresholds).nonzero().flatten().tolist() or [int(row.argmax())]
            pairs += [(i, c) for c in present]
        return pairs
    if isinstance(targets, (int, str)):
        return [(i, class_index(names, targets)) for i in range(count)]
    if len(targets) != count:
        raise ValueError(f"got {len(targets)} targets for {count} images: give one per image, or one for all")
    pairs = []
    for i, entry in enumerate(targets):
        if isinstance(entry, (int, str)):
            pairs.append((i, class_index(names, entry)))
        elif is_multi_label(model):
            pairs += [(i, class_index(names, one)) for one in entry]
        else:
            raise ValueError(f"a single-label model explains one class per image, got {list(entry)!r}")
    return pairs


def cam_class(method: str) -> type:
    """pytorch-grad-cam's class for ``method`` (one of :data:`METHODS`).

    Raises:
        ValueError: unknown method.
    """
    import pytorch_grad_cam as cams

    classes = {"gradcam": cams.GradCAM, "gradcam++": cams.GradCAMPlusPlus, "xgradcam": cams.XGradCAM,
               "layercam": cams.LayerCAM, "hirescam": cams.HiResCAM, "eigencam": cams.EigenCAM,
               "scorecam": cams.ScoreCAM}
    if method not in classes:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    return classes[method]


def compute_maps(model: nn.Module, inputs: Tensor, pairs: Sequence[tuple[int, int]], method: str = "gradcam",
                 batch_size: int = 32) -> np.ndarray:
    """One map per ``(image index, class index)`` pair, at the input's spatial size, each scaled to [0, 1].

    Args:
        model: a :class:`~densenet.model.DenseNet` (any form) or an optimized one.
        inputs: preprocessed ``(N, in_chans, *spatial)``.
        pairs: which image, which class.

    Returns:
        ``float32 (len(pairs), *spatial)``.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_model = CamModel(model)
    was_training = model.training
    device = next(model.parameters()).device
    maps = []
    try:
        with cam_class(method)(model=cam_model, target_layers=[cam_model.final_maps]) as cam:
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start:start + batch_size]
                rows = inputs[[i for i, _ in chunk]].to(device)  # (B, in_chans, *spatial)
                maps.append(cam(input_tensor=rows, targets=[ClassifierOutputTarget(c) for _, c in chunk]))
    finally:
        model.train(was_training)
    spatial = tuple(inputs.shape[2:])
    return np.concatenate(maps).clip(0, 1) if maps else np.zeros((0, *spatial), np.float32)
