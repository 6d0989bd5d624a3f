"""The test helpers themselves: the batch-norm randomiser the parity tests rely on must really randomise."""

import torch
from torch import nn

import densenet
from helpers import max_relative_error, randomize_batch_norm


def _model() -> densenet.DenseNet:
    return densenet.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=3)


def test_randomize_batch_norm_changes_statistics_and_mixes_signs():
    model = _model()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert randomize_batch_norm(model, seed=3) is model
    gammas = torch.cat([norm.weight.detach() for norm in norms])
    assert (gammas < -0.2).sum() >= 0.15 * gammas.numel()  # a good share of clearly negative γ
    assert (gammas > 0.2).sum() >= 0.5 * gammas.numel()
    assert (gammas.abs() < 0.05).any()  # and some near zero
    for norm in norms:
        assert norm.num_batches_tracked.item() == 0  # counters untouched
        for tensor, fresh in ((norm.weight, 1.0), (norm.bias, 0.0), (norm.running_mean, 0.0), (norm.running_var, 1.0)):
            # every channel moved away from the fresh value, and the channels differ from each other
            assert (tensor - fresh).abs().min() > 0 and tensor.std() > 0.05
        assert (norm.running_var > 0).all()
    signs = [(norm.weight > 0).any() and (norm.weight < 0).any() for norm in norms if norm.weight.numel() >= 16]
    assert sum(signs) >= 0.75 * len(signs)  # mixed signs within most batch norms, not only across them


def test_randomize_batch_norm_depends_on_the_seed_alone():
    first, again, other = (randomize_batch_norm(_model(), seed) for seed in (1, 1, 2))
    for (key, a), b, c in zip(first.state_dict().items(), again.state_dict().values(), other.state_dict().values(),
                              strict=True):
        if "norm" in key and "num_batches" not in key:
            assert torch.equal(a, b), key
            assert not torch.equal(a, c), key


def test_max_relative_error_is_relative_to_the_largest_expected_entry():
    expected = torch.tensor([10.0, -2.0, 0.0], dtype=torch.float64)
    assert max_relative_error(torch.tensor([10.0, -2.5, 0.1], dtype=torch.float64), expected) == 0.05
    assert max_relative_error(expected, expected) == 0.0
