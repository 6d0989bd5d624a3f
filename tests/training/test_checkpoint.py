"""The checkpoint schema: what a run saves has the keys (and running totals) of a v0.1 checkpoint, reads back
field for field, and a checkpoint with a missing or mistyped field is refused naming it; the stop request."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from densenet.training.checkpoint import CheckpointError, EpochTotals, TrainingCheckpoint
from densenet.training.engine import train
from densenet.training.recipe import TrainConfig
from densenet.training.signals import Stopped, StopRequest

V0_1 = Path(__file__).parents[1] / "fixtures" / "v0_1_run" / "checkpoint.pt"
TINY = {"dataset": "synthetic", "train_limit": 64, "eval_limit": 32, "image_size": 8, "model": "densenet_bc100_k12",
        "model_args": {"block_config": [1, 1], "growth_rate": 4}, "batch_size": 32, "epochs": 1, "log_every": 0}


def test_a_new_checkpoint_has_the_v0_1_layout_and_reads_back(tmp_path):
    old = torch.load(V0_1, weights_only=True)
    train(TrainConfig(**TINY, out=str(tmp_path)))
    new = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert list(new) == list(old)  # the same keys in the same order
    assert list(new["partial"]) == list(old["partial"]) == ["loss_sum", "correct", "seen", "seconds", "lr", "skipped"]
    checkpoint = TrainingCheckpoint.load(tmp_path / "checkpoint.pt")
    assert (checkpoint.epoch, checkpoint.step, checkpoint.steps_per_epoch) == (1, 0, 2)
    assert checkpoint.partial.seen == 64.0 and checkpoint.partial.loss_sum == new["partial"]["loss_sum"]
    assert checkpoint.history == new["history"] and checkpoint.config["epochs"] == 1
    again = checkpoint.to_state()
    assert list(again) == [key for key in new if key not in ("format", "format_version")]
    assert again["partial"] == new["partial"]


def test_the_v0_1_checkpoint_reads_into_the_schema():
    checkpoint = TrainingCheckpoint.load(V0_1)
    assert (checkpoint.epoch, checkpoint.step, checkpoint.steps_per_epoch) == (1, 0, 2)
    assert checkpoint.partial == EpochTotals(75.19940948486328, 2.0, 32.0, checkpoint.partial.seconds,
                                             0.010000000000000002, 0.0)
    checkpoint.check_position(2, V0_1)
    with pytest.raises(CheckpointError, match="written with 2 steps per epoch, this run has 3"):
        checkpoint.check_position(3, V0_1)


@pytest.mark.parametrize("field, value, message", [
    ("partial", {"loss_sum": 1.0}, "the epoch's running totals lack correct, seen, seconds, lr, skipped"),
    ("partial", [1.0], "'partial' is missing or of the wrong type \\(list\\)"),
    ("step", True, "'step' is missing or of the wrong type \\(bool\\)"),
    ("best_acc", "0.5", "'best_acc' is missing or of the wrong type \\(str\\)"),
    ("rng", None, "'rng' is missing or of the wrong type \\(NoneType\\)"),
])
def test_a_missing_or_mistyped_field_is_named(field, value, message):
    state = torch.load(V0_1, weights_only=True)
    if value is None:
        del state[field]
    else:
        state[field] = value
    with pytest.raises(CheckpointError, match=f"checkpoint.pt is malformed: {message}"):
        TrainingCheckpoint.from_state(state, V0_1)


def test_stop_request_takes_sigint_and_sigterm_and_a_second_signal_aborts():
    stop = StopRequest()
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    log = []
    with stop.handling_signals():
        with pytest.raises(Stopped) as raised, stop.region(abortable=True):
            os.kill(os.getpid(), signal.SIGTERM)  # an abortable region is left at once
            log.append("not reached")
        assert (raised.value.signum, raised.value.again, stop.signum) == (signal.SIGTERM, False, signal.SIGTERM)
        stop.signum = None
        with pytest.raises(Stopped) as raised, stop.region(abortable=True):
            with stop.region(abortable=False):
                os.kill(os.getpid(), signal.SIGINT)  # noted, acted on when the block ends into an abortable one
                log.append("finished")
            log.append("not reached")
        assert log == ["finished"] and raised.value.signum == signal.SIGINT
        with pytest.raises(Stopped) as raised:  # the second signal leaves anywhere
            os.kill(os.getpid(), signal.SIGTERM)
        assert raised.value.again
        with pytest.raises(Stopped), stop.region(abortable=True):  # a noted signal: the region is not entered
            log.append("not reached")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
