"""One epoch of training (resumable mid-epoch) and the evaluation after it, and the epoch's row of metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from densenet.data.seeds import mix_seed
from densenet.training import distributed
from densenet.training.build import Run
from densenet.training.checkpoint import EpochTotals, rng_state, set_rng_state
from densenet.training.finetune import set_backbone_frozen
from densenet.training.progress import StepReporter
from densenet.training.signals import Stopped, StopRequest
from densenet.training.step import optimisation_step
from densenet.training.task import Result


def start_epoch(run: Run, seed: int, epoch: int, step: int, rng: dict[str, Any] | None) -> None:
    """Put the generators where epoch ``epoch``, step ``step`` needs them: re-seeded from ``(seed, epoch, rank)``
    at an epoch's start, restored from this process's saved state ``rng`` when resuming mid-epoch."""
    if step == 0:
        torch.manual_seed(mix_seed(seed, epoch, run.context.rank))
    elif rng is not None:
        set_rng_state(rng)


def train_epoch(run: Run, epoch: int, step: int, totals: EpochTotals, accumulate: int, stop: StopRequest,
                report: StepReporter, diverged: Callable[[int], str]) -> int:
    """Train epoch ``epoch`` from step ``step`` on, adding to ``totals``; return the step reached.

    That is ``run.steps_per_epoch`` when the epoch is complete, fewer when ``stop`` was requested (the caller
    saves); ``totals.skipped`` adds the unreadable images met. A step abandoned by a stop signal
    (:class:`~densenet.training.signals.Stopped`) leaves no trace (:class:`_StepStart`), so that a resumed run
    takes the same step.
    ``diverged(step)`` describes the position for :class:`~densenet.training.step.TrainingDiverged`.
    """
    run.model.train()
    if run.freeze_epochs:
        set_backbone_frozen(run.model, epoch < run.freeze_epochs)
    run.train_loader.set_epoch(epoch, step * accumulate)
    skipped_before = len(run.train_loader.skipped)
    started = time.perf_counter() - totals.seconds
    batches = stop.fetching(run.train_loader)
    while step < run.steps_per_epoch:
        before = _StepStart(run) if stop.immediate else None
        try:
            taken = optimisation_step(run, batches, accumulate, stop, lambda at=step: diverged(at))
        except Stopped as stopped:
            if stopped.again or before is None:
                raise
            before.restore(run)
            stop.agreed = True
            break
        totals.loss_sum += taken.loss_sum
        totals.correct += taken.correct
        totals.seen += taken.seen
        step += 1
        totals.lr += (taken.lr - totals.lr) / step  # the mean lr of the epoch's steps so far (resume-safe)
        totals.seconds = time.perf_counter() - started
        report(step, totals)
        if stop.agreed:
            break
    totals.skipped += float(len(run.train_loader.skipped) - skipped_before)
    return step


class _StepStart:
    """What a step changes before its optimiser update, as it was when the step began: the random number generators
    (dropout), the model's buffers (batch-norm running statistics) and the unreadable files met; a few kB to a few
    MB, copied once per step so that an abandoned step can be undone."""

    def __init__(self, run: Run) -> None:
        self.rng = rng_state()
        self.buffers = [buffer.detach().clone() for buffer in run.model.buffers()]
        self.skipped = len(run.train_loader.skipped)

    def restore(self, run: Run) -> None:
        """Put the generators, buffers and count of skipped files back and drop the step's gradients (a resumed run
        reads the step's batch again)."""
        set_rng_state(self.rng)
        del run.train_loader.skipped[self.skipped:]
        with torch.no_grad():
            for buffer, saved in zip(run.model.buffers(), self.buffers, strict=True):
                buffer.copy_(saved)
        run.optimizer.zero_grad(set_to_none=True)


def evaluate(run: Run, stop: StopRequest | None = None) -> Result:
    """The task's metrics (top-1/top-5 accuracy, loss and confusion; multi-label: AUROC, AP) of the plain model on
    the evaluation split, over all processes (``stop``: its batches fetched outside the abortable region)."""
    run.model.eval()
    accumulator = run.task.accumulator(run.class_names)
    run.eval_loader.set_epoch(0)
    with torch.inference_mode():
        for images, targets in run.eval_loader if stop is None else stop.fetching(run.eval_loader):
            images = images.to(run.device, non_blocking=True, memory_format=run.memory_format)
            targets = targets.to(run.device, non_blocking=True)
            with run.autocast():
                logits = run.model(images).float()
            accumulator.update(logits, targets)
    accumulator.reduce(run.context)
    return accumulator.result()


def epoch_row(run: Run, epoch: int, totals: EpochTotals, result: Result) -> dict[str, float]:
    """The row of ``metrics.csv`` for finished epoch ``epoch`` (0-based): training totals summed over processes,
    the evaluation (the task's columns), and the mean lr of the epoch's steps."""
    summed = distributed.all_reduce(torch.tensor([totals.loss_sum, totals.correct, totals.seen, totals.skipped],
                                                 dtype=torch.float64), run.context)
    loss_sum, correct, seen, skipped = summed.tolist()
    seconds = totals.seconds
    return {
        "epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
        **run.task.eval_row(result),
        "lr": totals.lr, "train_seconds": seconds,
        "images_per_second": seen / seconds if seconds else 0.0, "skipped_images": skipped,
    }
