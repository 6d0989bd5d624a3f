"""DenseNetConfig: validation and serialisation."""

import pytest

from densenet import DenseNetConfig


def test_defaults_are_densenet121():
    config = DenseNetConfig()
    assert (config.growth_rate, config.block_config, config.num_init_features) == (32, (6, 12, 24, 16), 64)
    assert config.bottleneck and config.compression == 0.5


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"growth_rate": 0}, "growth_rate"),
        ({"block_config": ()}, "block_config"),
        ({"block_config": (6, 0)}, "block_config"),
        ({"compression": 0.0}, "compression"),
        ({"compression": 1.5}, "compression"),
        ({"drop_rate": 1.0}, "drop_rate"),
        ({"stem": "tiny"}, "stem"),
        ({"in_chans": 2.5}, "in_chans"),
        ({"bn_size": -1}, "bn_size"),
        ({"memory_efficient": "yes"}, "memory_efficient"),
        ({"compression": 0.01, "num_init_features": 4, "block_config": (1, 1), "growth_rate": 1}, "no channels"),
    ],
)
def test_invalid_values_raise_value_error(changes, message):
    with pytest.raises(ValueError, match=message):
        DenseNetConfig(**changes)


def test_round_trip_and_unknown_keys():
    config = DenseNetConfig(growth_rate=12, block_config=[16, 16, 16], stem="cifar", num_classes=10)
    assert config.block_config == (16, 16, 16)
    assert DenseNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown DenseNet config key.*growthrate"):
        DenseNetConfig.from_dict({**config.to_dict(), "growthrate": 3})
    with pytest.raises(ValueError, match="unknown"):
        config.replace(depth=100)


def test_transition_channels_floor():
    assert DenseNetConfig(compression=0.5).transition_channels(257) == 128
    assert DenseNetConfig(compression=0.29).transition_channels(100) == 29
    assert DenseNetConfig(compression=1.0).transition_channels(100) == 100


@pytest.mark.parametrize(("stem", "blocks", "smallest"), [("imagenet", (6, 12, 24, 16), 29), ("cifar", (1, 1, 1), 4),
                                                         ("cifar", (1,), 1), ("imagenet", (1,), 1)])
def test_min_input_size(stem, blocks, smallest):
    # Hand-derived: ImageNet stem divides by 4 (rounding up), each transition by 2 (rounding down), so the
    # 7×7 maps of a 224 input need ≥ 8 after the stem, i.e. ≥ 29 at the input.
    assert DenseNetConfig(stem=stem, block_config=blocks).min_input_size == smallest
