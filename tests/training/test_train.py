"""The training engine: learning, the run directory, bf16 / channels-last / accumulation, compile, NaN stop.

Resume and signals: test_resume.py; the schedule, the lr column and best/: test_schedule.py; step log lines:
test_progress.py."""

from __future__ import annotations

import copy
import csv
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch._dynamo.backends.registry import lookup_backend

import densenet
from densenet.data.datasets import load_split, preprocessing_for
from densenet.data.loader import EpochBatches, Loader
from densenet.training.checkpoint import load_checkpoint
from densenet.training.engine import TrainingDiverged, train
from densenet.training.recipe import TrainConfig, load_config
from helpers import assert_same_run_weights, run_weights

TINY = {"dataset": "synthetic", "train_limit": 512, "eval_limit": 128, "image_size": 16, "model": "densenet_bc100_k12",
        "model_args": {"block_config": [2, 2], "growth_rate": 8}, "batch_size": 32, "epochs": 2, "log_every": 0}




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


def _first_batches(config: TrainConfig, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``count`` training micro-batches of epoch 0, read with the data room's loader (not the engine)."""
    spec = config.data_spec()
    split = load_split(spec, "train")
    micro = config.batch_size // config.accumulate
    loader = Loader(split, preprocessing_for(spec, split), EpochBatches(len(split), micro, shuffle=True,
                                                                       seed=config.seed),
                    augment=spec.augment_kind, workers=0)
    loader.set_epoch(0)
    return list(itertools.islice(iter(loader), count))


def _sgd_step(model: torch.nn.Module, grads: list[torch.Tensor], config: TrainConfig) -> dict[str, torch.Tensor]:
    for parameter, grad in zip(model.parameters(), grads, strict=True):
        parameter.grad = grad.clone()
    torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                    weight_decay=config.weight_decay).step()
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def test_bf16_channels_last_and_accumulation(tmp_path):
    """bf16 autocast runs the layers in bfloat16, channels-last reaches the weights and the inputs, and the first
    optimiser step of two accumulated micro-batches equals one SGD step on the mean of their gradients, built here
    by hand in the same precision and layout."""
    config = TrainConfig(**{**TINY, "epochs": 1}, amp="bf16", channels_last=True, accumulate=2, workers=0,
                         out=str(tmp_path))
    torch.manual_seed(0)
    initial = densenet.create_model("densenet_bc100_k12", block_config=(2, 2), growth_rate=8, num_classes=10)
    model = copy.deepcopy(initial)
    dtypes: set[torch.dtype] = set()
    layouts: list[bool] = []
    after_first_step: dict[str, torch.Tensor] = {}

    def record_output(module, inputs, output):
        if model.training:
            dtypes.add(output.dtype)

    def record_input(module, inputs):
        if not model.training:
            return
        (x,) = inputs
        layouts.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        if len(layouts) == 3:  # the first micro-batch of step 2: the weights after step 1
            after_first_step.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    model.features.conv0.register_forward_hook(record_output)
    model.classifier.register_forward_hook(record_output)
    model.register_forward_pre_hook(record_input)
    result = train(config, model=model)

    assert math.isfinite(result.history[0]["train_loss"]) and result.final.top1 > 0.15
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["steps_per_epoch"] == 16 and state["scheduler"]["last_epoch"] == 16  # 32 micro-batches of 16
    assert dtypes == {torch.bfloat16}  # the stem convolution and the classifier ran in bfloat16
    assert len(layouts) == 32 and all(layouts)  # every training input reached the model channels-last
    kernels = {name: p for name, p in result.model.named_parameters() if p.dim() == 4 and p.shape[-1] > 1}
    not_channels_last = [name for name, p in kernels.items()
                         if not p.is_contiguous(memory_format=torch.channels_last) or p.is_contiguous()]
    assert kernels and not not_channels_last, not_channels_last

    # by hand: one replica sees both micro-batches in turn (its BN statistics follow both), each gradient apart
    replica = copy.deepcopy(initial).to(memory_format=torch.channels_last).train()
    grads = []
    for images, targets in _first_batches(config, 2):
        replica.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = replica(images.contiguous(memory_format=torch.channels_last))
        F.cross_entropy(logits.float(), targets).backward()
        grads.append([p.grad.clone() for p in replica.parameters()])
    averaged = [(g0 + g1) / 2 for g0, g1 in zip(*grads, strict=True)]
    only_first = _sgd_step(copy.deepcopy(replica), grads[0], config)
    summed = _sgd_step(copy.deepcopy(replica), [g0 + g1 for g0, g1 in zip(*grads, strict=True)], config)
    expected = _sgd_step(replica, averaged, config)
    assert after_first_step.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(after_first_step[key], expected[key], msg=key)
    weight = "features.conv0.weight"
    for wrong in (only_first, summed):  # the comparison can tell a step that skipped or did not average a micro-batch
        assert (after_first_step[weight] - wrong[weight]).abs().max() > 1e-4


def test_same_seed_same_weights_other_seed_not(tmp_path):
    config = {**TINY, "epochs": 1, "train_limit": 128}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(TrainConfig(**config, seed=seed, out=str(tmp_path / name)))
    assert_same_run_weights(tmp_path / "a", tmp_path / "b")
    with pytest.raises(AssertionError):
        assert_same_run_weights(tmp_path / "a", tmp_path / "c")


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
    assert all(torch.isfinite(t).all() for t in run_weights(tmp_path).values())
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


def test_compiled_training_step_equals_eager_in_float64():
    """One forward/backward through ``torch.compile`` (aot_eager) gives the eager gradients and running statistics
    exactly, up to float64 rounding: any difference beyond that is a real divergence of the explicit Functions under
    compilation (an in-place update of a tensor autograd hands on, for instance), not a summation order."""
    torch.manual_seed(0)
    model = densenet.create_model("densenet_bc100_k12", block_config=[2, 2], growth_rate=8, num_classes=10)
    eager, compiled = model.double().train(), copy.deepcopy(model).double().train()
    x = torch.randn(32, 3, 16, 16, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (32,))
    F.cross_entropy(eager(x), y).backward()
    torch._dynamo.reset()
    try:
        F.cross_entropy(torch.compile(compiled, backend=lookup_backend("aot_eager"))(x), y).backward()
    finally:
        torch._dynamo.reset()
    for (name, want), got in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-10, atol=1e-12, msg=name)
    for (name, want), got in zip(eager.named_buffers(), compiled.buffers(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0, msg=name)


@pytest.mark.slow
def test_compiled_model_trains_like_the_plain_one_and_saves_plainrun_weights(tmp_path, monkeypatch):
    """``compile: true`` goes through ``torch.compile`` (forced onto the cheap ``aot_eager`` backend, which counts the
    graphs it compiles), trains to the weights of an uncompiled run and saves the plain model's keys."""
    graphs: list[torch.fx.GraphModule] = []
    aot_eager = lookup_backend("aot_eager")

    def counting_backend(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(graph)
        return aot_eager(graph, example_inputs)

    compiled: list[torch.nn.Module] = []
    real_compile = torch.compile

    def compile_on_aot_eager(module: torch.nn.Module, *args: object, **kwargs: object) -> torch.nn.Module:
        compiled.append(module)
        return real_compile(module, backend=counting_backend)

    config = {**TINY, "train_limit": 256}
    torch.manual_seed(0)
    initial = densenet.create_model(config["model"], num_classes=10, **config["model_args"])
    plain = train(TrainConfig(**config, out=str(tmp_path / "plain")), model=copy.deepcopy(initial))
    monkeypatch.setattr(torch, "compile", compile_on_aot_eager)
    torch._dynamo.reset()
    try:
        result = train(TrainConfig(**config, compile=True, out=str(tmp_path / "compiled")),
                       model=copy.deepcopy(initial))
    finally:
        torch._dynamo.reset()
    assert len(compiled) == 1 and isinstance(compiled[0], densenet.DenseNet) and graphs  # compilation ran
    assert type(result.model) is densenet.DenseNet  # the result is the plain module, not the compiled wrapper
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    trained, reference, start = result.model.state_dict(), plain.model.state_dict(), initial.state_dict()
    assert trained.keys() == reference.keys()
    for key in reference:
        if not reference[key].is_floating_point():
            assert torch.equal(trained[key], reference[key]), key
            continue
        # float32: the compiled graph sums in another order (aot_eager decomposes batch-norm backward), ~1e-5 relative
        # per step, grown over 16 SGD steps (up to 1.9e-4; it moves with any change of summation order in the block's
        # backward, so no fixed tolerance holds). The exact check is the float64 step of the test above; here the
        # compiled run must follow the plain run's path: within 10% of how far each tensor moved (seen: 2% at 2 threads,
        # 0.003% at 1).
        moved = (reference[key] - start[key]).abs().max()
        assert (trained[key] - reference[key]).abs().max() <= 0.1 * moved, key
    reloaded = densenet.from_pretrained(tmp_path / "compiled" / "last")  # keys without "_orig_mod."
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), trained.values(), strict=True))
