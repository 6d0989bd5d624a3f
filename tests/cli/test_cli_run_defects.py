"""Issue 15's defects a new user hit, each through the ``densenet`` command: the image size from the data, the
memory pre-check, the run-directory lock, skipped images counted once, ``predict`` past unreadable files and into a
closed pipe, a held-out validation split, and the weights-directory hint."""

from __future__ import annotations

import csv
import os
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import densenet
from densenet.cli import main
from imagefolder import CLASSES, colour_image

TINY = ["--model-arg", "block_config=[2,2]", "--model-arg", "growth_rate=8", "--log-every", "0", "--workers", "0"]
TINY_CONFIG = densenet.get_config("densenet_bc100_k12", block_config=[2, 2], growth_rate=8, num_classes=3)


def _folder(root: Path, splits: dict[str, int], side: int, suffix: str = ".jpg") -> Path:
    """``root/<split>/<class>/NNN<suffix>``: ``splits[split]`` images per class, all ``side × side``."""
    rng = np.random.default_rng(0)
    for split, count in splits.items():
        for index, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                colour_image(index, side, rng).save(root / split / name / f"{i:03d}{suffix}")
    return root


def _train(tmp_path: Path, data: Path, *flags: str, out: str = "run") -> int:
    return main(["train", "--dataset", "folder", "--data-dir", str(data), "--epochs", "1", "--batch-size", "6",
                 "--out", str(tmp_path / out), *TINY, *flags])


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and not any("Traceback" in line for line in lines)
    return lines[-1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A tiny untrained classifier of the three colours at 16×16, saved as a run's ``best/``."""
    run = tmp_path_factory.mktemp("run")
    model = densenet.create_model("densenet_bc100_k12", block_config=[2, 2], growth_rate=8, num_classes=3,
                                  class_names=list(CLASSES))
    model.meta = model.meta.replace(preprocessing=densenet.Preprocessing("RGB", 16, 16, (0.5,) * 3, (0.25,) * 3))
    model.save_pretrained(run / "best")
    return run


def test_image_size_defaults_to_the_folders_and_the_start_line_says_it(tmp_path, capsys):
    data = _folder(tmp_path / "data", {"train": 4, "val": 2}, side=32)
    assert _train(tmp_path, data) == 0
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert recorded["image_size"] == 32  # not 224
    assert densenet.from_pretrained(tmp_path / "run" / "best").meta.preprocessing.crop == 32
    start = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("training "))
    assert "32×32 input, augmentation cifar" in start


def test_memory_precheck_stops_with_what_would_fit(tmp_path, capsys, monkeypatch):
    from densenet.analysis import training_memory
    from densenet.training.memory import PEAK_FLOOR

    data = _folder(tmp_path / "data", {"train": 4, "val": 2}, side=16)
    # room for a step of 4 images at 16×16 and not for 5; the run asks for 6
    limit = int(PEAK_FLOOR * training_memory(TINY_CONFIG, 16, 4).total)  # the measured peak is ≥ 1.9× the closed form
    assert PEAK_FLOOR * training_memory(TINY_CONFIG, 16, 5).total > limit
    monkeypatch.setenv("DENSENET_MEMORY_LIMIT", str(limit))
    assert _train(tmp_path, data, "--image-size", "16") == 1
    line = _error_line(capsys)
    match = re.fullmatch(r"densenet train: error: a training step of densenet_bc100_k12 at 16×16, 6 image\(s\) per "
                         r"process needs more than .* MiB \(1.5× the closed form's .* MiB\) but .* MiB is available "
                         r"\(DENSENET_MEMORY_LIMIT\); would fit: --batch-size 4 or --image-size (\d+)", line)
    assert match, line
    side = int(match.group(1))
    assert PEAK_FLOOR * training_memory(TINY_CONFIG, side, 6).total <= limit
    assert PEAK_FLOOR * training_memory(TINY_CONFIG, side + 1, 6).total > limit
    assert not (tmp_path / "run").exists()
    assert _train(tmp_path, data, "--image-size", "16", "--batch-size", "4") == 0  # the advice fits


def test_a_second_run_into_a_locked_directory_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys, log_lines):
    from densenet.training.runlock import acquire

    data = _folder(tmp_path / "data", {"train": 4, "val": 2}, side=16)
    run = tmp_path / "run"
    run.mkdir()
    ready, told = os.pipe()
    holder = os.fork()  # another process that takes the lock as a run does, and holds it
    if holder == 0:
        try:
            acquire(run / "run.lock")
            os.write(told, b"held")
            time.sleep(60)
        finally:
            os._exit(0)
    try:
        assert os.read(ready, 4) == b"held"
        assert _train(tmp_path, data) == 1
        assert _error_line(capsys) == (f"densenet train: error: {run} is in use by another run (pid {holder}); "
                                       "wait for it to end or choose another --out")
        assert sorted(path.name for path in run.iterdir()) == ["run.lock"]  # the refused run wrote nothing
    finally:
        os.kill(holder, signal.SIGKILL)  # dies holding it: the kernel drops the flock, the file stays
        os.waitpid(holder, 0)
        os.close(ready)
        os.close(told)
    assert (run / "run.lock").read_text().strip() == str(holder)
    assert _train(tmp_path, data) == 0
    assert f"taking over the lock of {run} left by pid {holder}, which no longer holds it" in log_lines
    assert not (run / "run.lock").exists() and (run / "checkpoint.pt").is_file()


def test_cached_unreadable_images_are_counted_once(tmp_path, capsys):
    data = _folder(tmp_path / "data", {"train": 4, "val": 2}, side=16)
    (data / "train" / "red" / "000.jpg").write_bytes(b"not an image")
    assert _train(tmp_path, data, "--cache", "--epochs", "3", "--image-size", "16") == 0
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [float(row["skipped_images"]) for row in rows] == [1.0, 0.0, 0.0]
    assert capsys.readouterr().err.count("skipping unreadable image") == 1


def test_predict_goes_on_past_unreadable_files_and_names_each(weights, tmp_path, capsys):
    images = _folder(tmp_path / "images", {"x": 2}, side=20, suffix=".png") / "x"
    (images / "blue" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (images / "red" / "001.png").write_bytes(b"")
    assert main(["predict", "--weights", str(weights / "best"), str(images), "--top-k", "1"]) == 1
    captured = capsys.readouterr()
    printed = [line.split()[0] for line in captured.out.splitlines()]
    assert printed == [str(images / name) for name in ("blue/001.png", "green/000.png", "green/001.png",
                                                       "red/000.png")]
    errors = captured.err.strip().splitlines()
    assert [line for line in errors if "cannot read image" in line] == [
        line for line in errors if str(images / "blue/000.png") in line or str(images / "red/001.png") in line]
    assert len(errors) == 3 and errors[-1] == "densenet predict: error: 2 of 6 file(s) could not be read"


def test_predict_into_a_closed_pipe_ends_quietly(weights, tmp_path, capsys, monkeypatch):
    images = _folder(tmp_path / "images", {"x": 4}, side=20, suffix=".png")
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written (`| head` done): every write meets EPIPE
    with os.fdopen(write, "w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        assert main(["predict", "--weights", str(weights / "best"), str(images)]) == 128 + signal.SIGPIPE
        stdout.write("x" * 100_000)
        stdout.flush()  # what the interpreter flushes at exit now goes to /dev/null, not into the closed pipe
        monkeypatch.undo()
    assert capsys.readouterr().err == ""


def test_val_fraction_holds_out_a_recorded_stratified_split(tmp_path, capsys):
    data = _folder(tmp_path / "data", {"train": 8}, side=16)
    assert _train(tmp_path, data, "--image-size", "16") == 1
    assert "has no val/ or test/ folder" in (line := _error_line(capsys)) and "--val-fraction" in line
    assert _train(tmp_path, data, "--image-size", "16", "--val-fraction", "0.25") == 0
    run = tmp_path / "run"
    assert "18 train / 6 eval images" in capsys.readouterr().err
    held = (run / "val_split.txt").read_text().split()
    assert [name.split("/")[0] for name in held] == ["blue"] * 2 + ["green"] * 2 + ["red"] * 2  # stratified
    assert yaml.safe_load((run / "config.yaml").read_text())["val_fraction"] == 0.25
    assert main(["train", "--resume", str(run), "--epochs", "2", *TINY]) == 0  # the same split: it goes on
    assert (run / "val_split.txt").read_text().split() == held
    (data / "train" / "blue" / "000.jpg").unlink()  # as many images, other ones: another split
    Image.new("RGB", (16, 16)).save(data / "train" / "red" / "100.jpg")
    assert main(["train", "--resume", str(run), "--epochs", "3", *TINY]) == 1
    assert "now holds out other validation images than the run recorded" in _error_line(capsys)


def test_weights_given_as_the_run_directory_hint_at_best(weights, tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.new("RGB", (16, 16)).save(image)
    assert main(["predict", "--weights", str(weights), str(image)]) == 1
    assert _error_line(capsys) == (f"densenet predict: error: {weights} holds no config.json: not a directory "
                                   f"written by save_pretrained; did you mean {weights / 'best'}?")
