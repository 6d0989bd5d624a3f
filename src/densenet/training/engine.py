"""The training engine: one process or many (``torchrun``), CPU or CUDA, the same code.

SGD with Nesterov momentum and weight decay (the paper's optimiser), a step or cosine learning-rate schedule
with optional warm-up, label smoothing, autocast (bfloat16 on CPU, float16 with gradient scaling or bfloat16
on CUDA), channels-last, ``torch.compile`` and gradient accumulation. After every epoch it evaluates, then
writes (rank 0 only, each file atomically) the last and best weights (``save_pretrained``), a checkpoint of
the complete training state, the metrics (CSV and TensorBoard) and, at the end, the plots.

Repeatability: the model is initialised right after ``torch.manual_seed(seed)``; the data order and
augmentation are functions of ``(seed, epoch, …)`` (see :mod:`densenet.data.datasets`); the global generator is
re-seeded from ``(seed, epoch, rank)`` at each epoch start and saved in checkpoints. On CPU a run resumed from
a checkpoint — written at an epoch end, or mid-epoch by Ctrl-C — ends with the same weights as one that never
stopped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from densenet.data.datasets import load_split, preprocessing_for
from densenet.data.loader import EpochBatches, Loader
from densenet.data.seeds import mix_seed
from densenet.model import DenseNet, check_batch_statistics
from densenet.registry import create_model
from densenet.training import distributed
from densenet.training.allocator import keep_freed_memory
from densenet.training.checkpoint import (
    CHECKPOINT_FILE,
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from densenet.training.distributed import Context
from densenet.training.metrics import Accumulator, EvalResult
from densenet.training.recipe import TrainConfig
from densenet.training.runlog import CONFIG_FILE as RUN_CONFIG_FILE
from densenet.training.runlog import METRIC_COLUMNS, TENSORBOARD_DIR, RunLog
from densenet.weights import WeightsError, load_weights

logger = logging.getLogger("densenet")

LAST_DIR = "last"
BEST_DIR = "best"


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        run_dir: the run directory.
        model: the trained network (the final weights, not the best).
        history: one dict of metrics per finished epoch (the columns of ``metrics.csv``).
        final: evaluation of the final weights (``None`` when interrupted).
        best_acc: best evaluation top-1 accuracy over the epochs.
        train_seconds: time spent in training steps, evaluation excluded.
        interrupted: stopped by Ctrl-C / SIGTERM; the checkpoint lets ``resume`` continue.
        epoch: finished epochs; step: optimiser steps done in the unfinished epoch.
    """

    run_dir: Path
    model: DenseNet
    history: list[dict[str, float]]
    final: EvalResult | None
    best_acc: float
    train_seconds: float
    interrupted: bool
    epoch: int
    step: int


def train(config: TrainConfig, model: DenseNet | None = None) -> TrainResult:
    """Train ``config.model`` (or ``model``) on ``config.dataset`` as the recipe says.

    Launched by ``torchrun`` it joins the process group and trains with DistributedDataParallel; only rank 0
    writes files and logs.

    Args:
        config: the recipe.
        model: a network to train instead of building ``config.model``; its classes and input channels must
            fit the data.

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
        ValueError: a bad recipe, data or checkpoint (the message says which).
        FileNotFoundError: missing data or checkpoint.
    """
    context = distributed.setup(config.device)
    try:
        return _Trainer(config, context, model).fit()
    finally:
        distributed.cleanup(context)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, milestones: list[float],
              gamma: float) -> float:
    """Learning rate of optimiser step ``step`` as a fraction of the peak.

    Linear warm-up over ``warmup_steps``; then ``step``: × ``gamma`` at each milestone (a fraction of
    ``total_steps``; the paper's 0.5 and 0.75), or ``cosine``: ``½(1 + cos(π·t))`` with ``t`` going from 0 to 1
    over the steps after warm-up.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return gamma ** sum(step >= round(m * total_steps) for m in milestones)


class _Trainer:
    def __init__(self, config: TrainConfig, context: Context, model: DenseNet | None) -> None:
        self.config = config
        self.context = context
        self.device = context.device
        if config.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp fp16 needs CUDA; use amp bf16 on CPU")
        if config.sync_bn and self.device.type != "cuda":
            raise ValueError("sync_bn needs CUDA: torch's SyncBatchNorm does not run on CPU")
        if config.nesterov and config.momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        shards = context.world_size * config.accumulate
        if config.batch_size % shards:
            raise ValueError(f"batch size {config.batch_size} is not divisible by processes × accumulate = {shards}")
        self.micro_batch = config.batch_size // shards
        if config.keep_freed_memory and self.device.type == "cpu" and keep_freed_memory():
            logger.debug("malloc keeps freed memory for reuse (keep_freed_memory)")
        self.run_dir = self._run_dir()
        self.checkpoint_path = self.run_dir / CHECKPOINT_FILE
        if config.resume and not self.checkpoint_path.is_file():
            raise FileNotFoundError(f"nothing to resume: {self.checkpoint_path} does not exist")
        if not config.resume and self.checkpoint_path.exists():
            raise ValueError(f"{self.run_dir} already holds a run; resume it (--resume {self.run_dir}) or choose "
                             "another --out")
        _seed_everything(config.seed)

        spec = config.data_spec()
        self.train_split = load_split(spec, "train")
        self.eval_split = load_split(spec, "eval")
        self.class_names = self.train_split.class_names
        if self.eval_split.class_names != self.class_names:
            raise ValueError(f"the evaluation split's classes {self.eval_split.class_names} differ from the "
                             f"training split's {self.class_names}")
        self.preprocessing = preprocessing_for(spec, self.train_split)
        self.model = self._model(model)
        self.model.meta = self.model.meta.replace(preprocessing=self.preprocessing)
        self._check_input_size(self.preprocessing.crop)

        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.memory_format = memory_format
        self.model.to(self.device, memory_format=memory_format)
        if config.sync_bn:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.net: nn.Module = self.model
        if context.distributed:
            device_ids = None if self.device.index is None else [self.device.index]
            self.net = DistributedDataParallel(self.model, device_ids=device_ids)
        if config.compile:
            self.net = torch.compile(self.net)

        pin = self.device.type == "cuda"
        self.train_loader = Loader(
            self.train_split, self.preprocessing,
            EpochBatches(len(self.train_split), self.micro_batch, shuffle=True, seed=config.seed, rank=context.rank,
                         world_size=context.world_size),
            augment=spec.augment_kind, workers=config.workers, pin_memory=pin)
        self.eval_loader = Loader(
            self.eval_split, self.preprocessing,
            EpochBatches(len(self.eval_split), max(2 * self.micro_batch, 64), shuffle=False, rank=context.rank,
                         world_size=context.world_size),
            workers=config.workers, pin_memory=pin)
        self.steps_per_epoch = len(self.train_loader) // config.accumulate
        if self.steps_per_epoch == 0:
            raise ValueError(f"batch size {config.batch_size} is larger than the training split "
                             f"({len(self.train_split)} images over {context.world_size} process(es))")

        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         nesterov=config.nesterov, weight_decay=config.weight_decay)
        total = config.epochs * self.steps_per_epoch
        warmup = round(config.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(
            step, total, warmup, config.schedule, config.milestones, config.gamma))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

        self.epoch = 0
        self.step = 0
        self.partial = _fresh_partial()
        self.history: list[dict[str, float]] = []
        self.best_acc = -1.0
        self.rng_states: list[Any] | None = None
        if config.resume:
            self._restore(load_checkpoint(self.checkpoint_path))
        self.stop_requested = False

    # set-up ---------------------------------------------------------------------------------------------------

    def _run_dir(self) -> Path:
        config = self.config
        if config.out:
            return Path(config.out)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        name = distributed.gather(f"{config.dataset}-{config.model}-{stamp}", self.context)[0]
        return Path("runs") / name

    def _model(self, model: DenseNet | None) -> DenseNet:
        classes = len(self.class_names)
        channels = self.preprocessing.channels
        if model is None:
            args = dict(self.config.model_args)
            for key, value in (("num_classes", classes), ("in_chans", channels)):
                if args.get(key, value) != value:
                    raise ValueError(f"model_args {key}={args[key]} does not fit the data ({key} = {value})")
                args[key] = value
            if self.config.sync_bn:
                # The explicit dense block normalises with the modules' parameters itself; only the reference
                # path calls the BatchNorm modules that SyncBatchNorm replaces.
                args["memory_efficient"] = False
            torch.manual_seed(self.config.seed)
            return create_model(self.config.model, class_names=self.class_names, **args)
        if self.config.sync_bn and model.config.memory_efficient:
            raise ValueError("sync_bn needs a model with memory_efficient=False: the explicit dense block computes "
                             "its batch statistics itself and never calls the SyncBatchNorm modules")
        if model.config.num_classes != classes or model.config.in_chans != channels:
            raise ValueError(f"the model takes {model.config.in_chans}-channel input into {model.config.num_classes} "
                             f"classes; the data has {channels} channel(s) and {classes} classes")
        if model.meta.class_names is None:
            model.meta = model.meta.replace(class_names=self.class_names)
        return model

    def _check_input_size(self, side: int) -> None:
        """Fail before the run directory exists on input the network cannot train on."""
        architecture = self.model.config
        architecture.check_input_size(side, self.config.model, what="image size", hint=" (--image-size)")
        check_batch_statistics(architecture, self.micro_batch, side)

    def _restore(self, state: dict[str, Any]) -> None:
        for key, kinds in _CHECKPOINT_FIELDS.items():
            if not isinstance(state.get(key), kinds) or isinstance(state.get(key), bool):
                raise CheckpointError(f"{self.checkpoint_path} is malformed: {key!r} is missing or of the wrong type "
                                      f"({type(state.get(key)).__name__})")
        try:
            load_weights(self.model, state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (WeightsError, KeyError, ValueError, RuntimeError) as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise CheckpointError(f"{self.checkpoint_path} does not fit this run: {reason[:300]}") from error
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise CheckpointError(f"{self.checkpoint_path} was written with {state['steps_per_epoch']} steps per "
                                  f"epoch, this run has {self.steps_per_epoch}: data or batch size changed")
        _check_position(state, self.checkpoint_path)
        self.epoch = state["epoch"]
        self.step = state["step"]
        self.partial = dict(state["partial"])
        self.history = list(state["history"])
        self.best_acc = state["best_acc"]
        states = state["rng"]
        self.rng_states = states if len(states) == self.context.world_size else None

    # the loop -------------------------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        config, context = self.config, self.context
        created = _paths_to_create(self.run_dir)
        runlog = RunLog(self.run_dir, first_epoch=self.epoch) if context.is_main else None
        if runlog:
            runlog.write_config(config)
            self._log_start()
        final: EvalResult | None = None
        interrupted = False
        try:
            with self._signals():
                while self.epoch < config.epochs:
                    if not self._train_epoch():
                        interrupted = True
                        self._save_checkpoint()
                        break
                    final = self._evaluate()
                    self._end_epoch(final, runlog)
                if not interrupted and final is None:
                    final = self._evaluate()  # resumed a finished run
            if runlog and not interrupted:
                runlog.write_plots(self.history, final)
        except BaseException:
            if runlog:
                runlog.close()
                if not self.checkpoint_path.exists():  # failed before anything worth keeping: remove what it made
                    for path in created:
                        if path.is_dir():
                            shutil.rmtree(path, ignore_errors=True)
                        else:
                            path.unlink(missing_ok=True)
            raise
        if runlog:
            runlog.close()
        if interrupted and context.is_main:
            logger.info("interrupted: checkpoint saved at epoch %d, step %d of %d in %s", self.epoch + 1, self.step,
                        self.steps_per_epoch, self.checkpoint_path)
        return TrainResult(self.run_dir, self.model, self.history, None if interrupted else final,
                           max(self.best_acc, 0.0), sum(row["train_seconds"] for row in self.history),
                           interrupted, self.epoch, self.step)

    def _train_epoch(self) -> bool:
        """One epoch from ``self.step`` on; ``False`` when stopped by a signal (state saved by the caller)."""
        config, context = self.config, self.context
        self.model.train()
        if self.step == 0:
            torch.manual_seed(mix_seed(config.seed, self.epoch, context.rank))
            self.partial = _fresh_partial()
        elif self.rng_states is not None:
            set_rng_state(self.rng_states[context.rank])
        self.rng_states = None
        self.train_loader.set_epoch(self.epoch, self.step * config.accumulate)
        skipped_before = len(self.train_loader.skipped)
        progress = self._progress()
        started = time.perf_counter() - self.partial["seconds"]
        batches = iter(self.train_loader)
        while self.step < self.steps_per_epoch:
            loss_sum, correct, seen = self._train_step(batches)
            self.partial["loss_sum"] += loss_sum
            self.partial["correct"] += correct
            self.partial["seen"] += seen
            self.step += 1
            self.partial["seconds"] = time.perf_counter() - started
            progress(self.step, self.partial)
            if self.stop_requested:
                return False
        self.partial["skipped"] = float(len(self.train_loader.skipped) - skipped_before)
        return True

    def _train_step(self, batches: Iterator[tuple[Tensor, Tensor]]) -> tuple[float, float, float]:
        config = self.config
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen = 0
        for micro in range(config.accumulate):
            try:
                images, targets = next(batches)
            except StopIteration:
                raise ValueError(f"every image of a batch was unreadable ({len(self.train_loader.skipped)} unreadable "
                                 "so far, see the warnings): fix or remove them") from None
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            targets = targets.to(self.device, non_blocking=True)
            sync = micro == config.accumulate - 1 or not isinstance(self.model_for_sync, DistributedDataParallel)
            with contextlib.nullcontext() if sync else self.model_for_sync.no_sync(), self._autocast():
                logits = self.net(images)
                loss = self.criterion(logits.float(), targets)
            self.scaler.scale(loss / config.accumulate).backward()
            loss_sum += loss.detach() * len(targets)
            correct += (logits.detach().argmax(1) == targets).sum()
            seen += len(targets)
        flags = torch.stack([(~torch.isfinite(loss_sum)).float(), torch.tensor(float(self.stop_requested),
                                                                              device=self.device)])
        nonfinite, stop = distributed.all_reduce(flags, self.context, torch.distributed.ReduceOp.MAX).tolist()
        if nonfinite:
            raise TrainingDiverged(
                f"loss is {loss_sum.item() / max(seen, 1)} at epoch {self.epoch + 1}, step {self.step + 1}: training "
                f"stopped; {self._kept_checkpoint()}. Lower the learning rate or check the data")
        self.stop_requested = bool(stop)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.partial["lr"] = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        return loss_sum.item(), correct.item(), float(seen)

    @property
    def model_for_sync(self) -> nn.Module:
        """The DDP wrapper (for ``no_sync``) under a possible ``torch.compile``."""
        return getattr(self.net, "_orig_mod", self.net)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.amp == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _evaluate(self) -> EvalResult:
        self.model.eval()
        accumulator = Accumulator(self.class_names)
        self.eval_loader.set_epoch(0)
        with torch.inference_mode():
            for images, targets in self.eval_loader:
                images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
                targets = targets.to(self.device, non_blocking=True)
                with self._autocast():
                    logits = self.model(images).float()
                accumulator.update(logits, targets, F.cross_entropy(logits, targets, reduction="sum"))
        accumulator.totals = distributed.all_reduce(accumulator.totals, self.context)
        return accumulator.result()

    def _kept_checkpoint(self) -> str:
        """Where a diverged run can be resumed from, for its error message."""
        if self.checkpoint_path.is_file():
            return f"the last good checkpoint is {self.checkpoint_path}"
        return "no checkpoint was written yet"

    def _end_epoch(self, result: EvalResult, runlog: RunLog | None) -> None:
        context = self.context
        if not math.isfinite(result.loss):  # the epoch's last step diverged after its loss was checked
            raise TrainingDiverged(f"evaluation loss is {result.loss} after epoch {self.epoch + 1}: the weights "
                                   "diverged; training stopped and nothing of this epoch was saved; "
                                   f"{self._kept_checkpoint()}. Lower the learning rate or check the data")
        totals = distributed.all_reduce(torch.tensor(
            [self.partial["loss_sum"], self.partial["correct"], self.partial["seen"], self.partial["skipped"]],
            dtype=torch.float64), context)
        loss_sum, correct, seen, skipped = totals.tolist()
        seconds = self.partial["seconds"]
        row = {
            "epoch": self.epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
            "eval_loss": result.loss, "eval_acc": result.top1, "eval_top5": result.top5,
            "lr": self.partial["lr"], "train_seconds": seconds,
            "images_per_second": seen / seconds if seconds else 0.0, "skipped_images": skipped,
        }
        self.history.append(row)
        self.epoch += 1
        self.step = 0
        improved = result.top1 > self.best_acc
        self.best_acc = max(self.best_acc, result.top1)
        if context.is_main:
            self.model.save_pretrained(self.run_dir / LAST_DIR)
            if improved:
                self.model.save_pretrained(self.run_dir / BEST_DIR)
        self._save_checkpoint()
        if runlog:
            runlog.write_epoch(self.history)
            logger.info(
                "epoch %d/%d  train loss %.4f acc %.2f%%  eval loss %.4f acc %.2f%%  lr %.4g  %.0f img/s  %.1fs%s",
                row["epoch"], self.config.epochs, row["train_loss"], 100 * row["train_acc"], row["eval_loss"],
                100 * row["eval_acc"], row["lr"], row["images_per_second"], seconds,
                f"  skipped {int(skipped)} unreadable image(s)" if skipped else "")

    def _save_checkpoint(self) -> None:
        states = distributed.gather(rng_state(), self.context)
        if not self.context.is_main:
            return
        save_checkpoint({
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": states,
            "epoch": self.epoch,
            "step": self.step,
            "steps_per_epoch": self.steps_per_epoch,
            "partial": dict(self.partial),
            "best_acc": self.best_acc,
            "history": self.history,
            "config": self.config.to_dict(),
        }, self.checkpoint_path)

    # reporting and signals ------------------------------------------------------------------------------------

    def _log_start(self) -> None:
        params = sum(p.numel() for p in self.model.parameters())
        logger.info("training %s (%s parameters) on %s: %d train / %d eval images, %d classes, %s × %d process(es), "
                    "%d steps/epoch; run directory %s", self.model.meta.name or "a custom DenseNet", f"{params:,}",
                    self.config.dataset, len(self.train_split), len(self.eval_split), len(self.class_names),
                    self.device, self.context.world_size, self.steps_per_epoch, self.run_dir)
        if self.config.resume:
            logger.info("resuming at epoch %d, step %d", self.epoch + 1, self.step)

    def _progress(self) -> Callable[[int, dict[str, float]], None]:
        """A per-step reporter: a tqdm bar on a terminal, plain log lines every ``log_every`` steps otherwise."""
        if not self.context.is_main:
            return lambda step, partial: None
        total, epoch, world = self.steps_per_epoch, self.epoch + 1, self.context.world_size

        def stats(partial: dict[str, float]) -> tuple[float, float, float]:
            seen = max(partial["seen"], 1.0)
            rate = partial["seen"] * world / partial["seconds"] if partial["seconds"] else 0.0
            return partial["loss_sum"] / seen, partial["correct"] / seen, rate

        if sys.stderr.isatty():
            bar = tqdm(total=total, initial=self.step, desc=f"epoch {epoch}/{self.config.epochs}", leave=False,
                       dynamic_ncols=True)

            def update_bar(step: int, partial: dict[str, float]) -> None:
                loss, acc, rate = stats(partial)
                bar.set_postfix_str(f"loss {loss:.4f} acc {acc:.2%} {rate:.0f} img/s", refresh=False)
                bar.update(step - bar.n)
                if step == total:
                    bar.close()

            return update_bar
        every = self.config.log_every

        def log_line(step: int, partial: dict[str, float]) -> None:
            if every and step % every == 0 and step < total:
                loss, acc, rate = stats(partial)
                eta = (total - step) * partial["seconds"] / step
                logger.info("epoch %d/%d step %d/%d  loss %.4f acc %.2f%%  %.0f img/s  eta %.0fs", epoch,
                            self.config.epochs, step, total, loss, 100 * acc, rate, eta)

        return log_line

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM finish the current step, save and stop; a second Ctrl-C aborts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            if self.stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_requested = True
            if self.context.is_main:
                logger.info("stopping after this step (Ctrl-C again to abort without saving)")

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


# the fields _save_checkpoint writes and the types _restore relies on
_CHECKPOINT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "model": dict, "optimizer": dict, "scheduler": dict, "scaler": dict, "rng": list, "epoch": int, "step": int,
    "steps_per_epoch": int, "partial": dict, "best_acc": (int, float), "history": list,
}


def _paths_to_create(run_dir: Path) -> list[Path]:
    """What a run's start will create: the topmost missing directory of ``run_dir`` and its parents, or, when
    ``run_dir`` exists, the run files in it that do not exist yet."""
    missing = [path for path in (run_dir, *run_dir.parents) if not path.exists()]
    if missing:
        return [missing[-1]]
    return [path for path in (run_dir / RUN_CONFIG_FILE, run_dir / TENSORBOARD_DIR) if not path.exists()]


def _check_position(state: dict[str, Any], path: Path) -> None:
    """Raise :class:`CheckpointError` unless the checkpoint's position, best accuracy and history make sense."""
    problem = None
    if not 0 <= state["epoch"] < 2**31 or not 0 <= state["step"] <= state["steps_per_epoch"]:
        problem = f"epoch {state['epoch']}, step {state['step']} of {state['steps_per_epoch']}"
    elif not (state["best_acc"] == -1.0 or 0.0 <= state["best_acc"] <= 1.0):
        problem = f"best accuracy {state['best_acc']}"
    elif len(state["history"]) != state["epoch"]:
        problem = f"a history of {len(state['history'])} rows for {state['epoch']} epochs"
    elif not all(isinstance(row, dict) and all(isinstance(row.get(key), (int, float)) for key in METRIC_COLUMNS)
                 for row in state["history"]):
        problem = f"history rows without the metrics {', '.join(METRIC_COLUMNS)}"
    if problem:
        raise CheckpointError(f"{path} is malformed: {problem}")


def _fresh_partial() -> dict[str, float]:
    """Running sums of the unfinished epoch (saved in mid-epoch checkpoints)."""
    return {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0, "lr": 0.0, "skipped": 0.0}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
