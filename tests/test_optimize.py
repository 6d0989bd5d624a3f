"""optimize_for_inference: the same eval-mode function, faster."""

import pytest
import torch

import densenet
from conftest import max_relative_error, randomize_batch_norm
from densenet.optimize import OptimizedDenseNet, fold_batch_norm, optimize_for_inference

CASES = [("densenet121", 224, {}), ("densenet_bc100_k12", 32, {}), ("densenet40_k12", 35, {}),
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


def test_carries_metadata_and_checks_input():
    model = densenet.create_model("densenet_bc100_k12", num_classes=2, class_names=["cat", "dog"]).train()
    fast = optimize_for_inference(model)
    # the source model is left as it was: still in training mode, every parameter still trainable
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert isinstance(fast, OptimizedDenseNet)
    assert fast.class_names == ["cat", "dog"] and fast.config == model.config and fast.name == "densenet_bc100_k12"
    with pytest.raises(ValueError, match="expected 3 input channels"):
        fast(torch.randn(1, 1, 32, 32))
    out = fast(torch.randn(1, 3, 32, 32, requires_grad=True))
    assert not out.requires_grad
    with pytest.raises(TypeError, match="expects a densenet.DenseNet"):
        optimize_for_inference(torch.nn.Linear(2, 2))
