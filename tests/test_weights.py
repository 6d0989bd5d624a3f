"""Weights: torchvision legacy keys, timm, .pth and safetensors, save_pretrained / from_pretrained, errors."""

import json
import logging
import os

import pytest
import torch
import torchvision

import densenet
from densenet.weights import WeightsError, convert_state_dict
from helpers import randomize_batch_norm


@pytest.fixture(scope="module")
def torchvision_bc():
    """A small torchvision DenseNet-BC (CIFAR-sized blocks, ImageNet stem) with random BN statistics."""
    torch.manual_seed(0)
    model = torchvision.models.DenseNet(growth_rate=12, block_config=(3, 3, 3), num_init_features=24, num_classes=10)
    randomize_batch_norm(model)
    return model.eval()


def _ours_for(reference) -> densenet.DenseNet:
    return densenet.DenseNet(growth_rate=12, block_config=(3, 3, 3), num_init_features=24, num_classes=10).eval()


def _legacy(state):
    """torchvision's original key style: denselayer1.norm.1.weight instead of denselayer1.norm1.weight."""
    renamed = {}
    for key, value in state.items():
        for part in ("norm", "relu", "conv"):
            for index in "12":
                key = key.replace(f".{part}{index}.", f".{part}.{index}.")
        renamed[key] = value
    return renamed


def test_legacy_keys_load(torchvision_bc, tmp_path):
    legacy = _legacy(torchvision_bc.state_dict())
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    path = tmp_path / "legacy.pth"
    torch.save(legacy, path)
    model = densenet.load_weights(_ours_for(torchvision_bc), path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), torchvision_bc(x), rtol=1e-5, atol=1e-6)


def test_wrapped_and_prefixed_checkpoint(torchvision_bc, tmp_path):
    wrapped = {"model": {f"module.{k}": v for k, v in torchvision_bc.state_dict().items()}, "epoch": 3}
    path = tmp_path / "checkpoint.pt"
    torch.save(wrapped, path)
    model = densenet.load_weights(_ours_for(torchvision_bc), path)
    assert torch.equal(model.classifier.weight, torchvision_bc.classifier.weight)


def test_missing_num_batches_tracked_is_tolerated(torchvision_bc):
    """An old checkpoint without BN counters loads: the counters keep the model's values, everything else is the
    file's."""
    state = {k: v for k, v in torchvision_bc.state_dict().items() if not k.endswith("num_batches_tracked")}
    model = _ours_for(torchvision_bc)
    counters = [key for key in model.state_dict() if key.endswith("num_batches_tracked")]
    assert len(counters) == 1 + 3 * 3 * 2 + 2 + 1  # norm0, two per layer, two transitions, norm5
    with torch.no_grad():
        for index, key in enumerate(counters):
            model.get_buffer(key).fill_(index + 7)
    assert densenet.load_weights(model, state) is model
    loaded = model.state_dict()
    assert loaded.keys() == state.keys() | set(counters)
    for index, key in enumerate(counters):
        assert loaded[key].item() == index + 7, key
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_timm_state_dict_loads():
    timm = pytest.importorskip("timm")
    reference = timm.create_model("densenet121", pretrained=False, num_classes=7)
    randomize_batch_norm(reference)
    model = densenet.load_weights(densenet.create_model("densenet121", num_classes=7), reference.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), reference.eval()(x), rtol=1e-5, atol=1e-5)


def test_mismatch_names_offending_keys(torchvision_bc):
    with pytest.raises(WeightsError, match=r"shape mismatch: classifier.weight \(file \(10, 69\), model \(5, 69\)\)"):
        densenet.load_weights(densenet.DenseNet(_ours_for(torchvision_bc).config.replace(num_classes=5)),
                              torchvision_bc.state_dict())
    deeper = densenet.DenseNet(growth_rate=12, block_config=(3, 3, 4), num_init_features=24, num_classes=10)
    with pytest.raises(WeightsError, match="missing: features.denseblock3.denselayer4.norm1.weight"):
        densenet.load_weights(deeper, torchvision_bc.state_dict())


def test_unreadable_files(tmp_path):
    model = densenet.create_model("densenet_bc100_k12")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        densenet.load_weights(model, tmp_path / "nope.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="corrupt.pth is not a readable weights file"):
        densenet.load_weights(model, corrupt)
    corrupt_st = tmp_path / "corrupt.safetensors"
    corrupt_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(WeightsError, match="not a readable weights file"):
        densenet.load_weights(model, corrupt_st)


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(1)
    names = [f"class{i}" for i in range(10)]
    model = densenet.create_model("densenet_bc100_k12", class_names=names, drop_rate=0.1)
    randomize_batch_norm(model)
    out = model.save_pretrained(tmp_path / "run" / "best")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((out / "config.json").read_text())
    assert meta["class_names"] == names and meta["num_classes"] == 10 and meta["model_name"] == "densenet_bc100_k12"
    assert meta["architecture"]["block_config"] == [16, 16, 16]

    loaded = densenet.from_pretrained(out)
    assert loaded.config == model.config and loaded.meta.class_names == tuple(names)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model.eval()(x))
    # safetensors file alone loads too
    assert torch.equal(densenet.load_weights(densenet.DenseNet(model.config), out / "model.safetensors")
                       .classifier.weight, model.classifier.weight)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        densenet.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        densenet.from_pretrained(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"architecture": {"growth_rate": -1}}')
    with pytest.raises(WeightsError, match="not a valid densenet config"):
        densenet.from_pretrained(bad)


def test_convert_leaves_modern_keys_alone():
    state = {"features.denseblock1.denselayer10.norm1.weight": torch.zeros(1)}
    assert convert_state_dict(state).keys() == state.keys()


def test_non_strict_load_reports_what_did_not_fit(caplog):
    torch.manual_seed(0)
    source = densenet.create_model("densenet_bc100_k12", block_config=(2, 2, 2), num_classes=10)
    target = densenet.create_model("densenet_bc100_k12", block_config=(2, 2, 2), num_classes=4)
    state = dict(source.state_dict())
    del state["features.norm5.weight"]
    state["extra.weight"] = torch.zeros(1)
    before = {key: value.clone() for key, value in target.state_dict().items()}
    with pytest.raises(WeightsError, match="missing: features.norm5.weight; unexpected: extra.weight; shape mismatch"):
        densenet.load_weights(target, state)
    with caplog.at_level(logging.WARNING, logger="densenet"):
        densenet.load_weights(target, state, strict=False)
    assert "missing: features.norm5.weight" in caplog.text and "unexpected: extra.weight" in caplog.text
    assert "shape mismatch: classifier.weight (file (10, 48), model (4, 48)), classifier.bias" in caplog.text
    for key, value in target.state_dict().items():
        kept = key in ("features.norm5.weight", "classifier.weight", "classifier.bias")
        assert torch.equal(value, before[key] if kept else state[key]), key


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_saved_files_follow_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        directory = densenet.create_model("densenet_bc100_k12", block_config=(1, 1)).save_pretrained(tmp_path / "m")
    finally:
        os.umask(previous)
    assert {path.name: path.stat().st_mode & 0o777 for path in directory.iterdir()} == {
        "model.safetensors": mode, "config.json": mode}
