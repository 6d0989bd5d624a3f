"""One ROC-curve PNG per label of a multi-label evaluation (``densenet eval``), each named after its label, the
names made safe for any file system."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from densenet.fileio import safe_file_stem
from densenet.training.multilabel import MultiLabelResult
from densenet.training.plots import plot_roc_curves


def label_file_stems(names: Sequence[str]) -> list[str]:
    """A file-name stem per label (:func:`~densenet.fileio.safe_file_stem`), distinct even where case is ignored
    (macOS, Windows): a stem already taken gets ``-2``, ``-3`` …"""
    stems: list[str] = []
    taken: set[str] = set()
    for name in names:
        stem = safe_file_stem(name)
        unique, number = stem, 1
        while unique.lower() in taken:
            number += 1
            unique = f"{stem}-{number}"
        taken.add(unique.lower())
        stems.append(unique)
    return stems


def plot_label_rocs(result: MultiLabelResult, directory: Path, title: str) -> dict[str, Path]:
    """Write ``directory/<label>.png`` for every label (its ROC curve and AUROC, or the note that its known entries
    hold one class only); return the path of each label's file by label name."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for column, (name, stem) in enumerate(zip(result.class_names, label_file_stems(result.class_names), strict=True)):
        paths[name] = plot_roc_curves(result, directory / f"{stem}.png", title=f"{title}: {name}", columns=[column])
    return paths
