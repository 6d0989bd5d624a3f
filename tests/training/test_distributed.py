"""``torchrun --nproc_per_node=2 -m densenet train``: DistributedDataParallel on CPU (gloo) averages gradients."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import densenet
from densenet.data.datasets import load_split, preprocessing_for
from densenet.data.loader import EpochBatches, Loader
from densenet.training.checkpoint import load_checkpoint
from densenet.training.recipe import TrainConfig

RECIPE = {"dataset": "synthetic", "train_limit": 16, "eval_limit": 8, "image_size": 16, "batch_size": 16, "epochs": 1,
          "schedule": "cosine", "device": "cpu", "model_args": {"block_config": [2, 2], "growth_rate": 8}}


def _flags() -> list[str]:
    return ["--dataset", "synthetic", "--train-limit", "16", "--eval-limit", "8", "--image-size", "16",
            "--batch-size", "16", "--epochs", "1", "--schedule", "cosine", "--device", "cpu",
            "--model-arg", "block_config=[2,2]", "--model-arg", "growth_rate=8"]


def _sgd_step(model: torch.nn.Module, grads: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    for parameter, grad in zip(model.parameters(), grads, strict=True):
        parameter.grad = grad.clone()
    torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4).step()
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


@pytest.mark.slow
def test_two_processes_equal_one_process_averaging_two_half_batches(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "densenet",
               "train", *_flags(), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cpu × 2 process(es)" in result.stderr and result.stderr.count("epoch 1/1") == 1  # rank 0 alone logs
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["steps_per_epoch"] == 1 and state["scheduler"]["last_epoch"] == 1 and len(state["rng"]) == 2

    # The same step in one process: each half-batch through its own replica, then the mean of the two gradients.
    config = TrainConfig(**RECIPE)
    spec = config.data_spec()
    split = load_split(spec, "train")
    preprocessing = preprocessing_for(spec, split)
    halves = []
    for rank in (0, 1):
        loader = Loader(split, preprocessing, EpochBatches(16, 8, shuffle=True, seed=0, rank=rank, world_size=2),
                        augment=spec.augment_kind, workers=0)
        loader.set_epoch(0)
        halves.append(next(iter(loader)))
    assert sorted(halves[0][1].tolist() + halves[1][1].tolist()) == sorted(split.targets.tolist())
    torch.manual_seed(config.seed)
    initial = densenet.create_model("densenet_bc100_k12", block_config=(2, 2), growth_rate=8, num_classes=10)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        replicas, grads = [], []
        for images, targets in halves:
            replica = copy.deepcopy(initial).train()
            F.cross_entropy(replica(images), targets).backward()
            replicas.append(replica)
            grads.append([p.grad for p in replica.parameters()])
        averaged = [(g0 + g1) / 2 for g0, g1 in zip(*grads, strict=True)]
        expected = _sgd_step(replicas[0], averaged)  # rank 0's BN running statistics: its own half
        only_rank0 = _sgd_step(copy.deepcopy(initial), grads[0])
    finally:
        torch.set_num_threads(threads)

    trained = load_file(out / "last" / "model.safetensors")
    assert trained.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(trained[key], expected[key], msg=key)
    weight = "features.conv0.weight"
    assert (trained[weight] - only_rank0[weight]).abs().max() > 1e-4  # the processes did exchange gradients
