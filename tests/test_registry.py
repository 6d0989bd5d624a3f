"""Every registered model, checked the same way (timm style): a new variant is tested by being registered."""

import pytest
import torch
from torch import nn

import densenet
from densenet.analysis import summarize
from helpers import small_input_size

# Published parameter counts: torchvision's model metadata (exact) and the paper's Table 2 (in millions).
TORCHVISION_PARAMS = {"densenet121": 7_978_856, "densenet161": 28_681_000, "densenet169": 14_149_480,
                      "densenet201": 20_013_928}
PAPER_PARAMS_MILLIONS = {"densenet40_k12": 1.0, "densenet100_k12": 7.0, "densenet100_k24": 27.2,
                         "densenet_bc100_k12": 0.8, "densenet_bc250_k24": 15.3, "densenet_bc190_k40": 25.6}
EXPECTED_NAMES = {*TORCHVISION_PARAMS, *PAPER_PARAMS_MILLIONS, "densenet264"}


def test_registry_names():
    assert set(densenet.list_models()) == EXPECTED_NAMES
    assert densenet.list_models("densenet_bc*") == ["densenet_bc100_k12", "densenet_bc190_k40", "densenet_bc250_k24"]


def test_unknown_name_lists_closest():
    with pytest.raises(ValueError, match="unknown model 'densnet121'; closest: densenet121"):
        densenet.create_model("densnet121")


def test_default_class_counts():
    assert densenet.get_config("densenet121").num_classes == 1000
    assert densenet.get_config("densenet_bc100_k12").num_classes == 10


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_torchvision_parameter_counts(name):
    model = densenet.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_MILLIONS))
def test_paper_parameter_counts(name):
    model = densenet.create_model(name)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == PAPER_PARAMS_MILLIONS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_every_model(name):
    """F8: closed-form parameters equal the counted ones; F9: closed-form stage shapes equal a real forward's;
    then output, gradients and a new head."""
    torch.manual_seed(0)
    model = densenet.create_model(name).train()
    config = model.config
    side = small_input_size(name)
    x = torch.randn(2, config.in_chans, side, side)

    # Closed-form parameters and BN buffers equal the counted ones.
    summary = summarize(config, side)
    assert summary.params == sum(p.numel() for p in model.parameters())
    assert summary.bn_buffers == sum(b.numel() for b in model.buffers())

    # Shapes of every stage equal those of the closed form (in eval mode every stage module runs on its own;
    # memory-efficient training fuses the stem's BN-ReLU-max-pool into one Function).
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape[1:])))
             for m in model.features.children() if not isinstance(m, (nn.ReLU, nn.BatchNorm2d))]
    with torch.no_grad():
        model.eval()(x)
    for hook in hooks:
        hook.remove()
    expected = [row.output_shape for row in summary.rows if row.name.startswith(("Conv1", "Pool1", "Dense", "Trans"))]
    assert seen == expected

    logits = model.train()(x)

    # Output shape, finiteness, and a gradient for every parameter.
    assert logits.shape == (2, config.num_classes)
    assert torch.isfinite(logits).all()
    logits.square().mean().backward()
    for pname, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, pname

    # A new head: fresh classifier, features kept.
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
