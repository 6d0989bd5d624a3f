"""A small DenseNet-BC trained for a few seconds on scikit-learn's bundled 8×8 digits: the low-precision tests
(bf16, int8) compare accuracies on a network whose weights and activations have a trained network's ranges,
which random weights do not."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

import densenet
from densenet.model import DenseNet

TRAIN_IMAGES = 1200  # the rest (597) is held out


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as ``(N, 1, 8, 8)`` float32 normalised to about zero mean and unit variance, and labels."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8), values 0–16
    return (images / 16 - 0.3) / 0.4, torch.tensor(digits.target)


@pytest.fixture(scope="session")
def trained_digits() -> tuple[DenseNet, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(eval-mode model, train images, train labels, held-out images, held-out labels)."""
    images, labels = digits_tensors()
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(images), generator=generator)
    train, held_out = order[:TRAIN_IMAGES], order[TRAIN_IMAGES:]
    torch.manual_seed(0)
    model = densenet.create_model("densenet_bc100_k12", growth_rate=8, block_config=(2, 2, 2), num_init_features=16,
                                  in_chans=1, num_classes=10, memory_efficient=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    model.train()
    for _ in range(4):
        for batch in torch.randperm(TRAIN_IMAGES, generator=generator).split(64):
            loss = torch.nn.functional.cross_entropy(model(images[train[batch]]), labels[train[batch]])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), images[train], labels[train], images[held_out], labels[held_out]
