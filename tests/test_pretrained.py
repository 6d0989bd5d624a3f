"""Pretrained starts: the weights registry, a cached file under torchvision's own name loaded without network (equal
to torchvision's model loaded from the same file), and the adaptations (input channels, a fresh head)."""

from __future__ import annotations

import logging
import re

import pytest
import torch
import torchvision

import densenet
from densenet import pretrained
from densenet.hub import DownloadError
from densenet.weights import WeightsError
from helpers import randomize_batch_norm

TORCHVISION_FILE = "densenet121-a639ec97.pth"


@pytest.fixture
def cached_torchvision_file(tmp_path, monkeypatch):
    """A torchvision densenet121 with random weights and statistics, saved as torchvision's published file is (its
    legacy ``norm.1`` key names, no ``num_batches_tracked``) under that file's name in a fresh torch.hub cache; no
    server anywhere."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("DENSENET_WEIGHTS_MIRROR", "http://127.0.0.1:9")  # a download would fail at once
    torch.manual_seed(0)
    source = torchvision.models.densenet121()
    randomize_batch_norm(source, seed=1)
    legacy = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key): value
              for key, value in source.state_dict().items() if not key.endswith("num_batches_tracked")}
    folder = tmp_path / "torch_home" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(legacy, folder / TORCHVISION_FILE)
    return folder / TORCHVISION_FILE


def test_registry_entries_match_their_architectures():
    entries = pretrained.list_pretrained()
    assert [entry.name for entry in entries] == [f"densenet{n}.imagenet1k" for n in (121, 161, 169, 201)]
    for entry in entries:
        model = densenet.create_model(entry.architecture)
        assert sum(p.numel() for p in model.parameters()) == entry.num_params
        assert entry.url.endswith(".pth") and re.search(r"-[0-9a-f]{8}\.pth$", entry.url)
        assert 70 < entry.metrics["acc@1"] < entry.metrics["acc@5"] < 100
    assert pretrained.get_weights("densenet121").preprocessing == densenet.Preprocessing(
        "RGB", 256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    names = pretrained.get_weights("densenet121").class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[-1] == "toilet tissue"


def test_unknown_weights_are_one_line_errors():
    with pytest.raises(ValueError, match=r"unknown weights 'imagenet' .*'imagenet1k'.*available: imagenet1k"):
        pretrained.get_weights("densenet121", "imagenet")
    with pytest.raises(ValueError, match="no pretrained weights for 'densenet_bc100_k12'; models with weights: dense"):
        pretrained.get_weights("densenet_bc100_k12")


def test_cached_torchvision_file_loads_offline_and_equals_torchvision(cached_torchvision_file):
    weights = pretrained.get_weights("densenet121")
    model = pretrained.load_pretrained(densenet.create_model("densenet121"), weights, progress=False).eval()
    theirs = torchvision.models.densenet121(weights=torchvision.models.DenseNet121_Weights.IMAGENET1K_V1).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), theirs(x), rtol=1e-4, atol=1e-5)
    assert model.meta.class_names == weights.class_names() and model.meta.preprocessing == weights.preprocessing


@pytest.mark.parametrize("in_chans", [1, 6])
def test_adapted_stem_sees_a_repeated_gray_image_as_the_rgb_model_does(cached_torchvision_file, in_chans, caplog):
    weights = pretrained.get_weights("densenet121")
    rgb = pretrained.load_pretrained(densenet.create_model("densenet121"), weights, progress=False).eval()
    with caplog.at_level(logging.INFO, logger="densenet"):
        adapted = pretrained.load_pretrained(densenet.create_model("densenet121", in_chans=in_chans), weights,
                                             progress=False).eval()
    assert f"adapted from 3 to {in_chans} input channel(s)" in caplog.text
    gray = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(adapted(gray.expand(-1, in_chans, -1, -1)), rgb(gray.expand(-1, 3, -1, -1)),
                                   rtol=1e-4, atol=1e-5)
    if in_chans == 1:  # images are read in gray; the normalisation is the RGB mean of ImageNet's
        assert adapted.meta.preprocessing == densenet.Preprocessing("L", 256, 224, (0.449,), (0.226,))
    else:  # no image mode has 6 channels: the data must bring its own preprocessing
        assert adapted.meta.preprocessing is None


def test_five_channels_repeat_and_scale_the_rgb_kernels():
    weight = torch.randn(4, 3, 7, 7)
    adapted = pretrained.adapt_input_channels(weight, 5)
    expected = torch.cat([weight, weight[:, :2]], dim=1) * (3 / 5)  # R G B R G, each × 3/5
    torch.testing.assert_close(adapted, expected)


def test_other_class_count_keeps_a_fresh_head_and_says_which_keys(cached_torchvision_file, caplog):
    torch.manual_seed(5)
    model = densenet.create_model("densenet121", num_classes=5, class_names=list("abcde"))
    initial = {key: value.clone() for key, value in model.state_dict().items() if key.startswith("classifier.")}
    with caplog.at_level(logging.INFO, logger="densenet"):
        pretrained.load_pretrained(model, pretrained.get_weights("densenet121"), progress=False)
    assert "5 classes instead of 1000" in caplog.text and "classifier.weight, classifier.bias" in caplog.text
    for key, value in initial.items():
        assert torch.equal(model.state_dict()[key], value)
    file = torch.load(cached_torchvision_file, weights_only=True)
    assert torch.equal(model.features.conv0.weight, file["features.conv0.weight"])
    assert model.meta.class_names == tuple("abcde")


def test_corrupt_cached_file_is_named(cached_torchvision_file):
    cached_torchvision_file.write_bytes(b"truncated")
    with pytest.raises(WeightsError, match=rf"cached weights file .*{TORCHVISION_FILE} is corrupt.*delete it"):
        pretrained.load_pretrained(densenet.create_model("densenet121"), pretrained.get_weights("densenet121"))


def test_missing_file_without_network_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("DENSENET_WEIGHTS_MIRROR", "http://127.0.0.1:9")
    with pytest.raises(DownloadError, match=rf"place it at {tmp_path}/hub/checkpoints/{TORCHVISION_FILE}"):
        pretrained.load_pretrained(densenet.create_model("densenet121"), pretrained.get_weights("densenet121"),
                                   progress=False)


def test_create_model_pretrained_and_weights_tag(cached_torchvision_file):
    file = torch.load(cached_torchvision_file, weights_only=True)
    model = densenet.create_model("densenet121", pretrained=True, progress=False)
    assert torch.equal(model.features.denseblock2.denselayer3.conv2.weight,
                       file["features.denseblock2.denselayer3.conv.2.weight"])
    assert model.meta.name == "densenet121" and len(model.meta.class_names) == 1000
    tagged = densenet.create_model("densenet121", weights="densenet121.imagenet1k", num_classes=3, progress=False)
    assert torch.equal(tagged.features.norm5.running_var, file["features.norm5.running_var"])
    backbone = densenet.create_model("densenet121", pretrained=True, features_only=True, out_indices=(-1,),
                                     progress=False)
    assert torch.equal(backbone.features.conv0.weight, file["features.conv0.weight"])
    assert backbone.meta.preprocessing.crop == 224
    with pytest.raises(ValueError, match="block_config would change them"):
        densenet.create_model("densenet121", pretrained=True, block_config=(6, 12, 24, 8))
    with pytest.raises(ValueError, match="unknown weights 'imagenet21k'"):
        densenet.create_model("densenet121", weights="imagenet21k")
