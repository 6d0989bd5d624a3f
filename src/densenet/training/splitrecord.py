"""The record of a held-out validation split (``--val-fraction``): ``RUN_DIR/val_split.txt`` lists its files, and a
resumed run checks that it holds out the same ones."""

from __future__ import annotations

import os
from pathlib import Path

from densenet.data.datasets import folder_files
from densenet.fileio import write_text
from densenet.training.recipe import TrainConfig

VAL_SPLIT_FILE = "val_split.txt"


def record_val_split(config: TrainConfig, run_dir: Path) -> None:
    """Write the held-out files (relative to ``train/``, or a csv's root) into the run; on ``--resume`` compare instead.

    Raises:
        ValueError: a resumed run would hold out other files than those recorded (the folder changed).
    """
    if config.val_fraction is None:
        return
    files = folder_files(config.data_spec(), train=False)
    text = "".join(f"{Path(os.path.relpath(path, files.root)).as_posix()}\n" for path, _ in files.samples)
    path = run_dir / VAL_SPLIT_FILE
    if config.resume and path.is_file():
        if path.read_text(encoding="utf-8") != text:
            raise ValueError(f"{files.root} now holds out other validation images than the run recorded in {path}: "
                             "the folder changed since the run started")
        return
    write_text(path, text)
