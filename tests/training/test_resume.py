"""Stopping and resuming: a kill, Ctrl-C and SIGTERM mid-epoch, and a resumed run ending with the same weights."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import densenet
from densenet.cli import main
from densenet.training.checkpoint import load_checkpoint
from densenet.training.engine import train
from densenet.training.recipe import TrainConfig
from helpers import assert_same_run_weights

TINY = {"dataset": "synthetic", "train_limit": 512, "eval_limit": 128, "image_size": 16, "model": "densenet_bc100_k12",
        "model_args": {"block_config": [2, 2], "growth_rate": 8}, "batch_size": 32, "epochs": 2, "log_every": 0}
# 16 steps per epoch, so that a signal sent on seeing the progress line of step 2 lands well inside the epoch;
# dropout draws random numbers, so the generators' states must survive the stop too.
RESUMABLE = {**TINY, "train_limit": 512, "image_size": 32, "epochs": 3, "schedule": "cosine", "warmup_epochs": 0.5,
             "model_args": {"block_config": [2, 2], "growth_rate": 8, "drop_rate": 0.1}, "label_smoothing": 0.1}




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


def _start_and_stop(out: Path, sig: int, after: str) -> subprocess.CompletedProcess:
    """Start a run that logs every step, send ``sig`` as soon as its stderr shows a line containing ``after``."""
    process = subprocess.Popen(_cli(*_flags({**RESUMABLE, "log_every": 1}), "--out", str(out)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        for line in process.stderr:
            lines.append(line)
            if after in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while not seen.wait(0.05):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            reader.join(timeout=10)
            pytest.fail(f"no line with {after!r} before the run ended; its stderr:\n{''.join(lines)[-3000:]}")
    process.send_signal(sig)
    stdout = process.stdout.read()
    process.wait(timeout=120)
    reader.join(timeout=30)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, "".join(lines))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(TrainConfig(**RESUMABLE, out=str(out)))
    return out


@pytest.mark.slow
def test_resume_after_kill_mid_epoch_gives_the_same_weights(tmp_path, uninterrupted, capsys):
    out = tmp_path / "run"
    killed = _start_and_stop(out, signal.SIGKILL, after="epoch 2/3 step 2/16 ")
    assert killed.returncode == -signal.SIGKILL
    state = load_checkpoint(out / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (1, 0)  # killed inside epoch 2: only epoch 1 was saved
    assert main(["train", "--resume", str(out)]) == 0  # resumed in this process: a second one costs seconds
    assert "resuming at epoch 2, step 0" in capsys.readouterr().err
    assert_same_run_weights(out, uninterrupted)
    assert [int(r["epoch"]) for r in csv.DictReader((out / "metrics.csv").open())] == [1, 2, 3]


@pytest.mark.slow
def test_ctrl_c_saves_mid_epoch_exits_128_plus_it_and_resume_gives_the_same_weights(tmp_path, uninterrupted,
                                                                                    capsys, monkeypatch):
    """SIGINT in a real process. SIGTERM takes the same path: in a real process in tests/cli/test_cli_stop_signals.py,
    and resumed exactly in test_sigterm_abandons_the_step_saves_and_resumes_exactly."""
    out = tmp_path / "run"
    sig = signal.SIGINT
    stopped = _start_and_stop(out, sig, after="epoch 2/3 step 2/16 ")
    assert stopped.returncode == 128 + sig, stopped.stderr
    assert f"stopped by {signal.Signals(sig).name} at epoch 2, step " in stopped.stderr
    assert f"continue with: densenet train --resume {out}" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 1 and 2 <= state["step"] < state["steps_per_epoch"]  # saved mid-epoch, after step 2
    monkeypatch.setenv("DENSENET_DEBUG", "1")  # a failure shows its traceback
    assert main(["train", "--resume", str(out)]) == 0
    assert f"resuming at epoch 2, step {state['step']}" in capsys.readouterr().err
    assert_same_run_weights(out, uninterrupted)


def test_sigterm_abandons_the_step_saves_and_resumes_exactly(tmp_path):
    """SIGTERM at the end of the forward pass of step 6 of epoch 2 (of 8) abandons that step at once (its dropout
    draws and the batch-norm statistics it updated put back), saves at step 5 and stops; the resumed run ends with
    the weights of one that never stopped, and the process's own SIGTERM handler is back afterwards."""
    config = {**TINY, "train_limit": 256, "epochs": 3, "schedule": "cosine", "warmup_epochs": 0.5,
              "model_args": {"block_config": [2, 2], "growth_rate": 8, "drop_rate": 0.1}}
    signals: list[int] = []

    def ours(signum: int, frame: object) -> None:  # catches the signal should train not handle it
        signals.append(signum)

    previous = signal.signal(signal.SIGTERM, ours)
    try:
        torch.manual_seed(0)
        model = densenet.create_model("densenet_bc100_k12", block_config=(2, 2), growth_rate=8, drop_rate=0.1,
                                      num_classes=10)
        calls = []

        def terminate_during_step_14(module, inputs, output):
            if module.training:
                calls.append(1)
                if len(calls) == 8 + 6:
                    os.kill(os.getpid(), signal.SIGTERM)

        model.register_forward_hook(terminate_during_step_14)  # batch-norm statistics updated, dropout drawn
        stopped = train(TrainConfig(**config, out=str(tmp_path / "stopped")), model=model)
        handler_after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert signals == [] and handler_after is ours  # train's handler took the signal, then put ours back
    assert stopped.interrupted and (stopped.epoch, stopped.step) == (1, 5) and stopped.final is None
    assert stopped.stop_signal == signal.SIGTERM and stopped.checkpoint == tmp_path / "stopped" / "checkpoint.pt"
    state = load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (1, 5) and state["partial"]["seen"] == 5 * 32
    assert state["scheduler"]["last_epoch"] == 8 + 5  # the interrupted step was not taken

    resumed = train(TrainConfig(**config, out=str(tmp_path / "stopped"), resume=True))
    straight = train(TrainConfig(**config, out=str(tmp_path / "straight")))
    assert not resumed.interrupted and len(resumed.history) == 3
    assert_same_run_weights(tmp_path / "stopped", tmp_path / "straight")
    for row, expected in zip(resumed.history, straight.history, strict=True):
        assert {k: v for k, v in row.items() if k not in ("train_seconds", "images_per_second")} == {
            k: v for k, v in expected.items() if k not in ("train_seconds", "images_per_second")}


def test_sigterm_during_evaluation_saves_the_finished_steps_and_resume_evaluates(tmp_path):
    """A signal while epoch 1 is being evaluated abandons the evaluation: the checkpoint holds all of the epoch's
    steps (step = steps per epoch), and the resumed run evaluates it and goes on as one that never stopped."""
    config = {**TINY, "train_limit": 64, "eval_limit": 64, "epochs": 2}
    torch.manual_seed(0)
    model = densenet.create_model("densenet_bc100_k12", block_config=(2, 2), growth_rate=8, num_classes=10)
    evaluated = []

    def terminate_during_evaluation(module, inputs):
        if not module.training:
            evaluated.append(1)
            os.kill(os.getpid(), signal.SIGTERM)

    model.register_forward_pre_hook(terminate_during_evaluation)
    stopped = train(TrainConfig(**config, out=str(tmp_path / "stopped")), model=model)
    assert stopped.interrupted and (stopped.epoch, stopped.step) == (0, 2) and evaluated == [1]
    assert not (tmp_path / "stopped" / "metrics.csv").exists()  # the epoch was not recorded unevaluated
    resumed = train(TrainConfig(**config, out=str(tmp_path / "stopped"), resume=True))
    straight = train(TrainConfig(**config, out=str(tmp_path / "straight")))
    assert not resumed.interrupted and len(resumed.history) == 2
    assert_same_run_weights(tmp_path / "stopped", tmp_path / "straight")
    assert resumed.history[0]["eval_acc"] == straight.history[0]["eval_acc"]
