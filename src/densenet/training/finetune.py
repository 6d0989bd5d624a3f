"""Fine-tuning: a run that starts from existing weights (``--pretrained``, ``--init-from``) with the normalisation
that belongs to them, trains the classifier alone for its first epochs (``--freeze-epochs``) and the backbone at a
fraction of the learning rate (``--backbone-lr-factor``)."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from densenet.meta import Preprocessing
from densenet.model import DenseNet
from densenet.pretrained import get_weights, load_pretrained, load_start
from densenet.training.recipe import TrainConfig
from densenet.weights import CONFIG_FILE, read_pretrained_config, read_state_dict

logger = logging.getLogger("densenet")


def load_start_weights(config: TrainConfig, model: DenseNet) -> Preprocessing | None:
    """Load the recipe's starting weights into ``model`` (none: nothing happens) and return the preprocessing they
    were trained with, when known. The model keeps the data's class names.

    Raises:
        WeightsError: the file does not fit the architecture (the message names the first mismatched keys).
        DownloadError: the pretrained file cannot be fetched.
    """
    class_names = model.meta.class_names
    if config.pretrained:
        weights = get_weights(config.model)
        load_pretrained(model, weights)
        saved: Preprocessing | None = weights.preprocessing
    elif config.init_from:
        path = Path(config.init_from).expanduser()
        state = read_state_dict(path)
        meta = read_pretrained_config(path)[1] if (path / CONFIG_FILE).is_file() else None
        if meta and meta.class_names and class_names and meta.class_names != tuple(class_names):
            state = {key: value for key, value in state.items() if not key.startswith("classifier.")}
            logger.info("%s was trained on other classes (%s, …): its classifier is left out", path,
                        ", ".join(meta.class_names[:3]))
        load_start(model, state, str(path))
        saved = meta.preprocessing if meta else None
        logger.info("starting from the weights in %s", path)
    else:
        return None
    model.meta = model.meta.replace(class_names=class_names)
    return saved


def with_normalisation(data: Preprocessing, start: Preprocessing | None) -> Preprocessing:
    """The data's image mode and sizes with the starting weights' mean and std (averaged over RGB for a gray
    network), so that the network sees inputs distributed as it was trained on."""
    if start is None or not isinstance(data, Preprocessing):  # volumes and signals: per-sample z-scores
        return data
    normalised = start.for_channels(data.channels)
    return Preprocessing(data.image_mode, data.resize, data.crop, normalised.mean, normalised.std)


def parameter_groups(model: DenseNet, lr: float, backbone_factor: float) -> list[dict]:
    """Optimiser groups: the backbone (``features``) at ``lr × backbone_factor``, the classifier at ``lr``."""
    head = list(model.classifier.parameters())
    chosen = {id(p) for p in head}
    backbone = [p for p in model.parameters() if id(p) not in chosen]
    return [{"params": backbone, "lr": lr * backbone_factor}, {"params": head, "lr": lr}]


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (or release) everything but the classifier: no gradients, and batch norms on their running
    statistics (evaluation mode), as a fixed feature extractor. Call after ``model.train()``."""
    features: nn.Module = model.features
    for parameter in features.parameters():
        parameter.requires_grad_(not frozen)
    if frozen:
        features.eval()


def check_frozen_training(config: TrainConfig, distributed: bool) -> None:
    """Refuse what freezing cannot do yet: several processes (DistributedDataParallel fixes the trainable
    parameters when it wraps the model)."""
    if config.freeze_epochs and distributed:
        raise ValueError("freeze_epochs runs in one process only: DistributedDataParallel fixes the trainable "
                         "parameters when it wraps the model")
