"""The learning-rate schedule as the optimiser sees it, the ``lr`` column of metrics.csv, and ``best/``."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

import densenet
from densenet.training import engine
from densenet.training.engine import lr_factor, train
from densenet.training.recipe import TrainConfig

# 128 images in batches of 32: 4 steps per epoch, 12 in 3 epochs
RUN = {"dataset": "synthetic", "train_limit": 128, "eval_limit": 64, "image_size": 16, "model": "densenet_bc100_k12",
       "model_args": {"block_config": [2, 2], "growth_rate": 8}, "batch_size": 32, "epochs": 3, "log_every": 0,
       "lr": 0.1}


def test_lr_schedules():
    paper = [lr_factor(step, 100, 0, "step", [0.5, 0.75], 0.1) for step in range(100)]
    assert paper[0] == paper[49] == 1.0
    assert paper[50] == paper[74] == pytest.approx(0.1) and paper[75] == paper[99] == pytest.approx(0.01)
    cosine = [lr_factor(step, 110, 10, "cosine", [], 0.1) for step in range(110)]
    assert cosine[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])  # linear warm-up
    assert cosine[10] == 1.0 and cosine[60] == pytest.approx(0.5) and cosine[109] == pytest.approx(0.00025, abs=1e-4)
    assert all(a >= b for a, b in itertools.pairwise(cosine[10:]))


@pytest.fixture
def step_lrs() -> Iterator[list[float]]:
    """The learning rate of every optimiser step taken while the fixture is active, in order."""
    lrs: list[float] = []
    handle = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: lrs.append(optimizer.param_groups[0]["lr"]))
    try:
        yield lrs
    finally:
        handle.remove()


def _lr_column(run: Path) -> list[float]:
    return [float(row["lr"]) for row in csv.DictReader((run / "metrics.csv").open())]


def test_step_schedule_per_step_and_in_metrics_csv(tmp_path, step_lrs):
    # milestones at round(0.3 · 12) = 4 and round(0.9 · 12) = 11 steps: ×0.5 from step 4 on, ×0.25 from step 11 on
    run = tmp_path / "run"
    train(TrainConfig(**RUN, schedule="step", milestones=[0.3, 0.9], gamma=0.5, out=str(run)))
    expected = [0.1] * 4 + [0.05] * 7 + [0.025]
    assert step_lrs == pytest.approx(expected, rel=1e-12)
    # the column holds the mean lr of each epoch's steps (0-3, 4-7, 8-11), not its last step's
    assert _lr_column(run) == pytest.approx([0.1, 0.05, (3 * 0.05 + 0.025) / 4], rel=1e-12)


def test_cosine_schedule_with_warm_up_per_step_and_in_metrics_csv(tmp_path, step_lrs):
    # warm-up over round(0.5 · 4) = 2 steps: 1/2, 2/2 of the peak; then ½(1 + cos(π·t)), t = (step − 2) / 10
    run = tmp_path / "run"
    train(TrainConfig(**RUN, schedule="cosine", warmup_epochs=0.5, out=str(run)))
    expected = [0.05, 0.1] + [0.1 * 0.5 * (1 + math.cos(math.pi * (step - 2) / 10)) for step in range(2, 12)]
    assert step_lrs == pytest.approx(expected, rel=1e-12)
    assert expected[7] == pytest.approx(0.05)  # halfway through the decay: half the peak
    assert _lr_column(run) == pytest.approx([sum(expected[i:i + 4]) / 4 for i in (0, 4, 8)], rel=1e-12)  # means


def test_best_holds_the_best_epochs_weights_not_the_last(tmp_path, monkeypatch):
    """The evaluations score 0.3, 0.6, 0.2 (each a real evaluation of the weights, its top-1 then replaced: which
    epoch of a tiny run is best would otherwise hang on float32 summation order); ``best/`` keeps the weights
    evaluated at epoch 2, ``last/`` the final ones."""
    torch.manual_seed(0)
    model = densenet.create_model("densenet_bc100_k12", block_config=(2, 2), growth_rate=8, num_classes=10)
    evaluated: dict[int, dict[str, torch.Tensor]] = {}  # training forwards so far → the weights evaluated then
    training_calls = [0]

    def snapshot(module, inputs):
        if module.training:
            training_calls[0] += 1
        else:
            evaluated[training_calls[0]] = {k: v.detach().clone() for k, v in module.state_dict().items()}

    scores = iter([0.3, 0.6, 0.2])
    real_evaluate = engine.evaluate
    monkeypatch.setattr(engine, "evaluate", lambda *args, **kwargs: dataclasses.replace(
        real_evaluate(*args, **kwargs), top1=next(scores)))
    model.register_forward_pre_hook(snapshot)
    run = tmp_path / "run"
    train(TrainConfig(**{**RUN, "eval_limit": 32}, out=str(run)), model=model)

    accuracy = [float(row["eval_acc"]) for row in csv.DictReader((run / "metrics.csv").open())]
    per_epoch = [evaluated[calls] for calls in sorted(evaluated)]
    assert accuracy == [0.3, 0.6, 0.2] and len(per_epoch) == 3
    best, last = load_file(run / "best" / "model.safetensors"), load_file(run / "last" / "model.safetensors")
    assert best.keys() == per_epoch[1].keys()
    for key in best:
        assert torch.equal(best[key], per_epoch[1][key]), key
        assert torch.equal(last[key], per_epoch[-1][key]), key
    assert not torch.equal(best["classifier.weight"], last["classifier.weight"])
