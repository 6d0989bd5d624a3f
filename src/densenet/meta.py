"""What travels beside the weights without being architecture: the registered name, the class names and the input
preprocessing the weights expect.

torchvision keeps these in its weights' ``meta`` and ``transforms``, timm in ``pretrained_cfg``; here they are one
:class:`ModelMeta`, attached to a model as ``model.meta`` (the network itself never reads it), written into
``config.json`` by ``save_pretrained`` and read back by ``from_pretrained``. Prediction, evaluation and export take
class names and preprocessing from it. Plain data: this module imports neither torch nor torchvision.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from densenet.config import DenseNetConfig

MAX_IMAGE_SIDE = 8192  # largest resize/crop a Preprocessing accepts (a 3×8192² float32 input is 805 MB)
# torchvision's ImageNet mean and standard deviation, the default normalisation
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SINGLE_LABEL, MULTI_LABEL = "single_label", "multi_label"
TASKS = (SINGLE_LABEL, MULTI_LABEL)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input at evaluation time; saved with the weights.

    Attributes:
        image_mode: PIL mode the image is converted to: ``"L"`` (1 channel) or ``"RGB"`` (3 channels).
        resize: the shorter side is resized to this many pixels …
        crop: … then the centre ``crop × crop`` is taken.
        mean: per-channel mean subtracted after scaling pixels to [0, 1].
        std: per-channel standard deviation divided by.
    """

    image_mode: str
    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.image_mode not in ("L", "RGB"):
            raise ValueError(f"image_mode must be 'L' or 'RGB', got {self.image_mode!r}")
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IMAGE_SIDE:
                raise ValueError(f"{name} must be an integer in [1, {MAX_IMAGE_SIDE}], got {value!r}")
        if self.crop > self.resize:
            raise ValueError(f"crop {self.crop} is larger than resize {self.resize}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values for image mode {self.image_mode}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (*self.mean, *self.std)):
            raise ValueError(f"mean and std must be lists of numbers, got {list(self.mean)} and {list(self.std)}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not all(math.isfinite(v) for v in self.mean) or not all(math.isfinite(v) and v > 0 for v in self.std):
            raise ValueError(f"mean must be finite and std finite and > 0, got {self.mean} and {self.std}")

    @property
    def channels(self) -> int:
        """Channels of the network input."""
        return 1 if self.image_mode == "L" else 3

    @property
    def spatial_dims(self) -> int:
        """Spatial axes of the input: 2 (height, width)."""
        return 2

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {"image_mode": self.image_mode, "resize": self.resize, "crop": self.crop, "mean": list(self.mean),
                "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: Any) -> Preprocessing:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            ValueError: ``data`` is not such a mapping (a key missing, a value of the wrong type or range).
        """
        try:
            mean, std = data["mean"], data["std"]
            if not isinstance(mean, (list, tuple)) or not isinstance(std, (list, tuple)):
                raise TypeError("mean and std must be lists")
            return cls(data["image_mode"], data["resize"], data["crop"], tuple(mean), tuple(std))
        except (KeyError, TypeError) as error:
            raise ValueError(f"preprocessing must map image_mode, resize, crop, mean and std, got {data!r}") from error

    def for_channels(self, channels: int) -> Preprocessing:
        """The same preprocessing for a network of ``channels`` inputs: RGB read as gray (``"L"``) with the mean and
        std averaged over RGB for 1 channel; itself when the channels already agree.

        Raises:
            ValueError: no image mode has ``channels`` channels.
        """
        if channels == self.channels:
            return self
        if channels == 1:
            return Preprocessing("L", self.resize, self.crop, (sum(self.mean) / 3,), (sum(self.std) / 3,))
        if channels == 3:
            return Preprocessing("RGB", self.resize, self.crop, self.mean * 3, self.std * 3)
        raise ValueError(f"cannot read images for a network with {channels} input channels")

    @classmethod
    def standard(cls, config: DenseNetConfig) -> Preprocessing:
        """The preprocessing an architecture is designed for, when the weights carry none: its default input size
        (CIFAR stem: 32, no resize; ImageNet stem: resize 256, centre crop 224) and ImageNet's mean and std
        (averaged over RGB for one channel).

        Raises:
            ValueError: the network takes neither 1 nor 3 channels, so it cannot read images.
        """
        crop = config.default_input_size
        resize = round(crop * 256 / 224) if config.stem == "imagenet" else crop
        return cls("RGB", resize, crop, *IMAGENET_STATS).for_channels(config.in_chans)


INPUT_KINDS = ("volume", "signal")
ARRAY_SPATIAL_DIMS = {"volume": 3, "signal": 1}


@dataclass(frozen=True)
class ArrayPreprocessing:
    """How a volume or a signal becomes the network's input; saved with the weights like :class:`Preprocessing`.

    Each sample is resampled to ``size`` along every spatial axis (a volume to ``size³``, a signal to ``size``
    steps), then every channel is standardised on its own: ``x ← (x − mean(x)) / std(x)`` over that sample's
    channel, std without Bessel's correction (per-sample z-score, as MONAI's
    ``NormalizeIntensity(channel_wise=True)``), so no data-set statistics are needed.

    Attributes:
        kind: ``"volume"`` (``(C, D, H, W)`` inputs) or ``"signal"`` (``(C, L)`` inputs).
        channels: channels of the network input.
        size: samples per spatial axis after resampling.
    """

    kind: str
    channels: int
    size: int

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise ValueError(f"input kind must be one of {', '.join(INPUT_KINDS)}, got {self.kind!r}")
        for name, top in (("channels", 4096), ("size", MAX_IMAGE_SIDE)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise ValueError(f"{name} must be an integer in [1, {top}], got {value!r}")

    @property
    def crop(self) -> int:
        """The side of the network input along each spatial axis (:class:`Preprocessing`'s name for it)."""
        return self.size

    @property
    def spatial_dims(self) -> int:
        """Spatial axes of the input: 3 for volumes, 1 for signals."""
        return ARRAY_SPATIAL_DIMS[self.kind]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``kind`` tells it from an image :class:`Preprocessing`)."""
        return {"kind": self.kind, "channels": self.channels, "size": self.size}

    @classmethod
    def from_dict(cls, data: Any) -> ArrayPreprocessing:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            ValueError: ``data`` is not such a mapping.
        """
        try:
            return cls(data["kind"], data["channels"], data["size"])
        except (KeyError, TypeError) as error:
            raise ValueError(f"volume/signal preprocessing must map kind, channels and size, got {data!r}") from error


def preprocessing_from_dict(data: Any) -> Preprocessing | ArrayPreprocessing:
    """An image :class:`Preprocessing` or, when ``data`` names a ``kind``, an :class:`ArrayPreprocessing`."""
    if isinstance(data, dict) and "kind" in data:
        return ArrayPreprocessing.from_dict(data)
    return Preprocessing.from_dict(data)


@dataclass(frozen=True)
class ModelMeta:
    """Everything saved beside the weights that is not architecture.

    Attributes:
        name: the registered architecture (``densenet121``); ``None`` for a custom one, e.g. other block sizes.
        class_names: names of the classifier's outputs, in order; ``None`` when unknown.
        preprocessing: how an image becomes the input the weights expect; ``None`` when unknown (then
            :meth:`Preprocessing.standard` of the architecture applies).
        task: ``"single_label"`` (one softmax over the classes) or ``"multi_label"`` (one sigmoid per label; the
            class names are the label names).
        thresholds: multi-label only: each label's decision threshold on its probability (positive iff
            ``p >= threshold``), chosen on the validation split; ``None`` when not chosen (then 0.5).
    """

    name: str | None = None
    class_names: tuple[str, ...] | None = None
    preprocessing: Preprocessing | ArrayPreprocessing | None = None
    task: str = SINGLE_LABEL
    thresholds: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.name is not None and not isinstance(self.name, str):
            raise ValueError(f"model name must be a string, got {self.name!r}")
        if self.class_names is not None:
            if isinstance(self.class_names, str) or not isinstance(self.class_names, (list, tuple)):
                raise ValueError(f"class names must be a list of names, got {self.class_names!r}")
            object.__setattr__(self, "class_names", tuple(str(name) for name in self.class_names))
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.thresholds is not None:
            if self.task != MULTI_LABEL or not isinstance(self.thresholds, (list, tuple)):
                raise ValueError(f"thresholds are a list of numbers for a multi-label model, got {self.thresholds!r}")
            if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1
                       for t in self.thresholds):
                raise ValueError(f"thresholds are probabilities in [0, 1], got {list(self.thresholds)}")
            object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))

    def check(self, config: DenseNetConfig) -> ModelMeta:
        """Return ``self`` after checking that it fits ``config`` (one name per class).

        Raises:
            ValueError: the number of class names differs from ``num_classes``.
        """
        if self.class_names is not None and len(self.class_names) != config.num_classes:
            raise ValueError(f"got {len(self.class_names)} class names for {config.num_classes} classes")
        if self.thresholds is not None and len(self.thresholds) != config.num_classes:
            raise ValueError(f"got {len(self.thresholds)} thresholds for {config.num_classes} labels")
        return self

    def replace(self, **changes: Any) -> ModelMeta:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def input_preprocessing(self, config: DenseNetConfig) -> Preprocessing | ArrayPreprocessing:
        """The saved preprocessing, else the standard one of ``config``'s architecture (a 3D network reads
        volumes, a 1D one signals, at its default input size)."""
        if self.preprocessing is not None:
            return self.preprocessing
        dims = config.spatial_dims
        if dims != 2:
            kind = next(kind for kind, kind_dims in ARRAY_SPATIAL_DIMS.items() if kind_dims == dims)
            return ArrayPreprocessing(kind, config.in_chans, config.default_input_size)
        return Preprocessing.standard(config)

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` entries: ``model_name``, ``class_names``, ``preprocessing``, ``task``, ``thresholds``."""
        return {"model_name": self.name, "class_names": list(self.class_names) if self.class_names else None,
                "preprocessing": self.preprocessing.to_dict() if self.preprocessing else None,
                "task": self.task, "thresholds": list(self.thresholds) if self.thresholds is not None else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        """Read what :meth:`to_dict` wrote (missing entries are unknown).

        Raises:
            ValueError: an entry of the wrong type or range.
        """
        preprocessing = data.get("preprocessing")
        return cls(data.get("model_name"), data.get("class_names"),
                   None if preprocessing is None else preprocessing_from_dict(preprocessing),
                   data.get("task") or SINGLE_LABEL, data.get("thresholds"))
