"""Fine-tuning runs: --init-from (a previous run's best/, another head), --pretrained (the weights registry, from a
cached file), --freeze-epochs and --backbone-lr-factor, and the fine-tuning recipe
(configs/finetune_chest_xray.yaml)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file

import densenet
from densenet.data.shapes import LABELS, write_shapes_dataset
from densenet.training.engine import train
from densenet.training.recipe import load_config
from densenet.weights import WeightsError
from helpers import randomize_batch_norm

TINY = {"dataset": "synthetic", "train_limit": 256, "eval_limit": 64, "image_size": 16, "model": "densenet_bc100_k12",
        "model_args": {"block_config": [2, 2], "growth_rate": 8}, "batch_size": 32, "epochs": 1, "log_every": 0,
        "workers": 0}


def _weights(directory):
    return load_file(directory / "model.safetensors")


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A finished tiny run on the synthetic set (10 classes): the start of the other runs."""
    out = tmp_path_factory.mktemp("source") / "run"
    train(load_config(**TINY, out=str(out)))
    return out


def test_backbone_is_released_after_the_frozen_epochs(source_run, tmp_path, caplog):
    start = _weights(source_run / "best")
    with caplog.at_level("INFO", logger="densenet"):
        result = train(load_config(**{**TINY, "epochs": 2, "train_limit": 128}, init_from=str(source_run / "best"),
                                   freeze_epochs=1, out=str(tmp_path / "frozen")))
    assert "starting from the weights in" in caplog.text and result.epoch == 2
    state = result.model.state_dict()
    assert all(p.requires_grad for p in result.model.parameters())  # released for epoch 2
    changed = [key for key in start if not torch.equal(start[key], state[key].cpu())]
    assert any(key.startswith("features.") for key in changed)  # epoch 2 trained everything


def test_frozen_epoch_changes_the_classifier_only(source_run, tmp_path):
    start = _weights(source_run / "best")
    result = train(load_config(**TINY, init_from=str(source_run / "best"), freeze_epochs=1,
                               out=str(tmp_path / "frozen")))
    after = _weights(tmp_path / "frozen" / "last")
    changed = {key for key in start if not torch.equal(start[key], after[key])}
    assert changed == {"classifier.weight", "classifier.bias"}  # BN statistics too stayed (eval mode)
    assert result.model.meta.preprocessing.mean == densenet.from_pretrained(source_run / "best").meta.preprocessing.mean


def test_gray_run_from_an_rgb_start_adapts_the_stem(source_run, tmp_path, caplog):
    with caplog.at_level("INFO", logger="densenet"):
        result = train(load_config(**{**TINY, "train_limit": 64, "model_args": {**TINY["model_args"], "in_chans": 1}},
                                   init_from=str(source_run / "best"), out=str(tmp_path / "other")))
    assert "first convolution adapted from 3 to 1 input channel(s)" in caplog.text
    assert result.model.config.in_chans == 1


def test_init_from_another_architecture_names_the_keys(source_run, tmp_path):
    with pytest.raises(WeightsError, match=r"missing: features\.denseblock1\.denselayer3"):
        train(load_config(**{**TINY, "model_args": {"block_config": [3, 2], "growth_rate": 8}},
                          init_from=str(source_run / "best"), out=str(tmp_path / "bad")))
    assert not (tmp_path / "bad").exists()


@pytest.fixture
def step_learning_rates(monkeypatch):
    """``record(optimizer_class)``: from then on each ``step`` of that class appends its groups' learning rates to
    the list it returns (the class's own ``step`` still runs; restored after the test)."""

    def record(optimizer_class: type[torch.optim.Optimizer]) -> list[list[float]]:
        steps: list[list[float]] = []
        original = optimizer_class.step

        def spy(self, *args, **kwargs):
            steps.append([group["lr"] for group in self.param_groups])
            return original(self, *args, **kwargs)

        monkeypatch.setattr(optimizer_class, "step", spy)
        return steps

    return record


def test_backbone_learning_rate_factor(tmp_path, step_learning_rates):
    lrs = step_learning_rates(torch.optim.SGD)
    train(load_config(**{**TINY, "train_limit": 64}, lr=0.1, backbone_lr_factor=0.1, warmup_epochs=0,
                      out=str(tmp_path / "run")))
    assert lrs[0] == pytest.approx([0.01, 0.1])


FINETUNE_RECIPE = Path(__file__).parents[2] / "configs" / "finetune_chest_xray.yaml"


@pytest.fixture
def cached_densenet121(tmp_path, monkeypatch) -> dict[str, torch.Tensor]:
    """torchvision's densenet121 file (random weights, its legacy key names) in torch.hub's cache, and a mirror
    nothing listens on: the registry must read the cached file, not download. Returns the file's state dict."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("DENSENET_WEIGHTS_MIRROR", "http://127.0.0.1:9")
    torch.manual_seed(0)
    source = randomize_batch_norm(torchvision.models.densenet121())
    legacy = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key): value
              for key, value in source.state_dict().items() if not key.endswith("num_batches_tracked")}
    folder = tmp_path / "torch_home" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(legacy, folder / "densenet121-a639ec97.pth")
    return legacy


def test_pretrained_start_uses_the_weights_normalisation(tmp_path, cached_densenet121):
    legacy = cached_densenet121
    result = train(load_config(dataset="synthetic", train_limit=16, eval_limit=8, image_size=32, model="densenet121",
                               pretrained=True, freeze_epochs=1, epochs=1, batch_size=8, workers=0, log_every=0,
                               out=str(tmp_path / "run")))
    saved = densenet.from_pretrained(tmp_path / "run" / "last")
    assert saved.meta.preprocessing.mean == (0.485, 0.456, 0.406) and saved.meta.preprocessing.crop == 32
    assert torch.equal(saved.features.conv0.weight, legacy["features.conv0.weight"])
    assert saved.meta.class_names == tuple(f"class{i}" for i in range(10)) and result.model.config.num_classes == 10


def test_recipe_refuses_two_starts_and_bad_freeze():
    with pytest.raises(ValueError, match="choose one"):
        load_config(**TINY, pretrained=True, init_from="x")
    with pytest.raises(ValueError, match=r"freeze_epochs must be in \[0, epochs\]"):
        load_config(**TINY, freeze_epochs=2)
    with pytest.raises(ValueError, match="backbone_lr_factor"):
        load_config(**TINY, backbone_lr_factor=-1.0)


def test_start_trained_on_other_classes_gets_a_fresh_head(source_run, tmp_path, caplog):
    start = _weights(source_run / "best")
    torch.manual_seed(0)
    fresh = densenet.create_model("densenet_bc100_k12", **TINY["model_args"], in_chans=1)  # the run's own init
    with caplog.at_level("INFO", logger="densenet"):
        result = train(load_config(dataset="digits", image_size=8, model="densenet_bc100_k12", epochs=1,
                                   model_args=TINY["model_args"], batch_size=64, log_every=0, lr=1e-9,
                                   init_from=str(source_run / "best"), freeze_epochs=1, out=str(tmp_path / "digits")))
    assert "was trained on other classes (class0, class1, class2, …): its classifier is left out" in caplog.text
    assert "fresh classifier; left at initialisation: classifier.weight, classifier.bias" in caplog.text
    head = result.model.classifier.weight.detach()
    assert not torch.allclose(head, start["classifier.weight"]) and torch.allclose(head, fresh.classifier.weight,
                                                                                  atol=1e-6)


def test_fine_tuning_recipe_trains_a_multi_label_table_from_the_pretrained_start(tmp_path, cached_densenet121,
                                                                                  step_learning_rates, caplog):
    """The recipe as written, on a generated multi-label CSV table at 32² (the size, epochs, batch and loader are
    overridden to fit the suite): the pretrained start, the frozen first epoch, the backbone's lower rate under
    AdamW, positive weights, a multi-label head, and the recipe recorded in the run's config.yaml."""
    data = write_shapes_dataset(tmp_path / "shapes", train=32, val=16, size=32, seed=0)
    lrs = step_learning_rates(torch.optim.AdamW)
    with caplog.at_level("INFO", logger="densenet"):
        result = train(load_config(FINETUNE_RECIPE, data_dir=str(data), image_size=32, epochs=2, batch_size=16,
                                   workers=0, log_every=0, out=str(tmp_path / "run")))
    assert "positive weights circle" in caplog.text and result.epoch == 2
    # the file's features with a fresh 5-label head
    assert "fresh classifier; left at initialisation: classifier.weight, classifier.bias" in caplog.text
    saved = densenet.from_pretrained(tmp_path / "run" / "last")
    assert saved.meta.task == "multi_label" and saved.meta.class_names == LABELS
    assert saved.meta.preprocessing.mean == (0.485, 0.456, 0.406)  # the ImageNet weights' normalisation
    # two steps an epoch, each with the backbone's and the head's group; from epoch 2 on (the backbone released)
    # the backbone's rate is a tenth of the head's, on the cosine schedule's way down from 1e-3
    assert len(lrs) == 4 and all(len(group) == 2 for group in lrs)
    assert lrs[2][0] == pytest.approx(0.1 * lrs[2][1]) and lrs[2][1] < 1e-3
    assert not torch.equal(saved.features.conv0.weight, cached_densenet121["features.conv0.weight"])
    recorded = load_config(tmp_path / "run" / "config.yaml")
    assert (recorded.model, recorded.pretrained, recorded.optimizer, recorded.pos_weight) == (
        "densenet121", True, "adamw", "auto")
