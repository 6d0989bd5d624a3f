"""The pretrained-weights registry, beside the architecture registry: which files exist for which names.

Each entry is a :class:`PretrainedWeights`, in the spirit of torchvision's ``DenseNet121_Weights`` and timm's
``pretrained_cfg``: where the file is (its published URL, whose file name carries a SHA-256 prefix), what it
holds (parameter count, file size), how well it does (top-1 / top-5 on ImageNet-1k's validation set) and what it
expects (the evaluation preprocessing and the category names). The numbers are torchvision's published ones for
the same files; ``tests/test_pretrained.py`` recomputes the parameter counts from the architectures.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from functools import cache

from torch import Tensor

from densenet.hub import cached_file
from densenet.inflate import RULES, inflate_state_dict
from densenet.meta import IMAGENET_STATS, Preprocessing
from densenet.model import DenseNet
from densenet.weights import WeightsError, convert_state_dict, load_weights, read_state_dict

logger = logging.getLogger("densenet")

TORCHVISION_MODELS_URL = "https://download.pytorch.org/models"
# torchvision's ImageNet evaluation: resize the shorter side to 256, centre-crop 224, ImageNet mean/std
IMAGENET_EVAL = Preprocessing("RGB", 256, 224, *IMAGENET_STATS)


@dataclass(frozen=True)
class PretrainedWeights:
    """One published weights file for a registered architecture.

    Attributes:
        architecture: the registered model name the weights fit.
        tag: the weights' name among the architecture's (``imagenet1k``); ``architecture.tag`` names them whole.
        url: where the file is published; its file name ends in ``-<sha256 prefix>.pth``.
        num_params: parameters of the architecture with its 1000-class head.
        file_size_mb: the file's size in MB (10⁶ bytes), as published.
        metrics: ``{"acc@1": …, "acc@5": …}`` in percent on ImageNet-1k's 50,000 validation images.
        preprocessing: the evaluation transform the metrics were measured with.
        categories: which category list the 1000 outputs follow (``imagenet1k``).
        source: who trained or published the weights.
    """

    architecture: str
    tag: str
    url: str
    num_params: int
    file_size_mb: float
    metrics: dict[str, float] = field(default_factory=dict)
    preprocessing: Preprocessing = IMAGENET_EVAL
    categories: str = "imagenet1k"
    source: str = "torchvision, ported from LuaTorch"

    @property
    def name(self) -> str:
        """``architecture.tag``, e.g. ``densenet121.imagenet1k``."""
        return f"{self.architecture}.{self.tag}"

    def class_names(self) -> tuple[str, ...]:
        """The names of the weights' outputs, in order."""
        return category_names(self.categories)


def _torchvision(architecture: str, file: str, num_params: int, size_mb: float, top1: float,
                 top5: float) -> PretrainedWeights:
    return PretrainedWeights(architecture, "imagenet1k", f"{TORCHVISION_MODELS_URL}/{file}", num_params, size_mb,
                             {"acc@1": top1, "acc@5": top5})


_WEIGHTS: dict[str, PretrainedWeights] = {
    weights.name: weights for weights in (
        _torchvision("densenet121", "densenet121-a639ec97.pth", 7_978_856, 30.845, 74.434, 91.972),
        _torchvision("densenet161", "densenet161-8d451a50.pth", 28_681_000, 110.369, 77.138, 93.560),
        _torchvision("densenet169", "densenet169-b2777c0a.pth", 14_149_480, 54.708, 75.600, 92.806),
        _torchvision("densenet201", "densenet201-c1103571.pth", 20_013_928, 77.373, 76.896, 93.370),
    )
}


def list_pretrained(architecture: str | None = None) -> list[PretrainedWeights]:
    """Every registered weights entry (of ``architecture`` only, if given), sorted by name."""
    return [_WEIGHTS[key] for key in sorted(_WEIGHTS) if architecture in (None, _WEIGHTS[key].architecture)]


def get_weights(architecture: str, tag: str | None = None) -> PretrainedWeights:
    """The weights ``tag`` of ``architecture`` (default: its first tag).

    Raises:
        ValueError: no weights for ``architecture``, or no such tag; the message lists the available ones.
    """
    available = list_pretrained(architecture)
    if not available:
        known = ", ".join(sorted({weights.architecture for weights in _WEIGHTS.values()}))
        raise ValueError(f"no pretrained weights for {architecture!r}; models with weights: {known}")
    if tag is None:
        return available[0]
    tag = tag.removeprefix(f"{architecture}.")
    for weights in available:
        if weights.tag == tag:
            return weights
    close = difflib.get_close_matches(tag, [weights.tag for weights in available], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown weights {tag!r} for {architecture}{hint}; available: "
                     f"{', '.join(weights.tag for weights in available)}")


@cache
def category_names(categories: str) -> tuple[str, ...]:
    """The names of a category list: ``imagenet1k``'s 1000 come from torchvision's weights metadata (torchvision
    is a dependency; imported here, on first use, so that ``import densenet`` does not load it)."""
    if categories != "imagenet1k":
        raise ValueError(f"unknown category list {categories!r}")
    from torchvision.models import DenseNet121_Weights

    return tuple(DenseNet121_Weights.IMAGENET1K_V1.meta["categories"])


def adapt_input_channels(weight: Tensor, in_chans: int) -> Tensor:
    """A 3-channel (RGB) first-conv weight ``(C_out, 3, K, K)`` made to read ``in_chans`` channels.

    One channel: the sum over RGB (a gray image ``g`` fed as ``(g, g, g)`` gives the same output). ``N`` channels:
    the RGB kernels repeated over the channels and scaled by ``3/N``, so that an input whose channels all carry
    the same image keeps the magnitude of the 3-channel response (timm's rule).
    """
    if weight.shape[1] != 3:
        raise ValueError(f"can only adapt a 3-channel first convolution, this one reads {weight.shape[1]}")
    if in_chans == 3:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)  # (C_out, 1, K, K)
    repeats = -(-in_chans // 3)
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (3 / in_chans)  # (C_out, in_chans, K, K)


def load_pretrained(model: DenseNet, weights: PretrainedWeights, progress: bool = True) -> DenseNet:
    """Load ``weights`` (downloaded into torch.hub's cache if need be) into ``model``, adapting what differs
    (:func:`load_start`); ``model.meta`` gets the weights' class names (when the head is theirs) and their
    preprocessing, for ``model``'s input channels (images only: a 1-D or 3-D model keeps its standard one).

    Raises:
        DownloadError: the file cannot be fetched (the message says where to place it by hand).
        WeightsError: the cached file is not readable (the message names it), or the weights do not fit the
            architecture.
    """
    path = cached_file(weights.url, progress=progress)
    try:
        state = read_state_dict(path)
    except WeightsError as error:
        raise WeightsError(f"the cached weights file {path} is corrupt or truncated ({error}); delete it and "
                           "try again to download it anew") from error
    own_head = load_start(model, state, weights.name)
    in_chans = model.config.in_chans
    model.meta = model.meta.replace(
        class_names=weights.class_names() if own_head else model.meta.class_names,
        # an image transform (resize, crop) describes no signal or volume: those keep their standard one
        preprocessing=weights.preprocessing.for_channels(in_chans)
        if in_chans in (1, 3) and model.config.spatial_dims == 2 else None)
    return model


def load_start(model: DenseNet, state: dict[str, Tensor], source: str) -> bool:
    """Load a state dict that is to be a starting point into ``model``, adapting what differs, each adaptation
    logged in one line: the first convolution to ``model``'s input channels (:func:`adapt_input_channels`), 2-D
    kernels inflated for a 1-D or 3-D model (:mod:`densenet.inflate`), and a classifier of another shape left at
    ``model``'s fresh initialisation. Returns whether the head was loaded.

    Raises:
        WeightsError: anything else does not fit (the message names the first mismatched keys).
    """
    state = convert_state_dict(state)
    expected = model.state_dict()
    stem = state.get("features.conv0.weight")
    if stem is not None and stem.shape[1] != model.config.in_chans and stem.shape[1] == 3:
        state["features.conv0.weight"] = adapt_input_channels(stem, model.config.in_chans)
        logger.info("%s: first convolution adapted from 3 to %d input channel(s)", source, model.config.in_chans)
    state, inflated = inflate_state_dict(state, expected)
    if inflated:
        dims = expected["features.conv0.weight"].dim() - 2
        logger.info("%s: %d 2-D convolution kernels inflated to %d-D (%s)", source, inflated, dims, RULES[dims])
    head = [key for key in expected if key.startswith("classifier.")]
    own_head = bool(head) and all(key in state and state[key].shape == expected[key].shape for key in head)
    if not own_head:
        theirs = state.get("classifier.weight")
        if theirs is None:
            reason = "no classifier taken from it"
        elif theirs.shape[0] != model.config.num_classes:
            reason = f"{model.config.num_classes} classes instead of {theirs.shape[0]}"
        else:
            reason = f"its classifier reads {theirs.shape[1]} features, this model's {model.num_features}"
        state = {key: value for key, value in state.items() if not key.startswith("classifier.")}
        state.update({key: expected[key] for key in head})
        logger.info("%s: %s, so a fresh classifier; left at initialisation: %s", source, reason,
                    ", ".join(head) or "nothing (no head)")
    load_weights(model, state, name=source)
    return own_head
