"""A training recipe as data: :class:`TrainConfig`, read from and written to YAML, validated on construction.

Every field is also a ``densenet train`` flag (``batch_size`` → ``--batch-size``); a YAML file given with
``--config`` sets fields and flags override it. A key that is not a field is an error, never ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from densenet.data.csv_table import CSV_KINDS
from densenet.data.datasets import DATASETS, DataSpec
from densenet.data.transforms import AUGMENTATIONS
from densenet.fileio import write_text

SCHEDULES = ("step", "cosine")
OPTIMIZERS = ("sgd", "adamw")
# The defaults of lr and weight_decay for each optimiser: the paper's SGD, and AdamW's usual fine-tuning values
OPTIMIZER_DEFAULTS = {"sgd": {"lr": 0.1, "weight_decay": 1e-4}, "adamw": {"lr": 1e-3, "weight_decay": 0.05}}
AMP_MODES = ("off", "bf16", "fp16", "auto")
POS_WEIGHTS = ("none", "auto")


def _field(default: Any, help: str, **kwargs: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainConfig:
    """Everything a training run needs; see each field's ``help`` (also ``densenet train --help``)."""

    # data
    dataset: str = _field("digits", "data set", choices=DATASETS)
    data_dir: str | None = _field(None, "root of cifar10/cifar100 batches, of a folder with train/ and val/ or test/, "
                                        "or of a csv data set (train.csv and val.csv or test.csv)")
    download: bool = _field(False, "let torchvision download cifar10/cifar100 into --data-dir")
    image_size: int | None = _field(None, "network input side (default: 8 digits, 32 CIFAR and synthetic; folder and "
                                          "csv: the median shorter side of 64 of its images, at most 224, at least "
                                          "the model's smallest input; 32 per axis volumes, 256 signals)")
    augment: str = _field("auto", "training augmentation (auto: by data set)", choices=AUGMENTATIONS)
    cache: bool = _field(False, "folder or csv of images: decode every image once into memory (small images)")
    val_fraction: float | None = _field(None, "folder, volumes or signals with train/ only (csv: train.csv only): "
                                              "hold out this fraction of it (stratified by class; multi-label rows at "
                                              "random; by --seed) as the validation split")
    csv_kind: str = _field("auto", "csv: what the table's paths are (auto: images, or volumes when they are NIfTI; a "
                                   "table of .npy files says volume or signal)", choices=CSV_KINDS)
    train_limit: int | None = _field(None, "use at most N training images (fixed random subset; synthetic: N images)")
    eval_limit: int | None = _field(None, "use at most N evaluation images")
    workers: int | None = _field(None, "loader worker processes for image files (default: half the CPUs, at most 8)")
    # model
    model: str = _field("densenet_bc100_k12", "registered model name (densenet list)")
    model_args: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "config overrides, e.g. {growth_rate: 12, block_config: [6, 6, 6]}"})
    sync_bn: bool = _field(False, "torchrun on CUDA: synchronise batch-norm statistics across processes")
    pretrained: bool = _field(False, "start from --model's pretrained weights (densenet list --pretrained), with "
                                     "their normalisation")
    init_from: str | None = _field(None, "start from these weights: a .pth, a .safetensors or a save_pretrained "
                                         "directory such as a run's best/ (another head is replaced)")
    freeze_epochs: int = _field(0, "train the classifier alone for this many epochs, then everything")
    backbone_lr_factor: float = _field(1.0, "learning rate of everything but the classifier, as a fraction of lr")
    # optimisation
    epochs: int = _field(10, "epochs to train")
    batch_size: int = _field(64, "images per optimiser step, over all processes and accumulation steps")
    optimizer: str = _field("sgd", "sgd (with --momentum, --nesterov) or adamw (decoupled weight decay)",
                            choices=OPTIMIZERS)
    lr: float | None = _field(None, "peak learning rate (default: 0.1 sgd, 0.001 adamw)")
    momentum: float = _field(0.9, "SGD momentum")
    nesterov: bool = _field(True, "Nesterov momentum")
    weight_decay: float | None = _field(None, "weight decay of every parameter (default: 1e-4 sgd, L2; 0.05 adamw, "
                                              "decoupled)")
    schedule: str = _field("step", "step: ×gamma at each milestone; cosine: cosine decay to 0", choices=SCHEDULES)
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75], metadata={
        "help": "step schedule: fractions of training where lr is multiplied by gamma"})
    gamma: float = _field(0.1, "step schedule: factor at each milestone")
    warmup_epochs: float = _field(0.0, "linear warm-up from 0 to lr over this many epochs")
    label_smoothing: float = _field(0.0, "label smoothing of the cross-entropy")
    pos_weight: str = _field("none", "multi-label (CSV label columns): positive weight of each label's BCE; auto: "
                                     "negatives/positives of the training labels", choices=POS_WEIGHTS)
    accumulate: int = _field(1, "micro-batches per optimiser step (gradient accumulation)")
    early_stop: int | None = _field(None, "stop after this many epochs without a better evaluation top-1 (multi-"
                                          "label: mean AUROC) (default: none, train every epoch)")
    # execution
    amp: str = _field("off", "autocast: bf16 (CPU or CUDA), fp16 (CUDA, with gradient scaling), or auto: bf16 where "
                             "the device computes it fast (CUDA with bf16, a CPU whose oneDNN has it), off elsewhere",
                      choices=AMP_MODES)
    channels_last: bool = _field(False, "channels-last memory format")
    compile: bool = _field(False, "torch.compile the model")
    keep_freed_memory: bool = _field(True, "CPU with glibc: malloc keeps freed memory for reuse instead of returning "
                                           "it, so steps do not fault in fresh pages (faster steps, a higher "
                                           "resident peak); process-wide, for the rest of the process")
    device: str = _field("auto", "auto (CUDA if available, else CPU), cpu, cuda or cuda:N")
    seed: int = _field(0, "seed of initialisation, order and augmentation")
    out: str | None = _field(None, "run directory (default runs/<dataset>-<model>-<time>)")
    resume: bool = _field(False, "continue the run in --out from its checkpoint")
    log_every: int = _field(100, "without a terminal: a log line every N steps (0: once per epoch)")

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            kinds = field_kinds(item.name, type(self))
            value = _coerce(getattr(self, item.name), kinds)
            if not _matches(value, kinds):
                raise ValueError(f"config key {item.name!r} must be {_describe(kinds)}, got {value!r}")
            choices = item.metadata.get("choices")
            if choices and value not in choices:
                raise ValueError(f"config key {item.name!r} must be one of {', '.join(choices)}, got {value!r}")
            setattr(self, item.name, value)
        for name, default in OPTIMIZER_DEFAULTS[self.optimizer].items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        if self.early_stop is not None and self.early_stop < 1:
            raise ValueError(f"early_stop counts epochs without improvement: at least 1, got {self.early_stop}")
        for name in ("epochs", "batch_size", "accumulate"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "momentum", "gamma", "warmup_epochs", "label_smoothing"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1 or not 0 <= self.label_smoothing < 1:
            raise ValueError("need lr > 0, weight_decay >= 0, 0 <= momentum < 1 and 0 <= label_smoothing < 1")
        if self.pretrained and self.init_from:
            raise ValueError("pretrained and init_from both name the starting weights: choose one")
        if not 0 <= self.freeze_epochs <= self.epochs:
            raise ValueError(f"freeze_epochs must be in [0, epochs], got {self.freeze_epochs}")
        if not math.isfinite(self.backbone_lr_factor) or self.backbone_lr_factor < 0:
            raise ValueError(f"backbone_lr_factor must be a finite number >= 0, got {self.backbone_lr_factor}")
        if self.gamma <= 0:
            raise ValueError(f"gamma multiplies the learning rate at each milestone: it must be > 0, got {self.gamma}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0: load in the main process), got {self.workers}")
        for name in ("epochs", "batch_size", "accumulate", "log_every", "workers", "train_limit", "eval_limit",
                     "image_size"):
            if (getattr(self, name) or 0) >= 2**31:
                raise ValueError(f"{name} must be below 2**31, got {getattr(self, name)}")
        if self.log_every < 0:
            raise ValueError(f"log_every must be >= 0 (0: once per epoch), got {self.log_every}")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError(f"milestones are fractions of training in (0, 1), got {self.milestones}")
        self.data_spec()

    def data_spec(self) -> DataSpec:
        """The data part of the recipe (validated)."""
        return DataSpec(
            name=self.dataset, data_dir=self.data_dir, download=self.download, image_size=self.image_size,
            augment=self.augment, cache=self.cache, in_chans=int(self.model_args.get("in_chans", 3)),
            train_limit=self.train_limit, eval_limit=self.eval_limit, seed=self.seed,
            val_fraction=self.val_fraction, csv_kind=self.csv_kind,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML- and checkpoint-safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a dict; a key that is not a field is an error naming the closest field."""
        check_keys(data, source)
        return cls(**data)

    def to_yaml(self) -> str:
        """The recipe as YAML, keys in declaration order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write the YAML atomically."""
        write_text(path, self.to_yaml())


def check_keys(data: Any, source: str) -> None:
    """Raise ``ValueError`` unless ``data`` is a mapping whose keys are all :class:`TrainConfig` fields."""
    if not isinstance(data, dict):
        raise ValueError(f"{source} must be a mapping of config keys, got {type(data).__name__}")
    known = [item.name for item in dataclasses.fields(TrainConfig)]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
            raise ValueError(f"unknown config key {key!r} in {source}; {hint}")
    if not isinstance(data.get("model_args") or {}, dict):
        raise ValueError(f"model_args in {source} must be a mapping of architecture fields, e.g. "
                         f"{{growth_rate: 12}}, got {data['model_args']!r}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping stored in a YAML recipe, its keys checked (values are checked by :class:`TrainConfig`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid YAML, not a mapping, or a key that is not a config field.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"config file {path} is a directory")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text: {error.reason} at byte {error.start}") from error
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from error
    check_keys(data, str(path))
    return data


def load_config(*paths: str | Path, base: dict[str, Any] | None = None, **overrides: Any) -> TrainConfig:
    """A recipe from YAML files (later ones win; none: the defaults), with ``overrides`` applied on top.

    ``model_args`` mappings are merged key by key rather than replaced. ``base`` (a recipe mapping: a command's own
    defaults, e.g. a demo's) lies under the files.
    """
    check_keys(overrides, "overrides")
    check_keys(base or {}, "base")
    merged: dict[str, Any] = {}
    for layer in [base or {}, *(read_yaml(path) for path in paths), overrides]:
        model_args = {**merged.get("model_args", {}), **(layer.get("model_args") or {})}
        merged.update(layer)
        if model_args:
            merged["model_args"] = model_args
    return TrainConfig.from_dict(merged, source=" + ".join(map(str, paths)) or "overrides")


class ValueKinds(NamedTuple):
    """The kinds of value a type hint admits: the one walk over :class:`TrainConfig`'s hints, shared by the
    validation here and the ``densenet train`` flags.

    ``int | None`` → kinds ``(int, NoneType)``; ``list[float]`` → kinds ``(list,)`` and element ``float`` (the
    hint of the list's items); ``dict[str, Any]`` → kinds ``(dict,)``.
    """

    kinds: tuple[type, ...]
    element: Any = None


def value_kinds(hint: Any) -> ValueKinds:
    """The :class:`ValueKinds` of a type hint (a union's options in order, generics by their origin)."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    options = typing.get_args(hint) if union else (hint,)
    kinds = tuple(typing.get_origin(option) or option for option in options)
    elements = [typing.get_args(option)[0] for option in options if typing.get_origin(option) is list]
    return ValueKinds(kinds, elements[0] if elements else None)


def field_kinds(name: str, owner: type = TrainConfig) -> ValueKinds:
    """The :class:`ValueKinds` of the field ``name`` of ``owner`` (a :class:`TrainConfig` by default)."""
    return value_kinds(_type_hints(owner)[name])


@functools.cache
def _type_hints(owner: type) -> dict[str, Any]:
    return typing.get_type_hints(owner)


def _coerce(value: Any, kinds: ValueKinds) -> Any:
    """Integers where floats are expected become floats; tuples become lists (YAML and Python spellings)."""
    if isinstance(value, int) and not isinstance(value, bool) and float in kinds.kinds and int not in kinds.kinds:
        return float(value)
    if isinstance(value, (list, tuple)) and list in kinds.kinds:
        element = value_kinds(kinds.element)
        return [_coerce(v, element) for v in value]
    return value


def _matches(value: Any, kinds: ValueKinds) -> bool:
    for kind in kinds.kinds:
        if kind is type(None) and value is None:
            return True
        if kind is bool and isinstance(value, bool):
            return True
        if kind in (int, float) and isinstance(value, kind) and not isinstance(value, bool):
            return True
        if kind is str and isinstance(value, str):
            return True
        if kind is list and isinstance(value, list):
            element = value_kinds(kinds.element)
            return all(_matches(v, element) for v in value)
        if kind is dict and isinstance(value, dict):
            return all(isinstance(k, str) for k in value)
    return False


def _describe(kinds: ValueKinds) -> str:
    return " or ".join("null" if kind is type(None) else kind.__name__ for kind in kinds.kinds)
