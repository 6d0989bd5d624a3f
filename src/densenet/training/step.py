"""One optimisation step: ``accumulate`` micro-batches forward and backward (under autocast, the gradients of all
but the last kept local under DDP), a check that the loss is finite and whether any process was asked to stop,
then the optimiser and schedule step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from densenet.training import distributed
from densenet.training.build import Run
from densenet.training.signals import StopRequest


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class StepTotals:
    """What one step adds to the epoch's totals: summed loss, correct predictions, images, and its learning rate."""

    loss_sum: float
    correct: float
    seen: float
    lr: float


def optimisation_step(run: Run, batches: Iterator[tuple[Tensor, Tensor]], accumulate: int, stop: StopRequest,
                      diverged: Callable[[], str]) -> StepTotals:
    """Train on the next ``accumulate`` micro-batches of ``batches`` and take one optimiser step.

    The loss of each micro-batch is divided by ``accumulate``, so the step follows the mean gradient of the
    whole batch. Every process learns whether any of them saw a non-finite loss or was asked to stop (then
    ``stop.agreed`` is set on all of them, so that they stop at the same step). In one process the forward and
    backward passes are abortable (:meth:`~densenet.training.signals.StopRequest.step_region`): a stop signal there
    raises :class:`~densenet.training.signals.Stopped` before the optimiser update, the weights untouched.

    Args:
        diverged: says where the step is and what was kept (``"at epoch E, step S: training stopped; …"``), for
            the error if the loss is not finite.

    Raises:
        TrainingDiverged: the loss is NaN or infinite (no optimiser step was taken).
        ValueError: the loader ran out of batches (every image of a batch unreadable).
        Stopped: a stop signal during the forward and backward passes (one process).
    """
    with stop.step_region():
        loss_sum, correct, seen = _forward_backward(run, batches, accumulate)
        flags = torch.stack([(~torch.isfinite(loss_sum)).float(), torch.tensor(float(stop.requested),
                                                                                 device=run.device)])
        nonfinite, stopping = distributed.all_reduce(flags, run.context, torch.distributed.ReduceOp.MAX).tolist()
    if nonfinite:
        raise TrainingDiverged(f"loss is {loss_sum.item() / max(seen, 1)} {diverged()}. Lower the learning rate or "
                               "check the data")
    stop.agreed = bool(stopping)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    lr = run.optimizer.param_groups[0]["lr"]
    run.scheduler.step()
    return StepTotals(loss_sum.item(), correct.item(), float(seen), lr)


def _forward_backward(run: Run, batches: Iterator[tuple[Tensor, Tensor]], accumulate: int) -> tuple[Tensor, Tensor,
                                                                                                      int]:
    """The micro-batches' forward and backward passes, gradients summed into the parameters' ``.grad``: the summed
    loss and correct count (device scalars) and the images seen."""
    device = run.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    for micro in range(accumulate):
        try:
            images, targets = next(batches)
        except StopIteration:
            raise ValueError(f"every image of a batch was unreadable ({len(run.train_loader.skipped)} unreadable "
                             "so far, see the warnings): fix or remove them") from None
        images = images.to(device, non_blocking=True, memory_format=run.memory_format)
        targets = targets.to(device, non_blocking=True)
        sync = micro == accumulate - 1 or not isinstance(run.model_for_sync, DistributedDataParallel)
        with contextlib.nullcontext() if sync else run.model_for_sync.no_sync(), run.autocast():
            logits = run.net(images)
            loss = run.criterion(logits.float(), targets)
        run.scaler.scale(loss / accumulate).backward()
        loss_sum += loss.detach() * len(targets)
        correct += run.task.correct(logits.detach().float(), targets)
        seen += len(targets)
    return loss_sum, correct, seen
