"""A validation split held out of a training folder or table (``--val-fraction``): stratified by class, a pure
function of the sorted file list (a table: its rows in order), the fraction and the seed, so a resumed run holds out
the same images."""

from __future__ import annotations

from torch import Tensor

from densenet.data.images import ImageFiles


def held_out(files: ImageFiles, fraction: float, seed: int, train: bool) -> ImageFiles:
    """The training part (``train``) or the held-out part of ``files``: ``round(fraction · N)`` images (at least
    one per class) chosen by scikit-learn's stratified ``train_test_split`` with ``random_state = seed mod 2³²``.

    Multi-label samples (``float32 (L,)`` targets, ``nan`` = unknown, from a CSV table) are held out plainly at
    random by the same seed, not stratified: a row carries several labels, some unknown, so no single class per row
    exists to stratify by, and a proxy (e.g. the rarest known positive) leaves strata of one row that
    ``train_test_split`` cannot place. Random rows keep each label's frequency in expectation; a label whose held-out
    entries come out all one class is reported as such and left out of the mean AUROC by the evaluation.

    Raises:
        ValueError: ``fraction`` is not in (0, 1), or the split cannot keep every class on both sides (a class
            with a single image, or fewer held-out images than classes); the message says which.
    """
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    targets = [target for _, target in files.samples]
    size = len(targets)
    held = round(fraction * size)
    multi_label = bool(targets) and isinstance(targets[0], Tensor)
    if multi_label:
        if held < 1 or size - held < 1:
            raise ValueError(f"--val-fraction {fraction} of {size} rows holds out {held}; both sides need at least one")
    else:
        _check_stratifiable(files, targets, fraction, held)
    train_indices, val_indices = train_test_split(list(range(size)), test_size=held,
                                                  stratify=None if multi_label else targets, random_state=seed % 2**32)
    chosen = sorted(train_indices if train else val_indices)
    return ImageFiles(files.root, [files.samples[i] for i in chosen], files.class_names)


def _check_stratifiable(files: ImageFiles, targets: list[int], fraction: float, held: int) -> None:
    """Raise unless a stratified split of ``held`` images keeps every class on both sides."""
    counts = [targets.count(index) for index in range(len(files.class_names))]
    single = [name for name, count in zip(files.class_names, counts, strict=True) if count < 2]
    if single:
        raise ValueError(f"cannot hold out a stratified validation split of {files.root}: class(es) with fewer than "
                         f"2 images: {', '.join(single[:5])}")
    classes, size = len(files.class_names), len(targets)
    if held < classes or size - held < classes:
        raise ValueError(f"--val-fraction {fraction} of {size} images holds out {held}; a stratified split needs at "
                         f"least {classes} (one per class) on each side")
