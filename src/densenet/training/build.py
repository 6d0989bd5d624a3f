"""Building a run from its recipe: the data, the model (DDP, compile), the loaders, the optimiser, the schedule and
the gradient scaler, in one typed :class:`Run`."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from densenet import capability
from densenet.data.datasets import load_split, preprocessing_for
from densenet.data.images import Split
from densenet.data.loader import EpochBatches, Loader
from densenet.meta import ArrayPreprocessing, Preprocessing
from densenet.model import DenseNet, check_batch_statistics
from densenet.registry import create_model
from densenet.training.allocator import keep_freed_memory
from densenet.training.distributed import Context
from densenet.training.finetune import (
    check_frozen_training,
    load_start_weights,
    parameter_groups,
    with_normalisation,
)
from densenet.training.memory import check_memory
from densenet.training.optimizers import make_optimizer
from densenet.training.recipe import TrainConfig
from densenet.training.schedule import lr_scheduler
from densenet.training.task import Task, task_for

logger = logging.getLogger("densenet")


@dataclass
class Run:
    """What training runs on, built by :func:`build_run`.

    Attributes:
        context: this process and its device.
        train_split, eval_split: the data; class_names: its classes; preprocessing: the network's input.
        model: the network (the plain module: saved, evaluated, restored).
        net: what training calls: ``model``, wrapped in DistributedDataParallel and/or ``torch.compile``.
        memory_format: the layout of weights and inputs (channels-last or contiguous).
        amp: the recipe's autocast mode (off, bf16, fp16).
        freeze_epochs: the first epochs that train the classifier alone.
        train_loader, eval_loader: this process's batches; micro_batch: images per forward pass.
        steps_per_epoch: optimiser steps per epoch (micro-batches / accumulate).
        optimizer, scheduler, scaler, criterion: SGD or AdamW, its LR schedule, the fp16 gradient scaler, the loss.
        task: single- or multi-label (:mod:`~densenet.training.task`): the loss, accuracy, evaluation, best metric.
    """

    context: Context
    train_split: Split
    eval_split: Split
    class_names: list[str]
    preprocessing: Preprocessing | ArrayPreprocessing
    model: DenseNet
    net: nn.Module
    memory_format: torch.memory_format
    amp: str
    freeze_epochs: int
    train_loader: Loader
    eval_loader: Loader
    micro_batch: int
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    task: Task

    @property
    def device(self) -> torch.device:
        """The device this process computes on."""
        return self.context.device

    @property
    def model_for_sync(self) -> nn.Module:
        """The DDP wrapper (for ``no_sync``) under a possible ``torch.compile``."""
        return getattr(self.net, "_orig_mod", self.net)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The recipe's autocast (bfloat16 or float16) on this device, or nothing."""
        if self.amp == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)


def with_autocast(config: TrainConfig, device: torch.device) -> TrainConfig:
    """``config`` with ``amp: auto`` resolved for ``device``: ``bf16`` where the device computes bfloat16 fast (CUDA
    with bfloat16, a CPU whose oneDNN has it: :func:`densenet.capability.onednn_bfloat16`), ``off`` elsewhere (on an
    AVX2 CPU bfloat16 convolutions are several times slower than float32). The resolved mode goes into the run's
    ``config.yaml``, so a resumed run keeps it."""
    if config.amp != "auto":
        return config
    on_cuda = device.type == "cuda"
    fast = torch.cuda.is_bf16_supported() if on_cuda else device.type == "cpu" and capability.onednn_bfloat16()
    logger.info("amp auto: %s", "bf16" if fast else "off (this device has no fast bfloat16: float32)")
    return dataclasses.replace(config, amp="bf16" if fast else "off")


def check_recipe(config: TrainConfig, context: Context) -> int:
    """Refuse what this device and process count cannot run; return the micro-batch (images per forward pass).

    On CPU with glibc it also makes ``malloc`` keep freed memory (``keep_freed_memory``).
    """
    device = context.device
    if config.amp == "fp16" and device.type != "cuda":
        raise ValueError("amp fp16 needs CUDA; use amp bf16 on CPU")
    if config.amp == "bf16" and device.type == "cpu":
        capability.warn_slow_bfloat16()  # where this CPU has no bfloat16 instructions: once, with the reason
    if config.sync_bn and device.type != "cuda":
        raise ValueError("sync_bn needs CUDA: torch's SyncBatchNorm does not run on CPU")
    if config.nesterov and config.momentum == 0:
        raise ValueError("Nesterov momentum needs momentum > 0")
    shards = context.world_size * config.accumulate
    if config.batch_size % shards:
        raise ValueError(f"batch size {config.batch_size} is not divisible by processes × accumulate = {shards}")
    if config.keep_freed_memory and device.type == "cpu" and keep_freed_memory():
        logger.debug("malloc keeps freed memory for reuse (keep_freed_memory)")
    return config.batch_size // shards


def build_run(config: TrainConfig, context: Context, model: DenseNet | None, micro_batch: int) -> Run:
    """Seed every generator, load the data, build (or check) the model, wrap it, and make loaders and optimiser.

    The order is part of repeatability: the model is initialised right after ``torch.manual_seed(config.seed)``.
    """
    _seed_everything(config.seed)
    spec = config.data_spec()
    train_split, eval_split = load_split(spec, "train"), load_split(spec, "eval")
    class_names = train_split.class_names
    if eval_split.class_names != class_names:
        raise ValueError(f"the evaluation split's classes {eval_split.class_names} differ from the "
                         f"training split's {class_names}")
    check_frozen_training(config, context.distributed)
    task = task_for(train_split, class_names, config.pos_weight, config.label_smoothing, context.is_main)
    preprocessing = preprocessing_for(spec, train_split)
    model = _model(config, model, class_names, preprocessing.channels, preprocessing.spatial_dims)
    preprocessing = with_normalisation(preprocessing, load_start_weights(config, model))
    model.meta = model.meta.replace(preprocessing=preprocessing, task=task.name)
    # fail before the run directory exists on input the network cannot train on
    model.config.check_input_size(preprocessing.crop, config.model, what="image size", hint=" (--image-size)")
    check_batch_statistics(model.config, micro_batch, preprocessing.crop)
    check_memory(config, context, model.config, preprocessing.crop, micro_batch)
    memory_format = _memory_format(config.channels_last, preprocessing.spatial_dims)
    model, net = _placed(config, context, model, memory_format)

    pin = context.device.type == "cuda"
    train_loader = Loader(
        train_split, preprocessing,
        EpochBatches(len(train_split), micro_batch, shuffle=True, seed=config.seed, rank=context.rank,
                     world_size=context.world_size),
        augment=spec.augment_kind, workers=config.workers, pin_memory=pin)
    eval_loader = Loader(
        eval_split, preprocessing,
        EpochBatches(len(eval_split), max(2 * micro_batch, 64 if preprocessing.spatial_dims < 3 else 1), shuffle=False,
                     rank=context.rank,
                     world_size=context.world_size),
        workers=config.workers, pin_memory=pin)
    steps_per_epoch = len(train_loader) // config.accumulate
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {config.batch_size} is larger than the training split "
                         f"({len(train_split)} images over {context.world_size} process(es))")
    groups = model.parameters() if config.backbone_lr_factor == 1 else parameter_groups(
        model, config.lr, config.backbone_lr_factor)  # one group as before: old checkpoints' optimiser state fits
    optimizer = make_optimizer(config, groups)
    return Run(context, train_split, eval_split, class_names, preprocessing, model, net, memory_format, config.amp,
               config.freeze_epochs, train_loader, eval_loader, micro_batch, steps_per_epoch, optimizer,
               lr_scheduler(optimizer, config, steps_per_epoch),
               torch.amp.GradScaler(context.device.type, enabled=config.amp == "fp16"),
               task.criterion, task)


def _model(config: TrainConfig, model: DenseNet | None, class_names: list[str], channels: int,
           spatial_dims: int) -> DenseNet:
    """``config.model`` built for the data (volumes: 3 spatial dimensions, signals: 1), or the given ``model``
    checked against it."""
    classes = len(class_names)
    if model is None:
        args = dict(config.model_args)
        for key, value in (("num_classes", classes), ("in_chans", channels), ("spatial_dims", spatial_dims)):
            if args.get(key, value) != value:
                raise ValueError(f"model_args {key}={args[key]} does not fit the data ({key} = {value})")
            args[key] = value
        if config.sync_bn:
            # The explicit dense block normalises with the modules' parameters itself; only the reference
            # path calls the BatchNorm modules that SyncBatchNorm replaces.
            args["memory_efficient"] = False
        torch.manual_seed(config.seed)
        return create_model(config.model, class_names=class_names, **args)
    if config.sync_bn and model.config.memory_efficient:
        raise ValueError("sync_bn needs a model with memory_efficient=False: the explicit dense block computes "
                         "its batch statistics itself and never calls the SyncBatchNorm modules")
    if model.config.num_classes != classes or model.config.in_chans != channels:
        raise ValueError(f"the model takes {model.config.in_chans}-channel input into {model.config.num_classes} "
                         f"classes; the data has {channels} channel(s) and {classes} classes")
    if model.config.spatial_dims != spatial_dims:
        raise ValueError(f"the model takes {model.config.spatial_dims}-D input; the data is {spatial_dims}-D")
    if model.meta.class_names is None:
        model.meta = model.meta.replace(class_names=class_names)
    return model


def _placed(config: TrainConfig, context: Context, model: DenseNet,
            memory_format: torch.memory_format) -> tuple[DenseNet, nn.Module]:
    """The model on its device in its layout (SyncBatchNorm if asked), and what training calls: the model wrapped
    in DistributedDataParallel (several processes) and ``torch.compile`` (if asked)."""
    model.to(context.device, memory_format=memory_format)
    if config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net: nn.Module = model
    if context.distributed:
        device_ids = None if context.device.index is None else [context.device.index]
        net = DistributedDataParallel(model, device_ids=device_ids)
    if config.compile:
        net = torch.compile(net)
    return model, net


def _memory_format(channels_last: bool, spatial_dims: int) -> torch.memory_format:
    """The layout of weights and inputs: channels-last (``channels_last_3d`` for volumes) if asked, else contiguous.

    Raises:
        ValueError: channels-last asked for signals (torch has no channels-last layout for 3-D tensors).
    """
    if not channels_last:
        return torch.contiguous_format
    if spatial_dims == 1:
        raise ValueError("channels_last applies to images and volumes; torch has no channels-last layout for signals")
    return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
