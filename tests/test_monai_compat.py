"""MONAI DenseNet checkpoints load with ``load_weights`` and give MONAI's logits (relative ≤ 1e-5), in every
dimension; ``config_from_state_dict`` reads the architecture off their shapes."""

from __future__ import annotations

import pytest
import torch
from monai.networks import nets

import densenet
from densenet.monai_compat import config_from_state_dict, rename_monai_key
from densenet.weights import WeightsError
from helpers import max_relative_error, randomize_batch_norm

# MONAI's named models and ours: the same blocks, so one state dict serves both.
NAMED = {"densenet121": nets.DenseNet121, "densenet264": nets.DenseNet264}


def _monai_logits_and_ours(reference: torch.nn.Module, ours: densenet.DenseNet, x: torch.Tensor, tmp_path):
    """Save MONAI's state dict as a ``.pth`` file, load it into ours by path, return both eval logits."""
    randomize_batch_norm(reference.eval())
    path = tmp_path / "monai.pth"
    torch.save(reference.state_dict(), path)
    densenet.load_weights(ours.eval(), path)
    with torch.no_grad():
        return reference(x), ours(x)


@pytest.mark.parametrize("name", sorted(NAMED))  # DenseNet169/201 differ from these in layer counts only
def test_named_2d_checkpoints_give_monais_logits_and_their_config(name, tmp_path):
    torch.manual_seed(0)
    reference = NAMED[name](spatial_dims=2, in_channels=1, out_channels=3)
    assert config_from_state_dict(reference.state_dict()) == densenet.get_config(name, in_chans=1, num_classes=3)
    ours = densenet.create_model(name, in_chans=1, num_classes=3)
    x = torch.randn(2, 1, 32, 32)  # final maps 1×1
    expected, actual = _monai_logits_and_ours(reference, ours, x, tmp_path)
    assert max_relative_error(actual, expected) <= 1e-5


def test_keys_are_renamed_and_others_left_alone():
    assert rename_monai_key("features.denseblock2.denselayer7.layers.conv2.weight") == \
        "features.denseblock2.denselayer7.conv2.weight"
    assert rename_monai_key("class_layers.out.bias") == "classifier.bias"
    for key in ("features.transition1.conv.weight", "features.norm5.running_var", "classifier.weight",
                "features.denseblock1.denselayer1.norm1.weight"):
        assert rename_monai_key(key) == key


def test_a_monai_checkpoint_for_other_layers_is_refused_by_name(tmp_path):
    reference = nets.DenseNet(spatial_dims=2, in_channels=1, out_channels=2, init_features=8, growth_rate=4,
                              block_config=(2, 2), bn_size=2)
    ours = densenet.DenseNet(growth_rate=4, block_config=(2, 3), num_init_features=8, bn_size=2, num_classes=2,
                             in_chans=1)
    with pytest.raises(WeightsError, match=r"missing: features\.denseblock2\.denselayer3"):
        densenet.load_weights(ours, reference.state_dict())


def test_config_from_something_else_is_refused():
    with pytest.raises(ValueError, match="not a DenseNet state dict"):
        config_from_state_dict({"weight": torch.zeros(3, 3)})


@pytest.mark.parametrize(("spatial_dims", "shape"), [(3, (1, 1, 32, 32, 32)), (1, (2, 1, 64))])
def test_densenet121_in_1d_and_3d_gives_monais_logits(spatial_dims, shape, tmp_path):
    torch.manual_seed(0)
    reference = nets.DenseNet121(spatial_dims=spatial_dims, in_channels=1, out_channels=2)
    config = config_from_state_dict(reference.state_dict())
    assert config == densenet.get_config("densenet121", spatial_dims=spatial_dims, in_chans=1, num_classes=2)
    ours = densenet.create_model("densenet121", spatial_dims=spatial_dims, in_chans=1, num_classes=2)
    expected, actual = _monai_logits_and_ours(reference, ours, torch.randn(*shape), tmp_path)
    assert max_relative_error(actual, expected) <= 1e-5


def test_a_3d_checkpoint_does_not_load_into_a_2d_model():
    reference = nets.DenseNet(spatial_dims=3, in_channels=1, out_channels=2, init_features=8, growth_rate=4,
                              block_config=(2,), bn_size=2)
    ours = densenet.DenseNet(growth_rate=4, block_config=(2,), num_init_features=8, bn_size=2, num_classes=2,
                             in_chans=1)
    with pytest.raises(WeightsError, match=r"shape mismatch: features\.conv0\.weight \(file \(8, 1, 7, 7, 7\)"):
        densenet.load_weights(ours, reference.state_dict())
