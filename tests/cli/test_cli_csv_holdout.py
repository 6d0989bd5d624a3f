"""``--val-fraction`` on a CSV data set with ``train.csv`` only, through the CLI: a multi-label table trains with
the held-out rows recorded, ``--resume`` holds out the same rows, and a table with ``val.csv`` refuses it."""

from __future__ import annotations

import shutil

import yaml

from densenet.cli import main
from densenet.data.shapes import write_shapes_dataset

TINY = ["--model-arg", "block_config=[2,2]", "--model-arg", "growth_rate=8", "--log-every", "0", "--workers", "0",
        "--image-size", "16", "--batch-size", "8", "--augment", "none"]


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and not any("Traceback" in line for line in lines)
    return lines[-1]


def test_val_fraction_holds_out_recorded_rows_of_a_multi_label_table(tmp_path, capsys):
    data = write_shapes_dataset(tmp_path / "shapes", train=24, val=4, size=16, seed=2)
    train = ["train", "--dataset", "csv", "--data-dir", str(data), "--epochs", "1", "--out", str(tmp_path / "run"),
             "--val-fraction", "0.25", *TINY]
    assert main(train) == 1  # val.csv is there: nothing to hold out
    assert "has val.csv already; --val-fraction" in _error_line(capsys)
    (data / "val.csv").unlink()
    assert main(train[:-len(TINY) - 2] + TINY) == 1
    assert "has no val.csv or test.csv" in (line := _error_line(capsys)) and "--val-fraction" in line
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
    assert main(train) == 0
    run = tmp_path / "run"
    assert "18 train / 6 eval images" in capsys.readouterr().err
    held = (run / "val_split.txt").read_text().split()
    rows = [line.split(",")[0] for line in (data / "train.csv").read_text().splitlines()[1:]]
    assert len(held) == 6 and set(held) <= set(rows) and len(set(held)) == 6
    assert yaml.safe_load((run / "config.yaml").read_text())["val_fraction"] == 0.25
    assert main(["train", "--resume", str(run), "--epochs", "2", *TINY[:8]]) == 0  # the same rows: it goes on
    assert (run / "val_split.txt").read_text().split() == held
    lines = (data / "train.csv").read_text().splitlines()
    (data / "train.csv").write_text("\n".join([lines[0], *lines[2:], lines[1]]) + "\n")  # other row order
    assert main(["train", "--resume", str(run), "--epochs", "3", *TINY[:8]]) == 1
    assert "now holds out other validation images than the run recorded" in _error_line(capsys)
