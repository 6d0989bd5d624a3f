"""The run directory's policy: where a run writes, what a start may find there, and what a run that fails before
its first checkpoint removes again (what it created — never the user's files)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from densenet.training import distributed
from densenet.training.checkpoint import CHECKPOINT_FILE
from densenet.training.distributed import Context
from densenet.training.recipe import TrainConfig
from densenet.training.runlog import CONFIG_FILE, TENSORBOARD_DIR, RunLog


def run_directory(config: TrainConfig, context: Context) -> Path:
    """``config.out``, else ``runs/<dataset>-<model>-<time>`` (rank 0's time, shared with every process)."""
    if config.out:
        return Path(config.out)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = distributed.gather(f"{config.dataset}-{config.model}-{stamp}", context)[0]
    return Path("runs") / name


def checkpoint_to_use(run_dir: Path, resume: bool) -> Path:
    """The run's checkpoint path, after checking that a resume has one and a new run does not overwrite one.

    Raises:
        FileNotFoundError: nothing to resume.
        ValueError: a new run in a directory that already holds one.
    """
    path = run_dir / CHECKPOINT_FILE
    if resume and not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist")
    if not resume and path.exists():
        raise ValueError(f"{run_dir} already holds a run; resume it (--resume {run_dir}) or choose another --out")
    return path


def paths_to_create(run_dir: Path) -> list[Path]:
    """What a run's start will create: the topmost missing directory of ``run_dir`` and its parents, or, when
    ``run_dir`` exists, the run files in it that do not exist yet."""
    missing = [path for path in (run_dir, *run_dir.parents) if not path.exists()]
    if missing:
        return [missing[-1]]
    return [path for path in (run_dir / CONFIG_FILE, run_dir / TENSORBOARD_DIR) if not path.exists()]


@contextlib.contextmanager
def run_records(run_dir: Path, checkpoint: Path, first_epoch: int, is_main: bool) -> Iterator[RunLog | None]:
    """The run's records (rank 0 only; ``None`` elsewhere), closed when the block ends.

    When the block raises before ``checkpoint`` exists, what the start created (:func:`paths_to_create`) is removed.
    """
    created = paths_to_create(run_dir)
    runlog = RunLog(run_dir, first_epoch=first_epoch) if is_main else None
    try:
        yield runlog
    except BaseException:
        if runlog:
            runlog.close()
            if not checkpoint.exists():  # failed before anything worth keeping
                for path in created:
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)
        raise
    if runlog:
        runlog.close()
