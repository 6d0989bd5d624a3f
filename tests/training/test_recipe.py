"""training.recipe: the shipped recipes load, and the one walk over TrainConfig's type hints."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from densenet.registry import get_config
from densenet.training.recipe import TrainConfig, field_kinds, load_config, value_kinds

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_the_recipes_are_found():
    names = {path.name for path in CONFIGS}
    assert {"cifar10_paper.yaml", "imagenet.yaml", "digits_demo.yaml"} <= names, names


@pytest.mark.parametrize("path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_every_recipe_loads_into_a_valid_config(path):
    written = yaml.safe_load(path.read_text(encoding="utf-8"))
    config = load_config(path)
    assert isinstance(config, TrainConfig)
    for key, value in written.items():  # every key in the file reaches the config, unchanged (1 reads as 1.0)
        assert getattr(config, key) == value, key
    defaults = TrainConfig()
    for item in dataclasses.fields(TrainConfig):  # and nothing else moves
        if item.name not in written:
            assert getattr(config, item.name) == getattr(defaults, item.name), item.name
    architecture = get_config(config.model, **config.model_args)  # the model and its overrides exist
    assert architecture.num_classes >= 1
    assert config.data_spec().name == config.dataset
    assert TrainConfig.from_dict(yaml.safe_load(config.to_yaml())) == config  # the run's config.yaml round trip


@pytest.mark.parametrize("hint, kinds, element", [
    (int, (int,), None),
    (int | None, (int, type(None)), None),
    (str | None, (str, type(None)), None),
    (list[float], (list,), float),
    (dict[str, Any], (dict,), None),
])
def test_value_kinds(hint, kinds, element):
    assert value_kinds(hint) == (kinds, element)


def test_field_kinds_read_the_config_fields():
    assert field_kinds("milestones") == ((list,), float)
    assert field_kinds("image_size") == ((int, type(None)), None)
    assert field_kinds("nesterov").kinds == (bool,)
    assert field_kinds("model_args").kinds == (dict,)


def test_values_are_coerced_and_checked_by_their_kinds():
    config = TrainConfig(lr=1, milestones=(1 / 4, 1 / 2), warmup_epochs=2)  # YAML's 1, Python's tuple
    assert isinstance(config.lr, float) and config.milestones == [0.25, 0.5] and isinstance(config.warmup_epochs, float)
    assert isinstance(config.epochs, int) and config.image_size is None
    for changes, message in [
        ({"epochs": 2.5}, "config key 'epochs' must be int, got 2.5"),
        ({"epochs": True}, "config key 'epochs' must be int, got True"),
        ({"nesterov": "yes"}, "config key 'nesterov' must be bool, got 'yes'"),
        ({"image_size": "12"}, "config key 'image_size' must be int or null, got '12'"),
        ({"milestones": [0.5, "x"]}, "config key 'milestones' must be list, got \\[0.5, 'x'\\]"),
        ({"model_args": {1: 2}}, "config key 'model_args' must be dict"),
        ({"lr": "0.1"}, "config key 'lr' must be float or null, got '0.1'"),  # null: the optimiser's default
        ({"gamma": None}, "config key 'gamma' must be float, got None"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**changes)
