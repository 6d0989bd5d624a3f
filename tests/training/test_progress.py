"""Progress without a terminal: a log line every ``log_every`` steps, with the running loss and accuracy."""

from __future__ import annotations

import copy
import io
import re
import sys

import pytest
import torch
import torch.nn.functional as F

import densenet
from densenet.data.datasets import load_split, preprocessing_for
from densenet.data.loader import EpochBatches, Loader
from densenet.training.engine import train
from densenet.training.recipe import TrainConfig

# 256 images in batches of 32: 8 steps per epoch
RUN = {"dataset": "synthetic", "train_limit": 256, "eval_limit": 64, "image_size": 16, "model": "densenet_bc100_k12",
       "model_args": {"block_config": [2, 2], "growth_rate": 8}, "batch_size": 32, "epochs": 2, "workers": 0}
STEP_LINE = re.compile(r"epoch (\d+)/(\d+) step (\d+)/(\d+)  loss (\d+\.\d{4}) acc (\d+\.\d\d)%  (\d+) img/s  "
                       r"eta (\d+)s")


def _step_lines(lines: list[str]) -> list[tuple[int, ...]]:
    return [tuple(int(group) for group in STEP_LINE.fullmatch(line).group(1, 2, 3, 4))
            for line in lines if STEP_LINE.fullmatch(line)]


@pytest.mark.parametrize("every, steps", [(3, [3, 6]), (4, [4]), (8, []), (0, [])])
def test_log_every_n_steps(tmp_path, log_lines, monkeypatch, every, steps):
    """A line at every multiple of N inside each epoch; the epoch's last step is the epoch line instead."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: log lines, no progress bar
    train(TrainConfig(**RUN, log_every=every, out=str(tmp_path / "run")))
    assert _step_lines(log_lines) == [(epoch, 2, step, 8) for epoch in (1, 2) for step in steps]
    step_or_epoch = [line for line in log_lines if line.startswith("epoch ")]
    assert len(step_or_epoch) == 2 * len(steps) + 2  # plus one summary line per epoch
    assert next(line for line in step_or_epoch if " step " not in line).startswith("epoch 1/2  train loss ")
    assert not sys.stderr.getvalue()  # no progress bar drawn


def test_step_line_reports_the_running_loss_and_accuracy(tmp_path, log_lines, monkeypatch):
    """With ``log_every: 1`` the first line's loss and accuracy are those of the first batch on the initial weights,
    computed here by hand; the eta is the remaining steps at the pace so far."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    config = TrainConfig(**{**RUN, "epochs": 1}, log_every=1, out=str(tmp_path / "run"))
    torch.manual_seed(0)
    model = densenet.create_model("densenet_bc100_k12", block_config=(2, 2), growth_rate=8, num_classes=10)
    initial = copy.deepcopy(model)
    train(config, model=model)
    matches = [STEP_LINE.fullmatch(line) for line in log_lines if STEP_LINE.fullmatch(line)]
    assert [int(m.group(3)) for m in matches] == list(range(1, 8))

    spec = config.data_spec()
    split = load_split(spec, "train")
    loader = Loader(split, preprocessing_for(spec, split), EpochBatches(len(split), 32, shuffle=True, seed=0),
                    augment=spec.augment_kind, workers=0)
    loader.set_epoch(0)
    images, targets = next(iter(loader))
    with torch.no_grad():
        logits = initial.train()(images)
    loss = F.cross_entropy(logits, targets).item()
    correct = (logits.argmax(1) == targets).sum().item()
    first = matches[0]
    assert float(first.group(5)) == pytest.approx(loss, abs=6e-5)
    assert float(first.group(6)) == pytest.approx(100 * correct / 32, abs=6e-3)
    assert all(float(m.group(5)) > 0 and 0 <= float(m.group(6)) <= 100 for m in matches)
    assert int(matches[-1].group(8)) <= int(matches[0].group(8)) + 1  # fewer steps left, about the same pace
