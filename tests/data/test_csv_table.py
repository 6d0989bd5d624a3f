"""CSV data sets: paths, label columns, unknown labels, single-label classes, and every malformed table as a
clear error naming the file and line."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from densenet.data.csv_table import csv_split, label_matrix, read_table
from densenet.data.datasets import DataSpec, load_split
from densenet.data.images import ImageFiles, ImageTensors


def _image(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(path)


def _data_set(root: Path, train: str, val: str | None = None, files: tuple[str, ...] = ("a.png", "b.png", "c.png"),
              val_name: str = "val.csv") -> Path:
    for index, name in enumerate(files):
        _image(root / "img" / name, 40 * index)
    (root / "train.csv").write_text(train)
    if val is not None:
        (root / val_name).write_text(val)
    return root


MULTI = "path,cat,dog,bird\nimg/a.png,1,0,\nimg/b.png, 0 ,1.0,1\n\nimg/c.png,,,0.0\n"


def test_multi_label_table(tmp_path):
    root = _data_set(tmp_path, MULTI, MULTI)
    table = read_table(root, train=True)
    assert table.multi_label and table.names == ["cat", "dog", "bird"]
    assert table.paths == [str(root / "img" / name) for name in ("a.png", "b.png", "c.png")]
    expected = torch.tensor([[1, 0, math.nan], [0, 1, 1], [math.nan, math.nan, 0]])
    assert torch.equal(torch.stack(table.targets).isnan(), expected.isnan())
    assert torch.equal(torch.stack(table.targets).nan_to_num(-1), expected.nan_to_num(-1))
    split = csv_split(root, train=False)
    assert isinstance(split, ImageFiles) and split.class_names == ["cat", "dog", "bird"] and split.root == root
    matrix = label_matrix(split)
    assert matrix is not None and matrix.shape == (3, 3) and matrix.isnan().sum() == 3


def test_single_label_table_names_classes_from_training_values(tmp_path):
    root = _data_set(tmp_path, "path,label\nimg/a.png,10\nimg/b.png,2\nimg/c.png,10\n", "path,label\nimg/c.png,2\n",
                     val_name="test.csv")
    train = read_table(root, train=True)
    assert not train.multi_label and train.names == ["2", "10"] and train.targets == [1, 0, 1]  # numeric order
    split = csv_split(root, train=False)  # test.csv when there is no val.csv
    assert isinstance(split, ImageFiles) and split.samples == [(str(root / "img" / "c.png"), 0)]
    assert label_matrix(split) is None


def test_cached_multi_label_split_keeps_label_vectors(tmp_path):
    root = _data_set(tmp_path, MULTI, MULTI)
    spec = DataSpec(name="csv", data_dir=str(root), image_size=4, cache=True)
    split = load_split(spec, "train")
    assert isinstance(split, ImageTensors) and split.images.shape == (3, 3, 4, 4)
    assert split.targets.shape == (3, 3) and split.targets.isnan().sum() == 3
    assert label_matrix(split) is not None


@pytest.mark.parametrize(("train", "error", "pattern"), [
    ("", ValueError, r"train\.csv is empty"),
    ("path,cat,dog\n", ValueError, "has a header but no rows"),
    ("file,cat,dog\nimg/a.png,1,0\n", ValueError, "has no 'path' column"),
    ("path\nimg/a.png\n", ValueError, "has no label column"),
    ("path,cat\nimg/a.png,1\n", ValueError, "one label column 'cat'"),
    ("path,label,dog\nimg/a.png,1,0\n", ValueError, "a 'label' column and other columns"),
    ("path,cat,cat\nimg/a.png,1,0\n", ValueError, "repeats the column"),
    ("path,,dog\nimg/a.png,1,0\n", ValueError, "column 2 of the header has no name"),
    ("path,cat,dog\nimg/a.png,1,0\nimg/zzz.png,0,1\n", FileNotFoundError, r"line 3: file .*zzz\.png does not exist"),
    ("path,cat,dog\nimg/a.png,1,2\n", ValueError, r"line 2: column 'dog' holds '2'; multi-label cells are 1, 0 or"),
    ("path,cat,dog\nimg/a.png,-1,0\n", ValueError, "CheXpert's -1"),
    ("path,cat,dog\nimg/a.png,yes,0\n", ValueError, "holds 'yes'"),
    ("path,cat,dog\nimg/a.png,1,0,1\n", ValueError, "line 2: 4 cells for the header's 3 columns"),
    ("path,label\nimg/a.png,\n", ValueError, "line 2: the 'label' cell is empty"),
    ("path,cat,dog\n,1,0\n", ValueError, "line 2: the 'path' cell is empty"),
    ("path,cat,dog\nimg/notes.txt,1,0\n", ValueError, r"no reader for .*notes\.txt"),
])
def test_bad_training_tables(tmp_path, train, error, pattern):
    root = _data_set(tmp_path, train)
    (root / "img" / "notes.txt").write_text("not an image")
    with pytest.raises(error, match=pattern):
        csv_split(root, train=True)


@pytest.mark.parametrize(("train", "val", "pattern"), [
    (MULTI, "path,cat,dog\nimg/a.png,1,0\n", "has the label columns cat, dog; the training table has cat, dog, bird"),
    ("path,label\nimg/a.png,x\n", "path,label\nimg/b.png,y\n", "line 2: class 'y' is not one of the training"),
])
def test_evaluation_table_must_fit_the_training_table(tmp_path, train, val, pattern):
    root = _data_set(tmp_path, train, val)
    with pytest.raises(ValueError, match=pattern):
        csv_split(root, train=False)


def test_missing_tables_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        csv_split(tmp_path / "nowhere", train=True)
    root = _data_set(tmp_path, MULTI)
    with pytest.raises(FileNotFoundError, match=r"has no val\.csv or test\.csv"):
        csv_split(root, train=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError):
        csv_split(tmp_path / "afile", train=True)
    (root / "train.csv").write_bytes(b"path,cat,dog\n\xff\xfe,1,0\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        csv_split(root, train=True)


def test_data_spec_accepts_csv(tmp_path):
    with pytest.raises(ValueError, match="needs a data directory"):
        DataSpec(name="csv")
    assert DataSpec(name="csv", data_dir=str(tmp_path), image_size=32, csv_kind="image").augment_kind == "cifar"
    (tmp_path / "train.csv").write_text("path,label\na.png,x\n")  # csv_kind auto: the kind of the table's paths
    assert DataSpec(name="csv", data_dir=str(tmp_path), image_size=32).augment_kind == "cifar"
    (tmp_path / "train.csv").write_text("path,label\na.nii.gz,x\n")
    assert DataSpec(name="csv", data_dir=str(tmp_path), image_size=32).augment_kind == "volume"
