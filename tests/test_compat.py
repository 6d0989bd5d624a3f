"""Files written by densenet 0.1.0 (commit 8812866, before the package was split into rooms) still load: a
``save_pretrained`` directory gives the same logits and metadata, and a training checkpoint resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

import densenet
from densenet.training.engine import train
from densenet.training.recipe import load_config

FIXTURE = Path(__file__).parent / "fixtures" / "v0_1_run"


def test_v0_1_save_pretrained_directory_loads_with_its_logits_and_metadata():
    model = densenet.from_pretrained(FIXTURE / "best").eval()
    expected = json.loads((FIXTURE / "expected_logits.json").read_text())
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), torch.tensor(expected["logits"]), rtol=1e-5, atol=1e-6)
    assert model.meta.name == "densenet_bc100_k12"
    assert model.meta.class_names == tuple(f"class{i}" for i in range(10))
    assert model.meta.preprocessing.crop == 8 and model.meta.preprocessing.image_mode == "RGB"


def test_v0_1_checkpoint_resumes(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    result = train(load_config(run / "config.yaml", out=str(run), resume=True, epochs=2))
    assert result.epoch == 2 and len(result.history) == 2 and not result.interrupted
    first = (FIXTURE / "metrics.csv").read_text().splitlines()[1].split(",")
    assert float(first[1]) == result.history[0]["train_loss"]  # epoch 1 comes from the old checkpoint
