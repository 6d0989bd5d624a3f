"""What a run reports while it trains (rank 0 only): the start line, a per-step reporter (a tqdm bar on a
terminal, plain log lines every ``log_every`` steps otherwise) and the line after each epoch."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from densenet.meta import MULTI_LABEL
from densenet.model import DenseNet
from densenet.training.checkpoint import EpochTotals
from densenet.training.distributed import Context
from densenet.training.recipe import TrainConfig
from densenet.training.signals import signal_name

logger = logging.getLogger("densenet")

StepReporter = Callable[[int, EpochTotals], None]


def log_start(config: TrainConfig, context: Context, model: DenseNet, images: tuple[int, int], classes: int,
              steps_per_epoch: int, run_dir: Path, augment: str = "none") -> None:
    """The run's first line: model, parameters, data (``images`` = train, eval), input size and augmentation,
    processes, steps per epoch."""
    params = sum(p.numel() for p in model.parameters())
    preprocessing = model.meta.input_preprocessing(model.config)
    shape = "×".join([str(preprocessing.crop)] * model.config.spatial_dims)  # 224×224, 32×32×32, 256
    items = f"{getattr(preprocessing, 'kind', 'image')}s"
    outputs = "labels" if model.meta.task == MULTI_LABEL else "classes"
    logger.info("training %s (%s parameters) on %s: %d train / %d eval %s, %d %s, %s input, "
                "augmentation %s, %s × %d process(es), %d steps/epoch; run directory %s",
                model.meta.name or "a custom DenseNet", f"{params:,}", config.dataset, images[0], images[1], items,
                classes, outputs, shape, augment, context.device, context.world_size, steps_per_epoch, run_dir)


def log_resume(epoch: int, step: int) -> None:
    """Where a resumed run continues (``epoch`` finished epochs, ``step`` steps into the next)."""
    logger.info("resuming at epoch %d, step %d", epoch + 1, step)


def step_reporter(config: TrainConfig, context: Context, epoch: int, step: int, total: int) -> StepReporter:
    """A reporter called after each step of epoch ``epoch`` (0-based), which starts at ``step`` of ``total``."""
    if not context.is_main:
        return lambda step, totals: None
    world = context.world_size

    def stats(totals: EpochTotals) -> tuple[float, float, float]:
        seen = max(totals.seen, 1.0)
        rate = totals.seen * world / totals.seconds if totals.seconds else 0.0
        return totals.loss_sum / seen, totals.correct / seen, rate

    if sys.stderr.isatty():
        bar = tqdm(total=total, initial=step, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   dynamic_ncols=True)

        def update_bar(step: int, totals: EpochTotals) -> None:
            loss, acc, rate = stats(totals)
            bar.set_postfix_str(f"loss {loss:.4f} acc {acc:.2%} {rate:.0f} img/s", refresh=False)
            bar.update(step - bar.n)
            if step == total:
                bar.close()

        return update_bar
    every = config.log_every

    def log_line(step: int, totals: EpochTotals) -> None:
        if every and step % every == 0 and step < total:
            loss, acc, rate = stats(totals)
            eta = (total - step) * totals.seconds / step
            logger.info("epoch %d/%d step %d/%d  loss %.4f acc %.2f%%  %.0f img/s  eta %.0fs", epoch + 1,
                        config.epochs, step, total, loss, 100 * acc, rate, eta)

    return log_line


def log_epoch(row: dict[str, float], epochs: int) -> None:
    """The line after an epoch: its training and evaluation metrics (a row of ``metrics.csv``)."""
    skipped = row["skipped_images"]
    logger.info("epoch %d/%d  train loss %.4f acc %.2f%%  eval loss %.4f acc %.2f%%  mean lr %.4g  %.0f img/s  "
                "%.1fs%s",
                row["epoch"], epochs, row["train_loss"], 100 * row["train_acc"], row["eval_loss"],
                100 * row["eval_acc"], row["lr"], row["images_per_second"], row["train_seconds"],
                f"  skipped {int(skipped)} unreadable image(s)" if skipped else "")
    if "eval_mean_auroc" in row:  # multi-label: the means, then each label's AUROC / AP
        labels = [key.split("/", 1)[1] for key in row if key.startswith("eval_auroc/")]
        logger.info("epoch %d/%d  eval mean AUROC %.4f  mean AP %.4f  per label AUROC/AP: %s", row["epoch"], epochs,
                    row["eval_mean_auroc"], row["eval_mean_ap"], ", ".join(
                        f"{name} {row['eval_auroc/' + name]:.3f}/{row['eval_ap/' + name]:.3f}" for name in labels))


def log_early_stop(history: list[dict[str, float]], patience: int | None, column: str, metric_name: str) -> None:
    """The line after the epoch that ends a run early: how long ``column`` (the task's score, ``metric_name``) went
    without improving, and the best epoch."""
    best = max(history, key=lambda row: row[column])
    logger.info("early stop after epoch %d: eval %s has not improved for %s epoch(s) (best %.4f at epoch %d)",
                history[-1]["epoch"], metric_name, patience, best[column], best["epoch"])


def log_interrupted(epoch: int, step: int, steps_per_epoch: int, checkpoint: Path, signum: int | None = None) -> None:
    """A debug line after a stop by a signal: which signal, and where the checkpoint was saved (the commands print
    their own one line, :func:`densenet.cli.train.stopped_line`)."""
    logger.debug("stopped by %s: checkpoint saved at epoch %d, step %d of %d in %s",
                "a signal" if signum is None else signal_name(signum), epoch + 1, step, steps_per_epoch, checkpoint)

