"""The training engine: learning, run directory, exact resume after a kill or Ctrl-C, NaN stop."""

from __future__ import annotations

import csv
import itertools
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import densenet
from densenet.training.checkpoint import load_checkpoint
from densenet.training.engine import TrainingDiverged, lr_factor, train
from densenet.training.recipe import TrainConfig, load_config

TINY = {"dataset": "synthetic", "train_limit": 512, "eval_limit": 128, "image_size": 16, "model": "densenet_bc100_k12",
        "model_args": {"block_config": [2, 2], "growth_rate": 8}, "batch_size": 32, "epochs": 2, "log_every": 0}
# Long enough epochs (about 2 s on 2 cores) to stop a process in the middle of one; dropout draws random numbers.
RESUMABLE = {**TINY, "train_limit": 1024, "image_size": 32, "epochs": 3, "schedule": "cosine", "warmup_epochs": 0.5,
             "model_args": {"block_config": [2, 2], "growth_rate": 8, "drop_rate": 0.1}, "label_smoothing": 0.1}


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "last" / "model.safetensors")


def _assert_same_weights(a: Path, b: Path) -> None:
    left, right = _weights(a), _weights(b)
    assert left.keys() == right.keys()
    different = [key for key in left if not torch.equal(left[key], right[key])]
    largest = max(((left[k].double() - right[k].double()).abs().max().item() for k in different), default=0.0)
    assert not different, f"{len(different)} tensors differ (by up to {largest:.3g}), e.g. {different[:3]}"


def test_lr_schedules():
    paper = [lr_factor(step, 100, 0, "step", [0.5, 0.75], 0.1) for step in range(100)]
    assert paper[0] == paper[49] == 1.0
    assert paper[50] == paper[74] == pytest.approx(0.1) and paper[75] == paper[99] == pytest.approx(0.01)
    cosine = [lr_factor(step, 110, 10, "cosine", [], 0.1) for step in range(110)]
    assert cosine[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])  # linear warm-up
    assert cosine[10] == 1.0 and cosine[60] == pytest.approx(0.5) and cosine[109] == pytest.approx(0.00025, abs=1e-4)
    assert all(a >= b for a, b in itertools.pairwise(cosine[10:]))


def test_config_validation_and_layers(tmp_path):
    with pytest.raises(ValueError, match="unknown config key 'epoch' in overrides; did you mean 'epochs'"):
        load_config(epoch=3)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("epochs: 5\nmodel_args: {growth_rate: 8, block_config: [2, 2]}\nbatchsize: 3\n")
    with pytest.raises(ValueError, match=f"unknown config key 'batchsize' in {recipe}; did you mean 'batch_size'"):
        load_config(recipe)
    recipe.write_text("epochs: 5\nlr: 0.05\nmodel_args: {growth_rate: 8, block_config: [2, 2]}\n")
    config = load_config(recipe, lr=0.2, model_args={"drop_rate": 0.1})
    assert (config.epochs, config.lr) == (5, 0.2)  # overrides win
    assert config.model_args == {"growth_rate": 8, "block_config": [2, 2], "drop_rate": 0.1}  # merged per key
    assert TrainConfig.from_dict(yaml.safe_load(config.to_yaml())) == config
    for bad, message in (({"epochs": "3"}, "'epochs' must be int"), ({"amp": "fp8"}, "must be one of off, bf16"),
                         ({"milestones": [50, 75]}, "fractions of training"), ({"batch_size": 0}, "at least 1")):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad)


def test_two_epochs_learn_and_fill_the_run_directory(tmp_path):
    result = train(TrainConfig(**TINY, out=str(tmp_path / "run")))
    run = result.run_dir
    assert len(result.history) == 2 and not result.interrupted
    assert result.final is not None and result.final.top1 > 0.3  # ten classes: chance is 0.1
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]
    assert TrainConfig.from_dict(yaml.safe_load((run / "config.yaml").read_text())) == TrainConfig(
        **TINY, out=str(run))
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["eval_acc"]) == pytest.approx(result.final.top1)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    for png in ("curves.png", "confusion_matrix.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = torch.load(run / "checkpoint.pt", weights_only=True)  # no code is unpickled
    assert state["epoch"] == 2 and state["step"] == 0 and len(state["rng"]) == 1
    assert state["scheduler"]["last_epoch"] == 2 * 16
    best = densenet.from_pretrained(run / "best")
    assert best.meta.class_names == tuple(f"class{i}" for i in range(10))
    assert best.meta.preprocessing.crop == 16 and len(best.meta.preprocessing.mean) == 3
    with pytest.raises(ValueError, match="already holds a run"):
        train(TrainConfig(**TINY, out=str(run)))
    assert not list(run.rglob("*.tmp*"))  # no temporary file left behind


def test_bf16_channels_last_and_accumulation(tmp_path):
    config = TrainConfig(**{**TINY, "epochs": 1}, amp="bf16", channels_last=True, accumulate=2, out=str(tmp_path))
    result = train(config)
    assert math.isfinite(result.history[0]["train_loss"]) and result.final.top1 > 0.15
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["steps_per_epoch"] == 16 and state["scheduler"]["last_epoch"] == 16  # 32 micro-batches of 16


def test_same_seed_same_weights_other_seed_not(tmp_path):
    config = {**TINY, "epochs": 1, "train_limit": 128}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(TrainConfig(**config, seed=seed, out=str(tmp_path / name)))
    _assert_same_weights(tmp_path / "a", tmp_path / "b")
    with pytest.raises(AssertionError):
        _assert_same_weights(tmp_path / "a", tmp_path / "c")


class Exploding(densenet.DenseNet):
    """Returns NaN logits from training step ``after + 1`` on."""

    def __init__(self, after: int, **overrides) -> None:
        super().__init__(densenet.get_config("densenet_bc100_k12", **overrides))
        self.after = after
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                out = out * float("nan")
        return out


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    model = Exploding(after=16 + 2, block_config=(2, 2), growth_rate=8, num_classes=10)
    config = TrainConfig(**{**TINY, "epochs": 3}, out=str(tmp_path))
    with pytest.raises(TrainingDiverged, match=rf"loss is nan at epoch 2, step 3.*last good checkpoint is {tmp_path}"):
        train(config, model=model)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(t).all() for t in state["model"].values())
    assert all(torch.isfinite(t).all() for t in _weights(tmp_path).values())
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 2  # header and epoch 1


class NanInEval(densenet.DenseNet):
    """Trains normally; its evaluation-mode logits are NaN (weights that diverged on an epoch's last step)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out if self.training else out * float("nan")


@pytest.mark.parametrize("existing", [False, True])
def test_nan_evaluation_loss_stops_before_saving(tmp_path, existing):
    out = tmp_path / "runs" / "nested" / "run"
    if existing:
        out.mkdir(parents=True)
        (out / "notes.txt").write_text("mine")
    model = NanInEval(block_config=(2, 2), growth_rate=8, num_classes=10)
    with pytest.raises(TrainingDiverged, match="evaluation loss is nan after epoch 1: the weights diverged"):
        train(TrainConfig(**TINY, out=str(out)), model=model)
    # the run failed before its first checkpoint: what it created is gone, what was there stays
    if existing:
        assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    else:
        assert list(tmp_path.iterdir()) == []  # runs/nested/run, all three created by the run


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "densenet", "train", *args]


def _flags(config: dict) -> list[str]:
    flags = []
    for key, value in config.items():
        if key == "model_args":
            for name, arg in value.items():
                flags += ["--model-arg", f"{name}={arg}"]
        else:
            flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def _start_and_stop(out: Path, sig: int) -> subprocess.CompletedProcess:
    """Start a run, wait until epoch 1 is checkpointed, then send ``sig`` about a quarter into epoch 2."""
    process = subprocess.Popen(_cli(*_flags(RESUMABLE), "--out", str(out)), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(TrainConfig(**RESUMABLE, out=str(out)))
    return out


@pytest.mark.slow
def test_resume_after_kill_mid_epoch_gives_the_same_weights(tmp_path, uninterrupted):
    out = tmp_path / "run"
    killed = _start_and_stop(out, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    state = load_checkpoint(out / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (1, 0)  # killed inside epoch 2: only epoch 1 was saved
    resumed = subprocess.run(_cli("--resume", str(out)), capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch 2, step 0" in resumed.stderr
    _assert_same_weights(out, uninterrupted)
    assert [int(r["epoch"]) for r in csv.DictReader((out / "metrics.csv").open())] == [1, 2, 3]


@pytest.mark.slow
def test_ctrl_c_saves_mid_epoch_and_resume_gives_the_same_weights(tmp_path, uninterrupted):
    out = tmp_path / "run"
    stopped = _start_and_stop(out, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    assert f"continue with: densenet train --resume {out}" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 1 and 0 < state["step"] < state["steps_per_epoch"]  # saved mid-epoch
    resumed = subprocess.run(_cli("--resume", str(out)), capture_output=True, text=True, check=False,
                             env={**os.environ, "DENSENET_DEBUG": "1"})
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_weights(out, uninterrupted)


@pytest.mark.slow
def test_compiled_model_trains_and_saves_plain_weights(tmp_path):
    result = train(TrainConfig(**{**TINY, "train_limit": 256}, compile=True, out=str(tmp_path)))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    reloaded = densenet.from_pretrained(tmp_path / "last")  # keys without torch.compile's "_orig_mod." prefix
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), result.model.state_dict().values(),
                                                 strict=True))
