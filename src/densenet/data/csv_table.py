"""CSV data sets: ``ROOT/train.csv`` and ``ROOT/val.csv`` (or ``ROOT/test.csv``), one row per sample.

The table: a ``path`` column (relative to ``ROOT``; an absolute path stays as it is) and either

- one ``label`` column: single-label classification; the class names are the training table's values (sorted,
  numerically when every value is an integer), or
- two or more label columns holding ``1``, ``0`` or nothing (unknown): multi-label classification, one sigmoid per
  column; the label names are the column names, in the file's order (the evaluation table must have the same).

Reading a table is separate from reading its files: :func:`read_table` gives paths and targets, and
:data:`SPLIT_MAKERS` turns them into a split of the table's input kind: 2-D images (:mod:`densenet.data.images`),
volumes or signals (:class:`~densenet.data.arrays.ArrayFiles`, read, resampled and augmented as the ``volumes`` and
``signals`` folder data sets are). The kind is declared (``csv_kind``) or, by default (``auto``), read from the
training table's paths (:func:`input_kind_of`): image extensions are images, NIfTI (``.nii``, ``.nii.gz``) volumes;
a ``.npy`` file may hold either a volume or a signal, so a table of them must declare which.

Targets of a multi-label split are ``float32 (L,)`` vectors per sample, ``nan`` where the label is unknown; the
training loss masks those out (:mod:`densenet.training.multilabel`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from densenet.data.arrays import EXTENSIONS, ArrayFiles, ArraySplit, ArrayTensors
from densenet.data.holdout import held_out
from densenet.data.images import IMAGE_EXTENSIONS, ImageFiles, ImageTensors, Split, is_image
from densenet.data.signals import is_signal
from densenet.data.volumes import NIFTI_EXTENSIONS, is_volume

PATH_COLUMN = "path"
LABEL_COLUMN = "label"
TRAIN_TABLE = "train.csv"
EVAL_TABLES = ("val.csv", "test.csv")
# what a multi-label cell may hold: known positive, known negative, unknown
POSITIVE, NEGATIVE, UNKNOWN = ("1", "1.0"), ("0", "0.0"), ("",)


@dataclass
class Table:
    """One CSV split as read: files and their targets, before any file is opened.

    Attributes:
        source: the CSV file.
        paths: each row's file (resolved against the CSV's directory).
        targets: single-label: class indices ``int``; multi-label: ``float32 (L,)`` with ``nan`` = unknown.
        names: class names (single-label) or label names (multi-label), in output order.
        multi_label: whether the table has label columns rather than one ``label`` column.
    """

    source: Path
    paths: list[str]
    targets: list[int] | list[Tensor]
    names: list[str]
    multi_label: bool


SplitMaker = Callable[[Path, list[tuple[str, object]], list[str]], Split | ArraySplit]
# input kind → which paths it reads and the split of such files
SPLIT_MAKERS: dict[str, tuple[Callable[[str], bool], SplitMaker]] = {
    "image": (is_image, lambda root, samples, names: ImageFiles(root, samples, names)),
    "volume": (is_volume, lambda root, samples, names: ArrayFiles(root, samples, names, "volume")),
    "signal": (is_signal, lambda root, samples, names: ArrayFiles(root, samples, names, "signal")),
}
CSV_KINDS = ("auto", *SPLIT_MAKERS)  # what ``csv_kind`` may say
KIND_EXTENSIONS = {"image": IMAGE_EXTENSIONS, **EXTENSIONS}


def table_path(root: str | Path, train: bool) -> Path:
    """``ROOT/train.csv``, or the first of ``ROOT/val.csv`` and ``ROOT/test.csv`` that exists.

    Raises:
        FileNotFoundError: the directory or the table is missing.
        NotADirectoryError: ``root`` is a file.
    """
    root = Path(root).expanduser()
    if root.is_file():
        raise NotADirectoryError(f"data directory {root} is a file; --data-dir names the directory that holds "
                                 f"{TRAIN_TABLE} and {EVAL_TABLES[0]}")
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist")
    names = (TRAIN_TABLE,) if train else EVAL_TABLES
    found = next((root / name for name in names if (root / name).is_file()), None)
    if found is None:
        hint = "" if train or not (root / TRAIN_TABLE).is_file() else f"; or hold out part of {TRAIN_TABLE} with " \
            "--val-fraction F"
        raise FileNotFoundError(f"data directory {root} has no {' or '.join(names)} (a CSV data set needs "
                                f"{TRAIN_TABLE} and {EVAL_TABLES[0]} or {EVAL_TABLES[1]}{hint})")
    return found


def read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and the rows of a CSV file, each row with its line number (cells stripped of surrounding
    blanks; blank lines skipped).

    Raises:
        ValueError: not UTF-8, no header, no rows, a row with more cells than the header, or a repeated column.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            lines = [[cell.strip() for cell in cells] for cells in csv.reader(handle)]
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text: {error.reason} at byte {error.start}") from error
    except csv.Error as error:
        raise ValueError(f"{path} is not a readable CSV file: {error}") from error
    numbered = [(number, cells) for number, cells in enumerate(lines, start=1) if any(cells)]  # blank lines skipped
    if not numbered:
        raise ValueError(f"{path} is empty: expected a header with a '{PATH_COLUMN}' column and label column(s)")
    header = numbered[0][1]
    if "" in header:
        raise ValueError(f"{path}: column {header.index('') + 1} of the header has no name")
    if len(set(header)) != len(header):
        repeated = sorted({name for name in header if header.count(name) > 1})
        raise ValueError(f"{path} repeats the column(s) {', '.join(map(repr, repeated))}")
    rows = []
    for number, cells in numbered[1:]:
        if len(cells) > len(header):
            raise ValueError(f"{path} line {number}: {len(cells)} cells for the header's {len(header)} columns")
        rows.append((number, dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=True))))
    if not rows:
        raise ValueError(f"{path} has a header but no rows")
    return header, rows


def label_columns(path: Path, header: Sequence[str]) -> tuple[list[str], bool]:
    """The label columns of a table and whether it is multi-label.

    Raises:
        ValueError: no ``path`` column, or no label column, or a ``label`` column beside other label columns.
    """
    if PATH_COLUMN not in header:
        raise ValueError(f"{path} has no '{PATH_COLUMN}' column (columns: {', '.join(header)})")
    labels = [name for name in header if name != PATH_COLUMN]
    if not labels:
        raise ValueError(f"{path} has no label column: add one '{LABEL_COLUMN}' column (single-label) or two or "
                         "more columns of 1/0/empty (multi-label)")
    if LABEL_COLUMN in labels and len(labels) > 1:
        raise ValueError(f"{path} has a '{LABEL_COLUMN}' column and other columns ({', '.join(labels)}): use one "
                         f"'{LABEL_COLUMN}' column (single-label) or only 1/0/empty label columns (multi-label)")
    if labels == [LABEL_COLUMN]:
        return labels, False
    if len(labels) < 2:
        raise ValueError(f"{path} has one label column {labels[0]!r}: name it '{LABEL_COLUMN}' for single-label "
                         "classes, or give two or more 1/0/empty columns for multi-label")
    return labels, True


def read_table(root: str | Path, train: bool, names: Sequence[str] | None = None) -> Table:
    """Read ``ROOT/train.csv`` (``train``) or the evaluation table and check every row.

    Args:
        names: the training table's class or label names; the evaluation table must fit them (read from
            ``train.csv`` when not given).

    Raises:
        FileNotFoundError: a missing table or a row's file that does not exist (the message names the row).
        ValueError: a missing column, a cell that is not a label, a class the training table does not have.
    """
    root = Path(root).expanduser()
    path = table_path(root, train)
    header, rows = read_rows(path)
    labels, multi = label_columns(path, header)
    if not train and names is None:
        names = read_table(root, True).names
    files = [_file_of(path, line, row[PATH_COLUMN]) for line, row in rows]
    if multi:
        if names is not None and list(names) != labels:
            raise ValueError(f"{path} has the label columns {', '.join(labels)}; the training table has "
                             f"{', '.join(names)}")
        targets: list = [_label_vector(path, line, row, labels) for line, row in rows]
        return Table(path, files, targets, labels, True)
    values = [(line, row[LABEL_COLUMN]) for line, row in rows]
    empty = next((line for line, value in values if not value), None)
    if empty is not None:
        raise ValueError(f"{path} line {empty}: the '{LABEL_COLUMN}' cell is empty (every sample needs its class)")
    classes = list(names) if names is not None else _sorted_classes([value for _, value in values])
    index = {name: i for i, name in enumerate(classes)}
    unknown = next(((line, value) for line, value in values if value not in index), None)
    if unknown is not None:
        raise ValueError(f"{path} line {unknown[0]}: class {unknown[1]!r} is not one of the training table's "
                         f"classes ({', '.join(classes[:10])}{', …' if len(classes) > 10 else ''})")
    return Table(path, files, [index[value] for _, value in values], classes, False)


def _file_of(table: Path, line: int, cell: str) -> str:
    if not cell:
        raise ValueError(f"{table} line {line}: the '{PATH_COLUMN}' cell is empty")
    file = table.parent / cell
    if not file.is_file():
        raise FileNotFoundError(f"{table} line {line}: file {file} does not exist")
    return str(file)


def _label_vector(table: Path, line: int, row: dict[str, str], labels: list[str]) -> Tensor:
    """``float32 (L,)``: 1, 0, or ``nan`` for an empty (unknown) cell."""
    values = []
    for name in labels:
        cell = row[name]
        if cell in POSITIVE:
            values.append(1.0)
        elif cell in NEGATIVE:
            values.append(0.0)
        elif cell in UNKNOWN:
            values.append(float("nan"))
        else:
            raise ValueError(f"{table} line {line}: column {name!r} holds {cell!r}; multi-label cells are 1, 0 or "
                             "empty (unknown) — map other codes (e.g. CheXpert's -1, uncertain) to one of those first")
    return torch.tensor(values, dtype=torch.float32)


def _sorted_classes(values: Sequence[str]) -> list[str]:
    distinct = set(values)
    if all(value.lstrip("-").isdigit() for value in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def csv_split(root: str | Path, train: bool, kind: str = "auto", val_fraction: float | None = None,
              seed: int = 0) -> Split | ArraySplit:
    """The training or evaluation split of the CSV data set in ``root``, as files of ``kind`` (``auto``: the kind
    :func:`input_kind_of` reads from the training table's paths). With ``val_fraction`` the root holds
    ``train.csv`` only and the evaluation split is that fraction of its rows
    (:func:`~densenet.data.holdout.held_out`: stratified by class, multi-label rows at random; fixed by ``seed``).

    Raises:
        FileNotFoundError, ValueError: as :func:`read_table`; ``ValueError`` also for a path ``kind`` does not read
            (or, with ``auto``, a table whose kind cannot be told), or ``val_fraction`` beside an evaluation table.
    """
    if val_fraction is not None:
        found = [name for name in EVAL_TABLES if (Path(root).expanduser() / name).is_file()]
        if found:
            raise ValueError(f"{Path(root).expanduser()} has {found[0]} already; --val-fraction holds out part of "
                             f"{TRAIN_TABLE} only when there is no {' or '.join(EVAL_TABLES)}")
    table = read_table(root, train or val_fraction is not None)
    resolved = table_kind(root) if kind == "auto" else kind
    input_kind_of(table.source, table.paths, resolved)  # every path of this table is of that kind
    samples: list[tuple[str, object]] = list(zip(table.paths, table.targets, strict=True))
    if val_fraction is not None:
        samples = held_out(ImageFiles(table.source.parent, samples, table.names), val_fraction, seed, train).samples
    _, make = SPLIT_MAKERS[resolved]
    return make(table.source.parent, samples, table.names)


def table_kind(root: str | Path) -> str:
    """The input kind of the CSV data set in ``root``, read from its training table's paths (:func:`input_kind_of`).

    Raises:
        FileNotFoundError, ValueError: no training table, no ``path`` column, or a kind that cannot be told.
    """
    path = table_path(root, train=True)
    header, rows = read_rows(path)
    label_columns(path, header)
    return input_kind_of(path, [row[PATH_COLUMN] for _, row in rows], "auto")


def input_kind_of(table: Path, paths: Sequence[str], declared: str = "auto") -> str:
    """The input kind of ``table``'s ``paths``: ``declared``, checked against every path, or (``auto``) the one kind
    that reads them all: images by their extensions, NIfTI files as volumes, ``.csv`` files as signals.

    Raises:
        ValueError: a path ``declared`` does not read; with ``auto``, a path no kind reads, a table that mixes kinds,
            or ``.npy`` files only (a volume or a signal: the table must say which).
    """
    if declared not in CSV_KINDS:
        raise ValueError(f"csv_kind must be one of {', '.join(CSV_KINDS)}, got {declared!r}")
    kinds = [name for name in SPLIT_MAKERS if declared in ("auto", name)]
    for path in paths:
        readers = [name for name in kinds if SPLIT_MAKERS[name][0](path)]
        if not readers:
            raise ValueError(_unreadable_path(table, path, declared, kinds))
        kinds = readers
    if len(kinds) > 1:  # .npy files only
        raise ValueError(f"{table}: its files hold {' or '.join(k + 's' for k in kinds)} ({Path(paths[0]).suffix} "
                         "files); say which with --csv-kind " + " or --csv-kind ".join(kinds) +
                         " (csv_kind in a recipe)")
    return kinds[0]


def _unreadable_path(table: Path, path: str, declared: str, kinds: list[str]) -> str:
    """Why ``path`` fits none of ``kinds`` (what is left of ``declared`` after the table's earlier paths)."""
    own = [name for name in SPLIT_MAKERS if SPLIT_MAKERS[name][0](path)]
    if declared != "auto":
        guess = f" (a {' or '.join(own)} file)" if own else ""
        article = "an" if declared == "image" else "a"
        return (f"{table}: {path} is not {article} {declared} file{guess}; --csv-kind {declared} reads "
                f"{' '.join(KIND_EXTENSIONS[declared])}")
    if own:
        return (f"{table} mixes kinds of file: {path} is a {' or '.join(own)} file, earlier rows are "
                f"{' or '.join(k + 's' for k in kinds)}; one kind per data set")
    return (f"{table}: no reader for {path} (images: {' '.join(IMAGE_EXTENSIONS[:3])} …; volumes: "
            f"{' '.join(NIFTI_EXTENSIONS)} .npy; signals: .npy .csv)")


def label_matrix(split: Split | ArraySplit) -> Tensor | None:
    """A multi-label split's targets as one ``float32 (N, L)`` matrix (``nan`` = unknown); ``None`` for a
    single-label split (its targets are class indices)."""
    if isinstance(split, ImageTensors | ArrayTensors):  # targets held as one tensor
        return split.targets.float() if split.targets.ndim == 2 else None
    targets = [target for _, target in split.samples]
    if not targets or not isinstance(targets[0], Tensor):
        return None
    return torch.stack(targets)  # (N, L)
