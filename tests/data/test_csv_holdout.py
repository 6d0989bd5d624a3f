"""A validation split held out of a CSV table's rows (``--val-fraction`` with ``train.csv`` only): disjoint from
the training rows, the right count, stratified for a single-label table, fixed by the seed, for every kind of path."""

from __future__ import annotations

from pathlib import Path

import pytest

from densenet.data.csv_table import csv_split
from densenet.data.datasets import DataSpec, load_split


def _table(root: Path, header: str, rows: list[str], suffix: str = ".png") -> Path:
    """``root/train.csv`` with ``rows`` (each row's file ``f/NNN<suffix>``, created empty: only its name is read)."""
    (root / "f").mkdir(parents=True)
    lines = [header]
    for index, cells in enumerate(rows):
        (root / "f" / f"{index:03d}{suffix}").touch()
        lines.append(f"f/{index:03d}{suffix},{cells}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


def _single(root: Path, suffix: str = ".png") -> Path:
    return _table(root, "path,label", ["cat"] * 20 + ["dog"] * 10 + ["owl"] * 30, suffix)  # 20 / 10 / 30 rows


def test_single_label_rows_held_out_stratified_disjoint_and_fixed_by_the_seed(tmp_path):
    root = _single(tmp_path)
    train, val = csv_split(root, True, "image", 0.2, 7), csv_split(root, False, "image", 0.2, 7)
    assert len(val) == 12 and len(train) == 48
    assert [sum(t == c for _, t in val.samples) for c in range(3)] == [4, 2, 6]  # 20 % of 20, 10 and 30
    assert set(train.samples).isdisjoint(val.samples)
    assert {path for path, _ in train.samples + val.samples} == {str(root / "f" / f"{i:03d}.png") for i in range(60)}
    assert val.class_names == train.class_names == ["cat", "dog", "owl"]
    assert csv_split(root, False, "image", 0.2, 7).samples == val.samples  # the same seed, the same rows
    assert csv_split(root, False, "image", 0.2, 8).samples != val.samples


def test_multi_label_rows_held_out_at_random_by_the_seed(tmp_path):
    root = _table(tmp_path, "path,a,b", [f"{i % 2},{'' if i % 3 else 1}" for i in range(20)])
    train, val = csv_split(root, True, "image", 0.25, 3), csv_split(root, False, "image", 0.25, 3)
    assert len(val) == 5 and len(train) == 15
    assert {p for p, _ in train.samples}.isdisjoint(p for p, _ in val.samples)
    assert [p for p, _ in csv_split(root, False, "image", 0.25, 3).samples] == [p for p, _ in val.samples]
    assert val.class_names == ["a", "b"] and val.samples[0][1].shape == (2,)


def test_held_out_rows_of_signals_through_the_data_spec(tmp_path):
    root = _single(tmp_path, ".npy")
    spec = DataSpec(name="csv", data_dir=str(root), csv_kind="signal", val_fraction=0.5, seed=1)
    train, val = load_split(spec, "train"), load_split(spec, "eval")
    assert getattr(val, "kind", None) == "signal" and len(val) == len(train) == 30
    assert [sum(t == c for _, t in val.samples) for c in range(3)] == [10, 5, 15]


def test_val_fraction_beside_an_evaluation_table_or_without_train_csv_is_one_line(tmp_path):
    root = _single(tmp_path)
    (root / "test.csv").write_text("path,label\nf/000.png,cat\n")
    with pytest.raises(ValueError, match=r"has test\.csv already; --val-fraction holds out part of train\.csv"):
        csv_split(root, False, "image", 0.2, 0)
    (root / "train.csv").unlink()
    (root / "test.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no train\.csv"):
        csv_split(root, True, "image", 0.2, 0)
