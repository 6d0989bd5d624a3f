"""Backbone use: the multi-scale feature maps and their feature_info, against the model's own modules."""

from __future__ import annotations

import pytest
import torch

import densenet
from densenet.features import DenseNetFeatures, check_indices, feature_taps


def test_densenet121_taps_match_timm_scales_at_224():
    config = densenet.get_config("densenet121")
    taps = [(tap.num_chs, 224 // tap.reduction) for tap in feature_taps(config)]
    assert taps == [(64, 112), (256, 56), (512, 28), (1024, 14), (1024, 7)]
    model = DenseNetFeatures(densenet.create_model("densenet121").features, config).eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 224, 224))
    assert [(m.shape[1], m.shape[2], m.shape[3]) for m in maps] == [(c, s, s) for c, s in taps]


def _hooked_maps(model: densenet.DenseNet, x: torch.Tensor) -> list[torch.Tensor]:
    """The same maps read with forward hooks on the plain model's modules."""
    seen: dict[str, torch.Tensor] = {}
    handles = [module.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.clone()))
               for name, module in model.features.named_children()]
    final = model.forward_features(x)
    for handle in handles:
        handle.remove()
    stem = "relu0" if model.config.stem == "imagenet" else "conv0"
    blocks = [f"denseblock{i}" for i in range(1, len(model.config.block_config))]
    return [seen[stem], *(seen[name] for name in blocks), final]


@pytest.mark.parametrize(("name", "side"), [("densenet121", 64), ("densenet_bc100_k12", 32)])
def test_maps_equal_the_models_own_intermediate_outputs(name, side):
    torch.manual_seed(0)
    model = densenet.create_model(name, memory_efficient=False).eval()
    backbone = DenseNetFeatures(model.features, model.config)
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        expected = _hooked_maps(model, x)
        maps = backbone(x)
    assert len(maps) == len(expected) == len(backbone.feature_info)
    for got, want, info in zip(maps, expected, backbone.feature_info, strict=True):
        assert got.shape == want.shape and got.shape[1] == info["num_chs"] and side // got.shape[2] == info["reduction"]
        torch.testing.assert_close(got, want)


def test_training_gradients_equal_the_plain_path():
    torch.manual_seed(0)
    efficient = densenet.create_model("densenet121", block_config=(2, 2, 2), num_classes=0)
    plain = densenet.create_model("densenet121", block_config=(2, 2, 2), num_classes=0, memory_efficient=False)
    plain.load_state_dict(efficient.state_dict())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    grads = []
    for model in (efficient.double().train(), plain.double().train()):
        maps = DenseNetFeatures(model.features, model.config, out_indices=(1, -1))(x)
        sum(m.square().mean() for m in maps).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_indices_and_state_dict():
    config = densenet.get_config("densenet121")
    assert check_indices(config, None) == [0, 1, 2, 3, 4]
    assert check_indices(config, 2) == [3, 4] and check_indices(config, (-1, 1)) == [1, 4]
    with pytest.raises(ValueError, match="out of range.*5 maps"):
        check_indices(config, (5,))
    model = densenet.create_model("densenet121", block_config=(1, 1))
    backbone = DenseNetFeatures(model.features, model.config, out_indices=(0,))
    expected = {key for key in model.state_dict() if not key.startswith("classifier.")}
    assert set(backbone.state_dict()) == expected
    assert backbone.feature_info == [{"num_chs": 64, "reduction": 2, "module": "features.relu0"}]


# tiny networks with the ImageNet stem in 1D and 3D: (spatial dims, input side)
SIGNAL_AND_VOLUME = [(1, 64), (3, 16)]


def _tiny_nd(dims: int, **overrides: object) -> densenet.DenseNet:
    return densenet.create_model("densenet121", spatial_dims=dims, in_chans=1, growth_rate=4, block_config=(2, 2, 2),
                                 num_init_features=8, bn_size=2, num_classes=0, **overrides)


@pytest.mark.parametrize(("dims", "side"), SIGNAL_AND_VOLUME)
def test_maps_in_1d_and_3d_equal_the_models_own_outputs(dims, side):
    """``features_only`` on a signal or volume model: one ``(N, num_chs, *[side / reduction] * d)`` map per tap,
    equal to the plain model's module outputs read with hooks, and ``feature_info`` from the closed form."""
    torch.manual_seed(dims)
    model = _tiny_nd(dims, memory_efficient=False).eval()
    backbone = densenet.create_model("densenet121", spatial_dims=dims, in_chans=1, growth_rate=4,
                                     block_config=(2, 2, 2), num_init_features=8, bn_size=2, features_only=True)
    assert isinstance(backbone, DenseNetFeatures)
    backbone.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")})
    x = torch.randn(2, 1, *[side] * dims)
    with torch.no_grad():
        expected = _hooked_maps(model, x)
        maps = backbone.eval()(x)
    # 8 stem channels at stride 2; 8 + 2·4 = 16 after block 1 (stride 4), 8 + 8 = 16 after block 2 (stride 8),
    # 8 + 8 = 16 after the last block and norm5 (stride 16)
    assert [(info["num_chs"], info["reduction"]) for info in backbone.feature_info] == [
        (8, 2), (16, 4), (16, 8), (16, 16)]
    assert len(maps) == len(expected) == 4
    for got, want, info in zip(maps, expected, backbone.feature_info, strict=True):
        assert tuple(got.shape) == (2, info["num_chs"], *[side // info["reduction"]] * dims)
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(("dims", "side"), SIGNAL_AND_VOLUME)
def test_training_gradients_in_1d_and_3d_equal_the_plain_path(dims, side):
    """Through the explicit dense blocks and transitions (the stem runs module by module to give its map), in
    float64, as in 2D above."""
    torch.manual_seed(dims)
    efficient, plain = _tiny_nd(dims), _tiny_nd(dims, memory_efficient=False)
    plain.load_state_dict(efficient.state_dict())
    x = torch.randn(3, 1, *[side] * dims, dtype=torch.float64)
    grads = []
    for model in (efficient.double().train(), plain.double().train()):
        maps = DenseNetFeatures(model.features, model.config, out_indices=(0, 1, -1))(x)
        sum(m.square().mean() for m in maps).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
