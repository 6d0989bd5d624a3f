"""CSV tables of volumes and signals through the CLI: the table's input kind (declared with ``--csv-kind`` or read
from NIfTI paths) makes a 3-D or 1-D model trained as ``--dataset volumes`` / ``signals`` train theirs, single- and
multi-label; ``eval`` and ``predict`` read the kind from the weights; bad rows are skipped and counted, bad tables
one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from densenet.cli import main

pytest.importorskip("monai")
nibabel = pytest.importorskip("nibabel")

TINY = ["--model-arg", "block_config=[1,1]", "--model-arg", "growth_rate=4", "--model-arg", "num_init_features=8",
        "--epochs", "1", "--batch-size", "4", "--log-every", "0", "--workers", "0"]


def _volume_table(root: Path) -> Path:
    """``train.csv`` (8 rows, one a 2-D array: unreadable as a volume) and ``val.csv`` (4 rows) of NIfTI and .npy
    volumes, 6×7×8 voxels, two labels (one with a ``/``) with an unknown cell; a volume is bright when its label
    ``bright`` is 1."""
    rng = np.random.default_rng(0)
    (root / "scans").mkdir(parents=True)
    for split, count in (("train", 8), ("val", 4)):
        rows = [["path", "bright", "effusion/left"]]
        for index in range(count):
            bright = index % 2
            volume = (rng.normal(size=(6, 7, 8)) + 3 * bright).astype(np.float32)
            if index % 2:
                name = f"scans/{split}{index}.nii.gz"
                nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), root / name)
            else:
                name = f"scans/{split}{index}.npy"
                np.save(root / name, volume)
            rows.append([name, str(bright), "" if index == 2 else str(index // 2 % 2)])
        with (root / f"{split}.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows(rows)
    np.save(root / "scans" / "train0.npy", np.zeros((6, 7), np.float32))  # a 2-D file in a volume table
    return root


def _one_line_error(capsys, argv: list[str], *patterns: str) -> str:
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(pattern in err[0] for pattern in patterns), err
    return err[0]


def test_multi_label_csv_of_volumes_trains_evaluates_and_predicts(tmp_path, capsys):
    data = _volume_table(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", "--dataset", "csv", "--data-dir", str(data), "--image-size", "8", "--out", str(run),
                 *TINY]) == 0
    err = capsys.readouterr().err
    assert "8 train / 4 eval volumes, 2 labels, 8×8×8 input, augmentation volume" in err
    assert "skipping unreadable image" in err and "train0.npy" in err and "has 2 dimensions" in err
    recipe = yaml.safe_load((run / "config.yaml").read_text())
    assert recipe["csv_kind"] == "volume"  # resolved from the NIfTI paths, recorded for --resume
    saved = json.loads((run / "last" / "config.json").read_text())
    assert saved["architecture"]["spatial_dims"] == 3 and saved["task"] == "multi_label"
    assert saved["preprocessing"] == {"kind": "volume", "channels": 1, "size": 8}
    with (run / "metrics.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert float(row["skipped_images"]) == 1 and "eval_auroc/bright" in row

    assert main(["eval", "--weights", str(run / "last"), "--dataset", "csv", "--data-dir", str(data), "--json",
                 "--out", str(tmp_path / "eval")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 4 and list(report["per_label"]) == ["bright", "effusion/left"]
    roc = tmp_path / "eval" / "eval_csv_roc"  # one ROC curve per label, named after it
    assert [report["per_label"][name]["roc_png"] for name in ("bright", "effusion/left")] == [
        str(roc / "bright.png"), str(roc / "effusion_left.png")]
    assert sorted(roc.iterdir()) == [roc / "bright.png", roc / "effusion_left.png"]
    assert all(path.read_bytes()[:4] == b"\x89PNG" for path in roc.iterdir())
    assert (tmp_path / "eval" / "eval_csv_roc.png").read_bytes()[:4] == b"\x89PNG"  # and all of them in one
    scans = data / "scans"
    assert main(["predict", "--weights", str(run / "last"), str(scans / "val1.nii.gz"), str(scans / "val2.npy"),
                 "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert [list(p["probabilities"]) for p in predictions] == [["bright", "effusion/left"]] * 2
    assert all(isinstance(p["positives"], list) for p in predictions)


def test_csv_of_signals_declares_its_kind(tmp_path, capsys):
    rng = np.random.default_rng(1)
    data = tmp_path / "signals"
    data.mkdir()
    for split, count in (("train", 8), ("val", 4)):
        rows = ["path,label"]
        for index in range(count):
            np.save(data / f"{split}{index}.npy", rng.normal(size=(2, 30)).astype(np.float32))  # (C, L)
            rows.append(f"{split}{index}.npy,{'fast' if index % 2 else 'slow'}")
        (data / f"{split}.csv").write_text("\n".join(rows) + "\n")
    flags = ["train", "--dataset", "csv", "--data-dir", str(data), "--image-size", "16", *TINY]
    # .npy holds a volume or a signal: the table must say which
    _one_line_error(capsys, [*flags, "--out", str(tmp_path / "r0")], "--csv-kind volume or --csv-kind signal")
    _one_line_error(capsys, [*flags, "--csv-kind", "image", "--out", str(tmp_path / "r0")],
                    "train0.npy is not an image file (a volume or signal file)")
    assert not (tmp_path / "r0").exists()
    run = tmp_path / "run"
    assert main([*flags, "--csv-kind", "signal", "--out", str(run)]) == 0
    assert "8 train / 4 eval signals, 2 classes, 16 input, augmentation signal" in capsys.readouterr().err
    saved = json.loads((run / "last" / "config.json").read_text())
    assert saved["architecture"]["spatial_dims"] == 1 and saved["preprocessing"]["channels"] == 2
    assert main(["eval", "--weights", str(run / "last"), "--dataset", "csv", "--data-dir", str(data), "--json",
                 "--out", str(tmp_path / "eval")]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 4
    assert main(["predict", "--weights", str(run / "last"), str(data / "val0.npy"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top_k"][0]["class"] in ("fast", "slow")


def test_csv_kind_contradicted_by_the_paths_is_one_line(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "scans").mkdir(parents=True)
    nibabel.save(nibabel.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), data / "scans" / "a.nii")
    np.savetxt(data / "scans" / "b.csv", np.zeros((10, 2)), delimiter=",")
    for split in ("train", "val"):
        (data / f"{split}.csv").write_text("path,label\nscans/a.nii,x\nscans/b.csv,y\n")
    base = ["train", "--dataset", "csv", "--data-dir", str(data), *TINY]
    _one_line_error(capsys, [*base, "--csv-kind", "signal", "--out", str(tmp_path / "r")],
                    "a.nii is not a signal file (a volume file); --csv-kind signal reads .npy .csv")
    _one_line_error(capsys, [*base, "--out", str(tmp_path / "r")], "mixes kinds of file", "b.csv is a signal file")
    _one_line_error(capsys, [*base, "--csv-kind", "volume", "--augment", "cifar", "--out", str(tmp_path / "r")],
                    "takes augment auto")
    _one_line_error(capsys, ["train", "--dataset", "folder", "--data-dir", str(data), "--csv-kind", "volume"],
                    "csv_kind says what a csv table's paths are")
