"""Volumes and signals end to end through the CLI: train (the model's dimensions follow the data), eval and predict
with saved weights (the input kind read from their config.json), the volume demo, and bad input as one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from densenet.cli import main
from densenet.cli.demo_volumes import VOLUMES_DEMO, write_volumes
from densenet.data.synthetic_volumes import synthetic_shapes
from densenet.data.volumes import read_volume
from densenet.deploy.export import onnx_metadata
from densenet.weights import from_pretrained

pytest.importorskip("monai")
pytest.importorskip("nibabel")

TINY_3D = ["--image-size", "8", "--model-arg", "block_config=[1,1]", "--model-arg", "growth_rate=4",
           "--model-arg", "num_init_features=8", "--train-limit", "16", "--eval-limit", "8", "--epochs", "1",
           "--batch-size", "8", "--log-every", "0", "--workers", "0"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("volumes") / "run"
    assert main(["train", "--dataset", "shapes3d", "--out", str(run), *TINY_3D]) == 0
    return run


def test_volume_training_saves_a_3d_model_that_reads_volumes(volume_run):
    saved = json.loads((volume_run / "last" / "config.json").read_text())
    assert saved["architecture"]["spatial_dims"] == 3 and saved["architecture"]["in_chans"] == 1
    assert saved["preprocessing"] == {"kind": "volume", "channels": 1, "size": 8}
    assert saved["class_names"] == ["sphere", "cube", "rod"]
    entries = onnx_metadata(from_pretrained(volume_run / "last"), 8)  # what an exported ONNX file carries
    assert entries["input_kind"] == "volume" and entries["crop"] == "8" and entries["spatial_dims"] == "3"


def test_eval_and_predict_read_the_input_kind_from_the_weights(volume_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["eval", "--weights", str(volume_run / "last"), "--dataset", "shapes3d", "--eval-limit", "8",
                 "--out", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 8 and result["class_names"] == ["sphere", "cube", "rod"]
    shapes = synthetic_shapes(2, 12, seed=9)
    paths, _ = write_volumes(shapes, tmp_path / "held", 2)  # 12³ NIfTI files, resampled to the weights' 8³
    torch.testing.assert_close(read_volume(paths[1])[0], shapes.arrays[1, 0])  # identity affine: read as written
    np.save(tmp_path / "held" / "raw.npy", shapes.arrays[0, 0].numpy())
    assert main(["predict", "--weights", str(volume_run / "last"), str(tmp_path / "held"), "--top-k", "2",
                 "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert [Path(p["file"]).name for p in predictions] == ["raw.npy", "volume00.nii.gz", "volume01.nii.gz"]
    assert all(len(p["top_k"]) == 2 and p["top_k"][0]["class"] in ("sphere", "cube", "rod") for p in predictions)


def _one_line_error(capsys, argv: list[str], pattern: str) -> None:
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and pattern in err[0], err


def test_bad_volume_input_is_one_line(volume_run, tmp_path, capsys):
    weights = str(volume_run / "last")
    _one_line_error(capsys, ["eval", "--weights", weights, "--dataset", "digits"], "weights read volumes")
    np.save(tmp_path / "flat.npy", np.zeros((8, 8)))
    (tmp_path / "corrupt.nii.gz").write_bytes(b"\x1f\x8b garbage")
    capsys.readouterr()
    # predict goes on past each unreadable file: one line per file, then the count, exit 1
    assert main(["predict", "--weights", weights, str(tmp_path / "flat.npy"), str(tmp_path / "corrupt.nii.gz")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "has 2 dimensions" in err[0] and "cannot read volume" in err[1], err
    assert err[2] == "densenet predict: error: 2 of 2 file(s) could not be read"
    _one_line_error(capsys, ["train", "--dataset", "volumes", "--out", str(tmp_path / "r")], "needs a data directory")
    _one_line_error(capsys, ["train", "--dataset", "shapes3d", *TINY_3D, "--model-arg", "spatial_dims=2", "--out",
                             str(tmp_path / "r")], "spatial_dims=2 does not fit the data")


def test_signal_folder_trains_a_1d_model_and_predicts_csv(tmp_path, capsys):
    rng = np.random.default_rng(0)
    steps = np.linspace(0, 1, 40)
    for split in ("train", "val"):
        for label, frequency in (("slow", 2), ("fast", 9)):
            folder = tmp_path / "data" / split / label
            folder.mkdir(parents=True)
            for index in range(4):
                wave = np.sin(2 * np.pi * frequency * steps + index) + 0.1 * rng.normal(size=40)
                np.save(folder / f"{index}.npy", np.stack([wave, -wave]))  # (2, 40)
    np.savetxt(tmp_path / "probe.csv", np.stack([np.sin(18 * np.pi * steps)] * 2, axis=1), delimiter=",")
    run = tmp_path / "run"
    assert main(["train", "--dataset", "signals", "--data-dir", str(tmp_path / "data"), "--image-size", "16",
                 "--model-arg", "block_config=[1,1]", "--model-arg", "growth_rate=4", "--epochs", "1",
                 "--batch-size", "4", "--log-every", "0", "--workers", "0", "--out", str(run)]) == 0
    saved = json.loads((run / "last" / "config.json").read_text())
    assert saved["architecture"]["spatial_dims"] == 1 and saved["preprocessing"]["kind"] == "signal"
    capsys.readouterr()
    assert main(["predict", "--weights", str(run / "last"), str(tmp_path / "probe.csv"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top_k"][0]["class"] in ("fast", "slow")
    _one_line_error(capsys, ["train", "--dataset", "signals", "--data-dir", str(tmp_path / "data"), "--channels-last",
                             "--out", str(tmp_path / "r2")], "no channels-last layout for signals")


def test_volume_demo_trains_and_predicts_nifti_files(tmp_path, capsys):
    run = tmp_path / "demo"
    assert main(["demo", "--volumes", "--samples", "2", "--out", str(run), *TINY_3D]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("test accuracy ") and "/8 held-out volumes" in out[0]
    assert len(out) == 3 + 2 and all(" true " in line and " predicted " in line for line in out[3:])
    assert sorted(p.name for p in (run / "heldout").iterdir()) == ["volume00.nii.gz", "volume01.nii.gz"]
    assert yaml.safe_load((run / "config.yaml").read_text())["dataset"] == "shapes3d"


def test_volume_demo_recipe_is_the_config_file():
    assert yaml.safe_load((REPO / "configs" / "volumes_demo.yaml").read_text()) == VOLUMES_DEMO


def test_explain_maps_volume_files_back_onto_their_voxels(volume_run, tmp_path, capsys):
    """``densenet explain`` on a 3-D model: NIfTI and .npy volumes of other sizes than the network's 8³, each map
    (in [0, 1]) on the file's own voxels and a montage of the three planes through its maximum."""
    shapes = synthetic_shapes(1, 12, seed=3)
    paths, _ = write_volumes(shapes, tmp_path / "held", 1)  # volume00.nii.gz, 12³
    np.save(tmp_path / "held" / "oblong.npy", np.random.default_rng(0).normal(size=(10, 12, 14)).astype(np.float32))
    capsys.readouterr()
    assert main(["explain", "--weights", str(volume_run / "last"), str(paths[0]), str(tmp_path / "held" / "oblong.npy"),
                 "--out", str(tmp_path / "maps"), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["path"]).name for r in records] == ["volume00.nii.gz", "oblong.npy"]
    assert all(r["class"] in ("sphere", "cube", "rod") for r in records)
    for stem, shape in (("volume00", (12, 12, 12)), ("oblong", (10, 12, 14))):
        heatmap = np.load(tmp_path / "maps" / f"{stem}.npy")
        assert heatmap.shape == shape and heatmap.min() >= 0 and heatmap.max() <= 1
        assert (tmp_path / "maps" / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
