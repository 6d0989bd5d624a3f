"""Every forward/backward pair of densenet.tutorial against torch autograd: gradcheck in float64 (micrograd
style: the same expression through both, values and gradients compared)."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from densenet import tutorial as DF


def _double(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=torch.float64, generator=generator).requires_grad_()


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "bias", "shape"),
    [
        (1, 1, 0, False, (2, 5, 6, 7)),  # the bottleneck and transition conv
        (3, 1, 1, False, (2, 4, 5, 5)),  # the dense layer's 3×3 conv
        (7, 2, 3, False, (1, 3, 13, 11)),  # the ImageNet stem conv
        (3, 2, 0, True, (2, 3, 9, 8)),  # a biased, strided, unpadded conv: F1 with b
        (2, 3, 1, True, (1, 2, 7, 10)),
    ],
)
def test_conv2d_gradcheck(kernel, stride, padding, bias, shape):
    """F1 ``O = W∗X + b`` against ``F.conv2d`` and F1b, its gradients: float64 gradcheck."""
    x = _double(*shape)
    weight = _double(3, shape[1], kernel, kernel, seed=1)
    b = _double(3, seed=2) if bias else None
    inputs = (x, weight, b, stride, padding)
    assert gradcheck(lambda *a: DF.conv2d(*a), inputs)
    assert torch.allclose(DF.conv2d(*inputs), F.conv2d(x, weight, b, stride, padding))


def test_conv_then_relu_is_f1():
    """F1 with σ: ``O = σ(W∗X + b)``, gradient ``Wᵀ∗(δ⊙σ')`` (F1b)."""
    x, weight, b = _double(2, 3, 6, 6), _double(4, 3, 3, 3, seed=1), _double(4, seed=2)
    assert gradcheck(lambda x, w, b: DF.relu(DF.conv2d(x, w, b, 1, 1)), (x, weight, b))


def test_relu_gradcheck():
    x = _double(3, 4, 5)
    assert gradcheck(DF.relu, (x,))
    assert torch.equal(DF.relu(x), torch.relu(x))


def test_batch_norm_gradcheck_and_forward():
    x = _double(3, 4, 5, 6) * 3 + 1
    weight, bias = _double(4, seed=1), _double(4, seed=2)
    assert gradcheck(lambda x, w, b: DF.batch_norm(x, w, b, 1e-5), (x, weight, bias))
    expected = F.batch_norm(x, None, None, weight, bias, training=True, eps=1e-5)
    assert torch.allclose(DF.batch_norm(x, weight, bias), expected)


@pytest.mark.parametrize(("kernel", "stride", "padding", "shape"),
                         [(3, 2, 1, (2, 3, 9, 9)), (2, 2, 0, (1, 2, 6, 7)), (3, 1, 1, (1, 2, 5, 5))])
def test_max_pool_gradcheck(kernel, stride, padding, shape):
    # distinct values so the argmax is unique and the function is differentiable at the sample point
    x = (torch.randperm(torch.Size(shape).numel(), generator=torch.Generator().manual_seed(0)).double()
         .view(shape) / 10).requires_grad_()
    assert gradcheck(lambda x: DF.max_pool2d(x, kernel, stride, padding), (x,))
    assert torch.equal(DF.max_pool2d(x, kernel, stride, padding), F.max_pool2d(x, kernel, stride, padding))


@pytest.mark.parametrize(("kernel", "stride", "padding", "shape"),
                         [(2, 2, 0, (2, 3, 8, 8)), (2, 2, 0, (1, 2, 7, 5)), (3, 2, 1, (2, 3, 9, 9))])
def test_avg_pool_gradcheck(kernel, stride, padding, shape):
    """F3 ``O_ij = (1/PQ) Σ x`` against ``F.avg_pool2d`` and F3b, its gradient: float64 gradcheck."""
    x = _double(*shape)
    assert gradcheck(lambda x: DF.avg_pool2d(x, kernel, stride, padding), (x,))
    assert torch.allclose(DF.avg_pool2d(x, kernel, stride, padding), F.avg_pool2d(x, kernel, stride, padding))


def test_avg_pool_backward_spreads_one_over_pq():
    """F3b by hand: a 2×2 pool sends 1/4 of each output's gradient to each of its four inputs."""
    grad = DF.avg_pool2d_backward(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 4, 4), (2, 2), (2, 2), (0, 0))
    assert torch.equal(grad, torch.full((1, 1, 4, 4), 0.25))


def test_global_avg_pool_gradcheck():
    """F4 ``O_k = (1/HW) Σ_ij x_ijk`` against ``F.adaptive_avg_pool2d`` and F4b, its gradient: gradcheck and by
    hand."""
    x = _double(2, 3, 4, 5)
    assert gradcheck(DF.global_avg_pool, (x,))
    assert torch.allclose(DF.global_avg_pool(x), F.adaptive_avg_pool2d(x, 1).flatten(1))
    # F4b: every position receives 1/(HW) of the channel's gradient
    grad = DF.global_avg_pool_backward(torch.ones(1, 1, dtype=torch.float64), torch.Size((1, 1, 4, 5)))
    assert torch.allclose(grad, torch.full((1, 1, 4, 5), 1 / 20, dtype=torch.float64))


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradcheck(bias):
    """F5 ``O = Wx + b`` against ``F.linear`` and F5b, its gradients: float64 gradcheck."""
    x, weight = _double(4, 6), _double(3, 6, seed=1)
    b = _double(3, seed=2) if bias else None
    assert gradcheck(DF.linear, (x, weight, b))
    assert torch.allclose(DF.linear(x, weight, b), F.linear(x, weight, b))


def test_dropout_gradcheck_and_scale():
    """F6 ``O = D⊙x/(1−p)`` (kept units scaled, dropped ones zero) and F6b, its gradient: float64 gradcheck."""
    x = _double(3, 4, 5)
    mask = DF.dropout_mask(x, 0.3, torch.Generator().manual_seed(0))
    assert gradcheck(lambda x: DF.DropoutFunction.apply(x, mask, 0.3), (x,))
    out = DF.DropoutFunction.apply(x, mask, 0.3)
    assert torch.allclose(out[mask], x[mask] / 0.7) and torch.all(out[~mask] == 0)
    assert DF.dropout(x, 0.3, training=False) is x


def test_dropout_mask_rate():
    mask = DF.dropout_mask(torch.empty(100_000), 0.2, torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and abs(mask.float().mean().item() - 0.8) < 0.01


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy(smoothing):
    """F7 softmax cross-entropy against ``F.cross_entropy`` and F7b, ``∂L/∂O = S − y``: gradcheck and the closed
    form."""
    logits = _double(5, 7)
    target = torch.tensor([0, 3, 6, 2, 2])
    assert gradcheck(lambda o: DF.softmax_cross_entropy(o, target, smoothing), (logits,))
    expected = F.cross_entropy(logits, target, label_smoothing=smoothing)
    assert torch.allclose(DF.softmax_cross_entropy(logits, target, smoothing), expected)
    # F7b: ∂L/∂O = (S − y)/N for the batch mean
    onehot = F.one_hot(target, 7).double()
    (grad,) = torch.autograd.grad(DF.softmax_cross_entropy(logits, onehot), logits)
    assert torch.allclose(grad, (torch.softmax(logits, 1) - onehot) / 5)
