"""optimize_for_inference: the same eval-mode function, faster."""

import copy
import io

import pytest
import torch

import densenet
from densenet.deploy.folding import fold_batch_norm, fold_relu_affine, relu_affine_as_clamp
from densenet.deploy.optimize import FrozenConv, OptimizedDenseNet, optimize_for_inference
from helpers import max_relative_error, randomize_batch_norm

CASES = [("densenet121", 64, {}), ("densenet_bc100_k12", 32, {}), ("densenet40_k12", 35, {}),
         ("densenet_bc100_k12", 19, {"in_chans": 1, "num_classes": 3, "compression": 0.7})]


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize(("name", "side", "overrides"), CASES)
def test_logits_match_plain_model(name, side, overrides, channels_last):
    torch.manual_seed(0)
    model = densenet.create_model(name, **overrides)
    randomize_batch_norm(model)
    model.eval()
    fast = optimize_for_inference(model, channels_last=channels_last)
    x = torch.randn(3, model.config.in_chans, side, side)
    with torch.no_grad():
        expected = model(x)
    assert max_relative_error(fast(x), expected) <= 1e-4


def test_float64_is_exact_up_to_rounding():
    torch.manual_seed(0)
    model = densenet.create_model("densenet_bc100_k12").double().eval()
    randomize_batch_norm(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert max_relative_error(optimize_for_inference(model)(x), model(x)) <= 1e-12


def test_fold_batch_norm():
    """BN(W ∗ x) = (a·W) ∗ x + b."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, 1, bias=False).double()
    norm = torch.nn.BatchNorm2d(6).double().eval()
    randomize_batch_norm(norm)
    weight, bias = fold_batch_norm(conv.weight, norm)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(torch.nn.functional.conv2d(x, weight, bias), norm(conv(x)))


def test_relu_affine_as_clamp_for_every_sign():
    """σ(a·x + b) = a'·clamp(x, lo, hi) + c for a > 0, a < 0, a = 0 and tiny |a|."""
    scale = torch.tensor([1.5, -0.7, 0.0, 0.0, 1e-40, -2e-31, 3e-5], dtype=torch.float64)
    shift = torch.tensor([0.3, 0.4, 0.8, -0.8, 0.5, -0.2, -1.0], dtype=torch.float64)
    x = torch.linspace(-5, 5, 1001, dtype=torch.float64).unsqueeze(1) * torch.tensor([1, 1, 1, 1, 1, 1, 1e5])
    lo, hi, live_scale, constant = relu_affine_as_clamp(scale, shift)
    expected = torch.relu(scale * x + shift)
    assert torch.allclose(live_scale * torch.clamp(x, lo, hi) + constant, expected, rtol=0, atol=1e-14)


def test_relu_affine_as_clamp_keeps_the_bounds_inside_the_dtype():
    """A kink beyond the largest float16 on the active side: the channel is 0 for every float16 input, and the
    bounds stay finite (a bound of ±∞ would give ∞·0 = NaN)."""
    scale = torch.tensor([1e-4, -1e-4, 1e-4, 2.0, 1e-6])
    shift = torch.tensor([-7.0, -9.0, 7.0, 1.0, 0.3])  # kinks 7e4 (never reached), −9e4 (never), −7e4 (always on),
    # −0.5; and a scale below float16's smallest normal number (6.1e-5): the constant σ(b), within 1e-6·|x|
    lo, hi, live_scale, constant = relu_affine_as_clamp(scale, shift, torch.float16)
    assert torch.isfinite(lo.half()[[0, 1, 4]]).all() and torch.isfinite(hi.half()[[0, 1, 4]]).all()
    x = torch.tensor([-65504.0, -1000.0, -1.0, 0.0, 3.0, 65504.0], dtype=torch.float64).unsqueeze(1)
    expected = torch.relu(scale.double() * x + shift.double())
    actual = live_scale * torch.clamp(x, lo, hi) + constant
    assert torch.allclose(actual[:, :4], expected[:, :4], rtol=1e-12, atol=1e-12)
    assert ((actual[:, 4] - expected[:, 4]).abs() <= 1e-6 * x[:, 0].abs()).all()


def test_float16_model_with_a_pruned_channel_gives_finite_logits():
    torch.manual_seed(0)
    model = densenet.create_model("densenet_bc100_k12", num_classes=10).eval()
    with torch.no_grad():  # γ ≈ 0 with a large negative β: kinks at 7e4 and −9e4, beyond float16's 65504
        norm = model.features.denseblock1.denselayer3.norm1
        norm.weight[5], norm.bias[5] = 1e-4, -7.0
        norm = model.features.transition1.norm
        norm.weight[3], norm.bias[3] = -1e-4, -9.0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        actual = optimize_for_inference(model.half())(x.half()).float()
    assert torch.isfinite(actual).all() and max_relative_error(actual, expected) <= 3e-3


@pytest.mark.parametrize("fused", [True, False])
def test_autocast_does_not_reach_the_folded_model(monkeypatch, fused):
    """Bounds folded for float32 may lie beyond float16's range: under autocast (the plain-conv path is the one
    CUDA takes) the optimized model still computes in its own dtype, with finite logits."""
    monkeypatch.setattr("densenet.deploy.optimize._FUSED_CONV", fused and densenet.deploy.optimize._FUSED_CONV)
    torch.manual_seed(0)
    model = densenet.create_model("densenet_bc100_k12", num_classes=10).eval()
    with torch.no_grad():
        norm = model.features.denseblock1.denselayer3.norm1
        norm.weight[5], norm.bias[5] = 1e-4, -7.0  # kink at 7e4, beyond float16's 65504
    fast = optimize_for_inference(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        with torch.autocast("cpu", dtype=torch.float16):
            actual = fast(x)
    assert actual.dtype == torch.float32 and max_relative_error(actual, expected) <= 1e-4


def test_a_call_outside_inference_mode_after_one_inside():
    torch.manual_seed(0)
    model = densenet.create_model("densenet_bc100_k12", num_classes=10).eval()
    fast = optimize_for_inference(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        inside = fast(x).clone()
    outside = fast(x)  # the workspace made under inference mode is not writable here: rebuilt
    torch.testing.assert_close(outside, inside)


def test_optimized_under_inference_mode():
    """Weights made under torch.inference_mode() have no version counter; the packed-weight cache copes."""
    torch.manual_seed(0)
    model = densenet.create_model("densenet121", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    with torch.inference_mode():
        fast = optimize_for_inference(model)
        inside = fast(x).clone()
    assert max_relative_error(inside, expected) <= 1e-4
    torch.testing.assert_close(fast(x), inside)


def test_fold_relu_affine_into_pooled_1x1_conv():
    """W ∗ pool(σ(a·x + b)) + β = W' ∗ pool(clamp(x, lo, hi)) + β', with BN scales of both signs and zero."""
    torch.manual_seed(0)
    weight, bias = torch.randn(5, 6, 1, 1, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    scale = torch.tensor([1.2, -0.5, 0.0, 2.0, -1e-3, 0.0], dtype=torch.float64).view(-1, 1, 1)
    shift = torch.tensor([0.1, 0.3, 0.7, -0.4, 0.2, -0.6], dtype=torch.float64).view(-1, 1, 1)
    x = torch.randn(2, 6, 6, 6, dtype=torch.float64)
    lo, hi, folded_weight, folded_bias = fold_relu_affine(weight, bias, scale, shift)
    pool, conv2d = torch.nn.functional.avg_pool2d, torch.nn.functional.conv2d
    expected = conv2d(pool(torch.relu(scale * x + shift), 2), weight, bias)
    assert torch.allclose(conv2d(pool(torch.clamp(x, lo, hi), 2), folded_weight, folded_bias), expected,
                          rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batch_norm_scales_of_both_signs_and_zero(dtype):
    """Negative and zero γ (pruned channels, zero-initialised scales) in every BN: still the same function."""
    torch.manual_seed(0)
    model = densenet.create_model("densenet121", num_classes=10).to(dtype)
    randomize_batch_norm(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                signs = torch.tensor([1.0, -1.0, 0.0]).repeat(module.num_features)[:module.num_features]
                module.weight.mul_(signs.to(dtype)[torch.randperm(module.num_features)])
    model.eval()
    x = torch.randn(2, 3, 64, 64, dtype=dtype)
    with torch.no_grad():
        error = max_relative_error(optimize_for_inference(model)(x), model(x))
    assert error <= (1e-12 if dtype == torch.float64 else 1e-4)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_scales_of_one_sign_drop_the_infinite_bound(sign):
    """All BN scales positive: every clamp keeps its lower bound only (all negative: the upper), same function."""
    torch.manual_seed(0)
    model = densenet.DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, num_classes=3,
                              stem="cifar").double()
    randomize_batch_norm(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.abs_().mul_(sign)  # randomize_batch_norm draws both signs
    model.eval()
    fast = optimize_for_inference(model)
    bounds = [(block.lo0, block.hi0) for block in fast.stages[::2]] + [(fast.stages[1].lo, fast.stages[1].hi)]
    kept = [(lo is not None, hi is not None) for lo, hi in bounds]
    assert kept == [(sign > 0, sign < 0)] * 3
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert max_relative_error(fast(x), model(x)) <= 1e-12


def test_carries_metadata_and_checks_input():
    model = densenet.create_model("densenet_bc100_k12", num_classes=2, class_names=["cat", "dog"]).train()
    fast = optimize_for_inference(model)
    # the source model is left as it was: still in training mode, every parameter still trainable
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert isinstance(fast, OptimizedDenseNet) and densenet.optimize_for_inference is optimize_for_inference
    assert fast.meta.class_names == ("cat", "dog") and fast.config == model.config
    assert fast.meta.name == "densenet_bc100_k12"
    with pytest.raises(ValueError, match="expected 3 input channels"):
        fast(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="input dtype torch.bfloat16 differs from the model's torch.float32"):
        fast(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16))
    out = fast(torch.randn(1, 3, 32, 32, requires_grad=True))
    assert not out.requires_grad
    with pytest.raises(TypeError, match="expects a densenet.DenseNet"):
        optimize_for_inference(torch.nn.Linear(2, 2))


def test_new_shapes_dtypes_and_copies_recompute_the_cached_weights():
    """The packed weights and workspaces are caches: another batch size or image size, bfloat16, a deep copy or a
    pickle round trip, and weights changed in place all give the plain model's logits."""
    torch.manual_seed(0)
    model = densenet.create_model("densenet_bc100_k12", num_classes=5)
    randomize_batch_norm(model)
    model.eval()
    fast = optimize_for_inference(model)
    with torch.no_grad():
        for shape in [(3, 3, 32, 32), (1, 3, 32, 32), (2, 3, 40, 36), (3, 3, 32, 32)]:
            x = torch.randn(shape)
            assert max_relative_error(fast(x), model(x)) <= 1e-4
        x = torch.randn(2, 3, 32, 32)
        assert max_relative_error(copy.deepcopy(fast)(x), model(x)) <= 1e-4
        buffer = io.BytesIO()
        torch.save(fast, buffer)
        buffer.seek(0)
        assert max_relative_error(torch.load(buffer, weights_only=False)(x), model(x)) <= 1e-4
        assert max_relative_error(copy.deepcopy(fast).bfloat16()(x.bfloat16()).float(), model(x)) <= 3e-2
        conv = fast.stages[0].conv1[0]
        before = fast(x)
        conv.weight.mul_(-2.0)  # changed in place: the packed copy must follow
        after = fast(x)
        assert not torch.allclose(after, before)
        assert torch.equal(after, copy.deepcopy(fast)(x))  # a copy packs afresh from the current weights
        conv.weight = conv.weight.clone().mul_(0.5)  # replaced by a new tensor (version 1 again, maybe same address)
        assert torch.equal(fast(x), copy.deepcopy(fast)(x))
        conv.weight.data.mul_(3.0)  # not seen by the version counter: clear_cache is the documented remedy
        conv.clear_cache()
        assert torch.equal(fast(x), copy.deepcopy(fast)(x))
        conv.bias.add_(1.0)  # a bias changed in place
        assert torch.equal(fast(x), copy.deepcopy(fast)(x))
        # whole convolution modules replaced: in a block's list, and a transition's
        before = fast(x)
        replaced = copy.deepcopy(conv)
        replaced.weight.mul_(-1.0)
        fast.stages[0].conv1[0] = replaced
        after = fast(x)
        assert not torch.allclose(after, before)
        assert torch.equal(after, copy.deepcopy(fast)(x))
        transition = fast.stages[1].conv
        fast.stages[1].conv = FrozenConv(transition.weight * 2, transition.bias, relu=transition.relu)
        assert torch.equal(fast(x), copy.deepcopy(fast)(x))
        assert not torch.allclose(fast(x), after)
