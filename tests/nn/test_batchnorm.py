"""The batch norm training runs (densenet.nn.batchnorm) against the tutorial's reference [BN] in float64.

The tutorial's ``batch_norm_forward`` / ``batch_norm_backward`` are checked against autograd in
tests/tutorial/test_formulas.py; here every form of the backward that training runs is checked against them: the
whole-tensor pieces (stem, transitions, BN2) and the dense block's in-place rows form (BN1).
"""

import pytest
import torch
import torch.nn.functional as F

from densenet import tutorial
from densenet.nn import batchnorm
from helpers import max_relative_error

EPS = 1e-5


def _double(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _gamma(channels: int) -> torch.Tensor:
    """γ of both signs and one near zero, so no sign or scale slip goes unnoticed."""
    return torch.linspace(-1.5, 1.2, channels, dtype=torch.float64) + 0.01


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_whole_tensor_backward_equals_reference(memory_format):
    """[BN] training mode: ``parameter_grads`` and ``input_grad`` = the tutorial's ``batch_norm_backward``."""
    x = (_double(3, 5, 4, 6, seed=0) * 2 + 0.7).contiguous(memory_format=memory_format)
    grad_out = _double(3, 5, 4, 6, seed=1).contiguous(memory_format=memory_format)
    weight = _gamma(5)
    _, mean, invstd = tutorial.batch_norm_forward(x, weight, _double(5, seed=2), EPS)
    dx, d_weight, d_bias = tutorial.batch_norm_backward(grad_out, x, weight, mean, invstd)

    grad_weight, grad_bias = batchnorm.parameter_grads(grad_out, x, weight, mean, invstd, True, EPS)
    grad_x = batchnorm.input_grad(grad_out, x, weight, mean, invstd, grad_weight, grad_bias, True)
    assert max_relative_error(grad_weight, d_weight) <= 1e-12
    assert max_relative_error(grad_bias, d_bias) <= 1e-12
    assert max_relative_error(grad_x, dx) <= 1e-12


def test_whole_tensor_backward_with_running_statistics():
    """Eval mode: ``μ, σ²`` are constants, so ``∂L/∂x = a·δ`` (= autograd of ``F.batch_norm``), while ``∂L/∂γ``
    and ``∂L/∂β`` are still the reference's ``Σδx̂`` and ``Σδ`` (with the running ``x̂``)."""
    x, grad_out = _double(2, 4, 3, 5, seed=3) + 0.5, _double(2, 4, 3, 5, seed=4)
    weight, bias = _gamma(4), _double(4, seed=5)
    running_mean, running_var = _double(4, seed=6) * 0.3, torch.rand(4, dtype=torch.float64) + 0.5
    invstd = torch.rsqrt(running_var + EPS)
    _, d_weight, d_bias = tutorial.batch_norm_backward(grad_out, x, weight, running_mean, invstd)

    grad_weight, grad_bias = batchnorm.parameter_grads(grad_out, x, weight, running_mean, invstd, False, EPS)
    grad_x = batchnorm.input_grad(grad_out, x, weight, running_mean, invstd, grad_weight, grad_bias, False)
    leaf = x.clone().requires_grad_()
    y = F.batch_norm(leaf, running_mean, running_var, weight, bias, training=False, eps=EPS)
    (expected_dx,) = torch.autograd.grad(y, leaf, grad_out)
    assert max_relative_error(grad_weight, d_weight) <= 1e-12
    assert max_relative_error(grad_bias, d_bias) <= 1e-12
    assert max_relative_error(grad_x, expected_dx) <= 1e-12


@pytest.mark.parametrize("chunk_elements", [None, 35])
def test_shared_buffer_backward_equals_reference(monkeypatch, chunk_elements):
    """The dense block's BN1 backward: ``bn_relu_backward_into`` adds ``a·δ`` into a view of the shared gradient
    buffer, ``subtract_batch_terms`` accumulates the rest; together they add exactly the reference's ``∂L/∂x`` of
    ``σ(BN(x))`` to the buffer (the other channels untouched), chunked or not (35 elements: 7 rows of 5 channels, 24
    rows)."""
    if chunk_elements is not None:
        monkeypatch.setattr(batchnorm, "_CHUNK_ELEMENTS", chunk_elements)
    n, h, w, channels, total = 2, 3, 4, 5, 9
    m = n * h * w
    buffer = _double(m, total, seed=7) * 2 + 0.3  # (M, total): the block's feature buffer, one row per pixel
    inputs = buffer[:, :channels]  # (M, C): the layer reads the first C channels, a strided view
    image = inputs.view(n, h, w, channels).permute(0, 3, 1, 2)  # (N, C, H, W)
    weight, bias = _gamma(channels), _double(channels, seed=8) * 0.5
    _, mean, invstd = tutorial.batch_norm_forward(image, weight, bias, EPS)
    scale, shift = batchnorm.affine(weight, bias, mean, invstd)
    relu = batchnorm.affine_relu(inputs, scale, shift)  # (M, C): r = σ(a·x + b)
    grad_relu = _double(m, channels, seed=9)  # ∂L/∂r
    grad = _double(m, total, seed=10)  # the shared gradient buffer, holding what later layers sent back
    before = grad.clone()

    # the reference: σ' then the batch-norm backward, on (N, C, H, W)
    delta = tutorial.relu_backward(grad_relu, relu)  # (M, C)
    dx, d_weight, d_bias = tutorial.batch_norm_backward(
        delta.view(n, h, w, channels).permute(0, 3, 1, 2), image, weight, mean, invstd)

    grad_weight, grad_bias = batchnorm.bn_relu_backward_into(grad[:, :channels], grad_relu, relu, inputs, scale,
                                                             mean, invstd)
    offset, slope = torch.zeros(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
    batchnorm.subtract_batch_terms(offset, slope, scale, grad_weight, grad_bias, m)  # −c, −d
    x_hat = (inputs - mean) * invstd  # (M, C)
    grad[:, :channels] += offset + slope * x_hat
    added = (grad - before)[:, :channels].view(n, h, w, channels).permute(0, 3, 1, 2)  # (N, C, H, W)
    assert max_relative_error(grad_weight, d_weight) <= 1e-12
    assert max_relative_error(grad_bias, d_bias) <= 1e-12
    assert max_relative_error(added, dx) <= 1e-12
    assert torch.equal(grad[:, channels:], before[:, channels:])
    assert torch.equal(grad_relu, delta)  # δ was written over ∂L/∂r, as the docstring says


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_statistics_and_running_update_equal_batch_norm(momentum):
    """``channel_stats`` = the reference's ``μ`` and ``1/√(σ² + ε)``; ``update_running_stats_of`` moves the running
    statistics as ``nn.BatchNorm2d`` does in training (unbiased variance; cumulative average without momentum), for
    norms reading the first channels (a dense block's BN1s: here 2 and 3 of the 3 channels)."""
    x = _double(4, 3, 5, 2, seed=11) * 3 - 1
    _, mean, invstd = tutorial.batch_norm_forward(x, torch.ones(3, dtype=torch.float64),
                                                  torch.zeros(3, dtype=torch.float64), EPS)
    ours_mean, ours_invstd = batchnorm.channel_stats(x, EPS)
    assert max_relative_error(ours_mean, mean) <= 1e-12
    assert max_relative_error(ours_invstd, invstd) <= 1e-12

    references = [torch.nn.BatchNorm2d(c, momentum=momentum).double() for c in (2, 3)]
    ours = tuple(torch.nn.BatchNorm2d(c, momentum=momentum).double() for c in (2, 3))
    for step in range(2):
        batch = x * (step + 1)
        for reference in references:
            reference.train()(batch[:, :reference.num_features])
        batchnorm.update_running_stats_of(ours, *batchnorm.channel_stats(batch, EPS), batch.numel() // 3)
    for norm, reference in zip(ours, references, strict=True):
        assert norm.num_batches_tracked.item() == reference.num_batches_tracked.item() == 2
        assert max_relative_error(norm.running_mean, reference.running_mean) <= 1e-12
        assert max_relative_error(norm.running_var, reference.running_var) <= 1e-12
