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

The parts: :mod:`~densenet.training.build` (the run from its recipe), :mod:`~densenet.training.step` (one
optimisation step), :mod:`~densenet.training.loop` (an epoch and its evaluation),
:mod:`~densenet.training.checkpoint` (the checkpoint's schema), :mod:`~densenet.training.progress` (what is
logged), :mod:`~densenet.training.signals` (stopping on Ctrl-C / SIGTERM), :mod:`~densenet.training.rundir` (the
run directory's policy) and :mod:`~densenet.training.schedule` (the learning rate). This module strings them
together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densenet.model import DenseNet
from densenet.training import distributed, progress
from densenet.training.build import build_run, check_recipe, with_autocast
from densenet.training.checkpoint import CheckpointError, EpochTotals, TrainingCheckpoint, kept_checkpoint, rng_state
from densenet.training.distributed import Context
from densenet.training.earlystop import should_stop
from densenet.training.imagesize import with_image_size
from densenet.training.loop import epoch_row, evaluate, start_epoch, train_epoch
from densenet.training.recipe import TrainConfig
from densenet.training.rundir import checkpoint_to_use, run_directory, run_records
from densenet.training.runlock import run_lock
from densenet.training.runlog import RunLog
from densenet.training.schedule import lr_factor
from densenet.training.signals import Stopped, StopRequest
from densenet.training.splitrecord import record_val_split
from densenet.training.step import TrainingDiverged
from densenet.training.task import Result
from densenet.weights import WeightsError, load_weights

__all__ = ["BEST_DIR", "LAST_DIR", "TrainResult", "TrainingDiverged", "lr_factor", "train"]

LAST_DIR = "last"
BEST_DIR = "best"


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        run_dir: the run directory.
        model: the trained network (the final weights, not the best).
        history: one dict of metrics per finished epoch (the columns of ``metrics.csv``).
        final: evaluation of the final weights (``None`` when interrupted).
        best_acc: best evaluation top-1 accuracy over the epochs (multi-label: best mean AUROC).
        train_seconds: time spent in training steps, evaluation excluded.
        interrupted: stopped by Ctrl-C / SIGTERM; the checkpoint lets ``resume`` continue.
        epoch: finished epochs; step: optimiser steps done in the unfinished epoch.
        stopped_early: ended by ``early_stop`` before ``epochs``.
        stop_signal: the signal that interrupted the run (``None``: not interrupted).
        checkpoint: the run's checkpoint file.
    """

    run_dir: Path
    model: DenseNet
    history: list[dict[str, float]]
    final: Result | None
    best_acc: float
    train_seconds: float
    interrupted: bool
    epoch: int
    step: int
    stopped_early: bool = field(default=False)
    stop_signal: int | None = None
    checkpoint: Path | None = None


def train(config: TrainConfig, model: DenseNet | None = None) -> TrainResult:
    """Train ``config.model`` (or ``model``) on ``config.dataset`` as the recipe says.

    Launched by ``torchrun`` it joins the process group and trains with DistributedDataParallel; only rank 0
    writes files and logs.

    Args:
        config: the recipe.
        model: a network to train instead of building ``config.model``; its classes and input channels must
            fit the data.

    SIGINT and SIGTERM end the run promptly (:mod:`~densenet.training.signals`): during training it saves a
    checkpoint of the last finished step and returns (``interrupted``); before training starts it raises
    :class:`~densenet.training.signals.Stopped` (nothing to save; a run directory it created is removed).

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
        ValueError: a bad recipe, data or checkpoint (the message says which).
        FileNotFoundError: missing data or checkpoint.
        Stopped: a stop signal before training started, or a second one (which leaves without saving).
    """
    context = distributed.setup(config.device)
    stop = StopRequest(immediate=not context.distributed)
    try:
        with stop.handling_signals():
            with stop.region(abortable=True):  # until training starts, there is nothing to lose
                config = with_autocast(with_image_size(config), context.device)
                run_dir = run_directory(config, context)
            with run_lock(run_dir, context.is_main):
                with stop.region(abortable=True):
                    trainer = _Trainer(config, context, model, run_dir, stop)
                return trainer.fit()
    finally:
        distributed.cleanup(context)


class _Trainer:
    """A run's position (epoch, step, the unfinished epoch's totals, history, best accuracy) and the loop over
    epochs: train, evaluate, save; a signal saves mid-epoch and stops."""

    def __init__(self, config: TrainConfig, context: Context, model: DenseNet | None, run_dir: Path,
                 stop: StopRequest) -> None:
        self.config = config
        self.context = context
        micro_batch = check_recipe(config, context)
        self.run_dir = run_dir
        self.checkpoint_path = checkpoint_to_use(self.run_dir, config.resume)
        self.run = build_run(config, context, model, micro_batch)
        self.epoch = 0
        self.step = 0
        self.totals = EpochTotals()
        self.history: list[dict[str, float]] = []
        self.best_acc = -1.0
        self.rng_states: list[Any] | None = None
        if config.resume:
            self._restore(TrainingCheckpoint.load(self.checkpoint_path))
        self.stop = stop

    def _restore(self, checkpoint: TrainingCheckpoint) -> None:
        run = self.run
        try:
            load_weights(run.model, checkpoint.model)
            run.optimizer.load_state_dict(checkpoint.optimizer)
            run.scheduler.load_state_dict(checkpoint.scheduler)
            run.scaler.load_state_dict(checkpoint.scaler)
        except (WeightsError, KeyError, ValueError, RuntimeError) as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise CheckpointError(f"{self.checkpoint_path} does not fit this run: {reason[:300]}") from error
        checkpoint.check_position(run.steps_per_epoch, self.checkpoint_path)
        self.epoch, self.step = checkpoint.epoch, checkpoint.step
        self.totals = checkpoint.partial
        self.history = list(checkpoint.history)
        self.best_acc = checkpoint.best_acc
        states = checkpoint.rng
        self.rng_states = states if len(states) == self.context.world_size else None

    def fit(self) -> TrainResult:
        """Train the remaining epochs (or until a signal), writing the run directory; the run's result."""
        config, context = self.config, self.context
        final: Result | None = None
        interrupted = False
        with run_records(self.run_dir, self.checkpoint_path, self.epoch, context.is_main) as runlog:
            if runlog:
                runlog.write_config(config)
                record_val_split(config, self.run_dir)
                progress.log_start(config, context, self.run.model, (len(self.run.train_split),
                                   len(self.run.eval_split)), len(self.run.class_names), self.run.steps_per_epoch,
                                   self.run_dir, self.run.train_loader.augment)
                if config.resume:
                    progress.log_resume(self.epoch, self.step)
            while self.epoch < config.epochs and not self.stopped_early:
                final = self._evaluate() if self._train_epoch() else None
                if final is None:
                    interrupted = True
                    self._save_checkpoint()
                    break
                self._end_epoch(final, runlog)
            if not interrupted and final is None:
                final = self._evaluate()  # resumed a finished run
                interrupted = final is None
            if runlog and not interrupted:
                runlog.write_plots(self.history, final)
        if interrupted and context.is_main:
            progress.log_interrupted(self.epoch, self.step, self.run.steps_per_epoch, self.checkpoint_path,
                                     self.stop.signum)
        return TrainResult(self.run_dir, self.run.model, self.history, None if interrupted else final,
                           max(self.best_acc, 0.0), sum(row["train_seconds"] for row in self.history),
                           interrupted, self.epoch, self.step, self.stopped_early,
                           self.stop.signum if interrupted else None, self.checkpoint_path)

    def _evaluate(self) -> Result | None:
        """:func:`evaluate`, abandoned (``None``) on a stop signal in one process."""
        try:
            with self.stop.step_region():
                return evaluate(self.run, self.stop)
        except Stopped as stopped:
            if stopped.again:
                raise
            return None

    @property
    def stopped_early(self) -> bool:
        """``early_stop`` epochs passed without a better evaluation score — top-1, or mean AUROC for multi-label
        (from the history: resume-safe)."""
        return self.epoch < self.config.epochs and should_stop(self.history, self.config.early_stop,
                                                               self.run.task.score_column)

    def _train_epoch(self) -> bool:
        """The unfinished epoch from ``self.step`` on; ``False`` when stopped by a signal (state saved by the
        caller)."""
        rank = self.context.rank
        start_epoch(self.run, self.config.seed, self.epoch, self.step,
                    None if self.rng_states is None else self.rng_states[rank])
        if self.step == 0:
            self.totals = EpochTotals()
        self.rng_states = None
        report = progress.step_reporter(self.config, self.context, self.epoch, self.step, self.run.steps_per_epoch)
        self.step = train_epoch(self.run, self.epoch, self.step, self.totals, self.config.accumulate, self.stop,
                                report, self._diverged_at)
        return self.step == self.run.steps_per_epoch and not self.stop.agreed

    def _diverged_at(self, step: int) -> str:
        return (f"at epoch {self.epoch + 1}, step {step + 1}: training stopped; "
                f"{kept_checkpoint(self.checkpoint_path)}")

    def _end_epoch(self, result: Result, runlog: RunLog | None) -> None:
        """Record the finished epoch, save last/ (and best/ when it improved) and the checkpoint, log it."""
        if not math.isfinite(result.loss):  # the epoch's last step diverged after its loss was checked
            raise TrainingDiverged(f"evaluation loss is {result.loss} after epoch {self.epoch + 1}: the weights "
                                   "diverged; training stopped and nothing of this epoch was saved; "
                                   f"{kept_checkpoint(self.checkpoint_path)}. Lower the learning rate or check the "
                                   "data")
        row = epoch_row(self.run, self.epoch, self.totals, result)
        self.history.append(row)
        self.epoch += 1
        self.step = 0
        score = self.run.task.score(result)  # top-1, or mean AUROC for multi-label
        improved = score > self.best_acc
        self.best_acc = max(self.best_acc, score)
        self.run.model.meta = self.run.task.saved_meta(self.run.model.meta, result)
        if self.context.is_main:
            self.run.model.save_pretrained(self.run_dir / LAST_DIR)
            if improved:
                self.run.model.save_pretrained(self.run_dir / BEST_DIR)
        self._save_checkpoint()
        if runlog:
            runlog.write_epoch(self.history)
            progress.log_epoch(row, self.config.epochs)
            if self.stopped_early:
                progress.log_early_stop(self.history, self.config.early_stop, self.run.task.score_column,
                                        self.run.task.metric_name)

    def _save_checkpoint(self) -> None:
        states = distributed.gather(rng_state(), self.context)
        if not self.context.is_main:
            return
        run = self.run
        TrainingCheckpoint(
            model=run.model.state_dict(), optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(),
            scaler=run.scaler.state_dict(), rng=states, epoch=self.epoch, step=self.step,
            steps_per_epoch=run.steps_per_epoch, partial=self.totals, best_acc=self.best_acc, history=self.history,
            config=self.config.to_dict(),
        ).save(self.checkpoint_path)
