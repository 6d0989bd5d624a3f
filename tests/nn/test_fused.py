"""The fused CPU kernels (densenet.nn.fused) against the formulas they implement, computed here with plain torch
operations in float64: [BN]'s forward and backward through a ReLU, on strided rows as the dense block passes them;
bfloat16 against float64; bad arguments; and the warning when the kernels cannot be built."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from densenet.nn import fused


@pytest.fixture(autouse=True)
def kernels_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fused.SWITCH, "1")
    assert fused.applies(torch.zeros(1, 1)), "the fused CPU kernels were not built (see the RuntimeWarning)"


def _rows(rows: int, channels: int, width: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """``(rows, channels)`` as the first columns of wider rows: the block's strided view of its buffer."""
    torch.manual_seed(seed)
    return (torch.randn(rows, width, dtype=torch.float64) * 2 + 0.3).to(dtype)[:, :channels]


def _vectors(channels: int, seed: int) -> tuple[torch.Tensor, ...]:
    """``a`` (some negative, one zero), ``b``, ``μ``, ``1/σ`` in float64."""
    torch.manual_seed(seed)
    scale = torch.randn(channels, dtype=torch.float64)
    scale[0] = 0.0
    return scale, torch.randn(channels, dtype=torch.float64), torch.randn(channels, dtype=torch.float64), \
        torch.rand(channels, dtype=torch.float64) + 0.5


def test_affine_relu_rows_is_relu_of_the_affine():
    x = _rows(37, 11, 16, torch.float64, 0)
    scale, shift, _, _ = _vectors(11, 1)
    out = torch.empty(37, 11, dtype=torch.float64)
    fused.affine_relu_rows(x, scale, shift, out)
    torch.testing.assert_close(out, (x * scale + shift).clamp_min(0), rtol=1e-15, atol=1e-15)
    assert (out == 0).any() and (out > 0).any()


def test_bn_relu_backward_rows_adds_a_delta_and_returns_the_sums():
    x = _rows(53, 9, 14, torch.float64, 2)
    scale, shift, mean, invstd = _vectors(9, 3)
    grad_relu = torch.randn(53, 9, dtype=torch.float64)
    grad = torch.randn(53, 14, dtype=torch.float64)
    expected = grad.clone()
    delta = grad_relu * (x * scale + shift > 0)  # δ = ∂L/∂r ⊙ σ'
    expected[:, :9] += scale * delta
    grad_weight, grad_bias = fused.bn_relu_backward_rows(grad[:, :9], grad_relu, x, scale, shift, mean, invstd)
    torch.testing.assert_close(grad, expected, rtol=1e-14, atol=1e-14)  # the columns beyond 9 untouched
    torch.testing.assert_close(grad_weight, (delta * (x - mean) * invstd).sum(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_bias, delta.sum(0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_bn_relu_backward_full_rows_equals_autograd_of_batch_norm_and_relu(training):
    """``∂L/∂x``, ``∂L/∂γ``, ``∂L/∂β`` of ``σ(BN(x))`` — batch statistics or running ones — by autograd."""
    torch.manual_seed(4)
    x = torch.randn(64, 7, dtype=torch.float64) * 1.5 + 0.2
    gamma, beta = torch.randn(7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    running_mean, running_var = torch.randn(7, dtype=torch.float64), torch.rand(7, dtype=torch.float64) + 0.5
    eps = 1e-5
    leaves = [t.clone().requires_grad_() for t in (x, gamma, beta)]
    out = F.relu(F.batch_norm(leaves[0], running_mean.clone(), running_var.clone(), leaves[1], leaves[2], training,
                              0.0, eps))
    grad_relu = torch.randn_like(out)
    expected = torch.autograd.grad(out, leaves, grad_relu)
    if training:
        mean, invstd = x.mean(0), (x.var(0, unbiased=False) + eps).rsqrt()
    else:
        mean, invstd = running_mean, (running_var + eps).rsqrt()
    scale = gamma * invstd
    shift = beta - mean * scale
    grad_x = torch.empty_like(x)
    grad_gamma, grad_beta = fused.bn_relu_backward_full_rows(grad_relu, x, scale, shift, mean, invstd, training,
                                                             grad_x)
    for got, want in zip((grad_x, grad_gamma, grad_beta), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_affine_add_rows_adds_the_affine_of_strided_rows():
    y, x = _rows(29, 5, 12, torch.float64, 5), _rows(29, 5, 8, torch.float64, 6)
    slope, offset, _, _ = _vectors(5, 7)
    out = torch.empty(29, 5, dtype=torch.float64)
    fused.affine_add_rows(y, x, slope, offset, out)
    torch.testing.assert_close(out, y + (slope * x + offset), rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_copy_rows_with_stats_copies_and_takes_batch_statistics(dtype):
    """``dst = src`` bit for bit, and μ, 1/√(σ² + ε) (biased σ²) of each channel against float64 formulas on the
    same values — including a channel far from zero (mean 3000, spread 0.5), where sums of x and x² in float32
    would cancel."""
    src = _rows(300, 6, 9, dtype, 10)
    src[:, 2] = (torch.randn(300, dtype=torch.float64) * 0.5 + 3000).to(dtype)
    dst = torch.zeros(300, 11, dtype=dtype)
    opmath = torch.float64 if dtype == torch.float64 else torch.float32
    mean, invstd = torch.empty(6, dtype=opmath), torch.empty(6, dtype=opmath)
    fused.copy_rows_with_stats(src, dst[:, 3:9], 1e-5, mean, invstd)
    assert torch.equal(dst[:, 3:9], src) and not dst[:, :3].any() and not dst[:, 9:].any()
    values = src.double()
    expected_invstd = (values.var(0, unbiased=False) + 1e-5).rsqrt()
    tolerance = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(mean.double(), values.mean(0), rtol=tolerance, atol=0)
    torch.testing.assert_close(invstd.double(), expected_invstd, rtol=tolerance * 10, atol=0)


def test_bfloat16_rows_compute_in_float32_and_round_once():
    """bfloat16 rows against the float64 formulas on the same (rounded) inputs; the ReLU mask of the backward is
    the forward's own: an entry is active exactly where the forward's output is positive."""
    x = _rows(4096, 48, 64, torch.bfloat16, 8)
    scale, shift, mean, invstd = _vectors(48, 9)
    out = torch.empty(4096, 48, dtype=torch.bfloat16)
    fused.affine_relu_rows(x, scale.float(), shift.float(), out)
    exact = (x.double() * scale + shift).clamp_min(0)
    torch.testing.assert_close(out.double(), exact, rtol=2 ** -8, atol=1e-30)  # one bf16 rounding
    grad_relu = torch.randn(4096, 48).bfloat16()
    grad = torch.zeros(4096, 48, dtype=torch.bfloat16)
    grad_weight, grad_bias = fused.bn_relu_backward_rows(grad, grad_relu, x, scale.float(), shift.float(),
                                                         mean.float(), invstd.float())
    delta = grad_relu.double() * (out > 0)
    torch.testing.assert_close(grad.double(), scale * delta, rtol=2 ** -8, atol=1e-30)
    torch.testing.assert_close(grad_bias.double(), delta.sum(0), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(grad_weight.double(), (delta * (x.double() - mean) * invstd).sum(0), rtol=1e-5,
                               atol=1e-3)


def test_bfloat16_backward_mask_is_the_forwards_where_the_affine_rounds_to_zero():
    """``a·x + b`` with ``x = 0`` is ``b``: tiny positive ``b`` that round to bfloat16's zero (below half its
    smallest subnormal, 2⁻¹³⁴) make the forward's output 0, so the backward must not pass their gradient; just
    above, both are positive; NaN (stored as NaN) and ∞ follow the forward too."""
    shift = torch.tensor([1e-45, 3e-41, 2 ** -134, 4.6e-41, 4.7e-41, 9e-41, 1e-40, 1e-38, -1e-45, 0.0,
                          float("nan"), float("inf"), 1.0], dtype=torch.float32)
    channels = len(shift)
    x = torch.zeros(64, channels, dtype=torch.bfloat16)
    scale = torch.full((channels,), 0.75)
    out = torch.empty_like(x)
    fused.affine_relu_rows(x, scale, shift, out)
    active = out > 0  # NaN is not
    assert active.any() and not active.all()
    stats = torch.zeros(channels), torch.ones(channels)
    grad = torch.zeros_like(x)
    fused.bn_relu_backward_rows(grad, torch.ones_like(x), x, scale, shift, *stats)
    assert torch.equal(grad != 0, active)
    full = torch.empty_like(x)
    fused.bn_relu_backward_full_rows(torch.ones_like(x), x, scale, shift, *stats, False, full)
    assert torch.equal(full != 0, active)


def test_bad_arguments_raise_one_clear_error():
    x = torch.randn(8, 4)
    out = torch.empty(8, 4)
    with pytest.raises(RuntimeError, match="scale must be Float"):
        fused.affine_relu_rows(x, torch.ones(4, dtype=torch.float64), torch.zeros(4), out)
    with pytest.raises(RuntimeError, match="channel stride 1"):
        fused.affine_relu_rows(x.t().contiguous().t(), torch.ones(4), torch.zeros(4), out)
    with pytest.raises(RuntimeError, match=r"out must be \(8, 4\)"):
        fused.affine_relu_rows(x, torch.ones(4), torch.zeros(4), torch.empty(8, 5))
    with pytest.raises(RuntimeError, match="a tensor of its own"):
        fused.affine_add_rows(x, x, torch.ones(4), torch.zeros(4), x)


def test_applies_to_float32_float64_bfloat16_cpu_rows_only(monkeypatch):
    assert all(fused.applies(torch.zeros(2, 2, dtype=d)) for d in (torch.float32, torch.float64, torch.bfloat16))
    assert not fused.applies(torch.zeros(2, 2, dtype=torch.float16))
    assert not fused.applies(torch.zeros(2, 2, device="meta"))
    monkeypatch.setenv(fused.SWITCH, "0")
    assert not fused.applies(torch.zeros(2, 2))


def test_a_failed_build_warns_once_and_leaves_atens_operations(monkeypatch):
    import torch.utils.cpp_extension

    def no_compiler(**_: object) -> None:
        raise RuntimeError("Error building extension 'densenet_fused_bn_relu': c++: not found\nmore lines")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    monkeypatch.setattr(fused, "_loaded", None)
    with pytest.warns(RuntimeWarning, match=r"could not be built \(Error building extension .*c\+\+: not found\)"):
        assert not fused.applies(torch.zeros(2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not fused.applies(torch.zeros(2, 2))  # decided once: no second attempt, no second warning
