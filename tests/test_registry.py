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

# The paper's CIFAR models counted exactly, by hand, stage by stage (each term below is one stage's count).
# conv0: 3×3 conv from 3 channels, 27·c0 (c0 = 16, or 2k with bottleneck); no BN before the first block.
# A layer reading c maps: plain, BN 2c + 3×3 conv 9·c·k = (2 + 9k)·c; with bottleneck (B), BN 2c + 1×1 conv c·4k
#   + BN 2·4k + 3×3 conv 9·4k·k = (2 + 4k)·c + 8k + 36k².  A block of n layers from c0 reads
#   Σc = n·c0 + k·n(n − 1)/2 maps in all.
# A transition reading c maps: BN 2c + 1×1 conv c·c' with c' = c (plain) or ⌊c/2⌋ (C, θ = 0.5).
# The head on c maps: BN 2c + fully connected 10c + 10.
CIFAR_PARAMS = {
    # n = 12, k = 12: 110·c per layer; Σc = 984, 2712, 4440; widths 160, 304, 448
    "densenet40_k12": 432 + 110 * 984 + (2 * 160 + 160 * 160) + 110 * 2712 + (2 * 304 + 304 * 304)
    + 110 * 4440 + (2 * 448 + 10 * 448 + 10),  # = 1,019,722
    # n = 32, k = 12: 110·c per layer; Σc = 6464, 18752, 31040; widths 400, 784, 1168
    "densenet100_k12": 432 + 110 * 6464 + (2 * 400 + 400 * 400) + 110 * 18752 + (2 * 784 + 784 * 784)
    + 110 * 31040 + (2 * 1168 + 10 * 1168 + 10),  # = 6,979,642
    # n = 32, k = 24: 218·c per layer; Σc = 12416, 36992, 61568; widths 784, 1552, 2320
    "densenet100_k24": 432 + 218 * 12416 + (2 * 784 + 784 * 784) + 218 * 36992 + (2 * 1552 + 1552 * 1552)
    + 218 * 61568 + (2 * 2320 + 10 * 2320 + 10),  # = 27,249,082
    # n = 16, k = 12: 50·c + 5280 per layer; Σc = 1824, 3168, 3840; widths 216 → 108, 300 → 150, 342
    "densenet_bc100_k12": 648 + (50 * 1824 + 16 * 5280) + (2 * 216 + 216 * 108) + (50 * 3168 + 16 * 5280)
    + (2 * 300 + 300 * 150) + (50 * 3840 + 16 * 5280) + (2 * 342 + 10 * 342 + 10),  # = 769,162
    # n = 41, k = 24: 98·c + 20928 per layer; Σc = 21648, 40836, 50430; widths 1032 → 516, 1500 → 750, 1734
    "densenet_bc250_k24": 1296 + (98 * 21648 + 41 * 20928) + (2 * 1032 + 1032 * 516) + (98 * 40836 + 41 * 20928)
    + (2 * 1500 + 1500 * 750) + (98 * 50430 + 41 * 20928) + (2 * 1734 + 10 * 1734 + 10),  # = 15,324,406
    # n = 31, k = 40: 162·c + 57920 per layer; Σc = 21080, 39060, 48050; widths 1320 → 660, 1900 → 950, 2190
    "densenet_bc190_k40": 2160 + (162 * 21080 + 31 * 57920) + (2 * 1320 + 1320 * 660) + (162 * 39060 + 31 * 57920)
    + (2 * 1900 + 1900 * 950) + (162 * 48050 + 31 * 57920) + (2 * 2190 + 10 * 2190 + 10),  # = 25,624,430
}


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
    """The counted parameters equal the by-hand count exactly, and the paper's Table 2 rounded to 0.1M."""
    model = densenet.create_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert count == CIFAR_PARAMS[name]
    assert round(count / 1e6, 1) == PAPER_PARAMS_MILLIONS[name]


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
