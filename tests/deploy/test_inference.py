"""Prediction and evaluation with saved weights: `densenet predict` and `densenet eval` run the optimized network,
and predict's probabilities are the softmax of the saved model's logits for the preprocessed image."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import densenet
import densenet.deploy.inference as inference
from densenet.cli import main
from densenet.deploy.optimize import OptimizedDenseNet
from helpers import max_relative_error, randomize_batch_norm
from imagefolder import CLASSES, make_image_folder

NAMES = ["cat", "dog", "owl", "fox"]
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _save(directory: Path, class_names: list[str], side: int = 16) -> Path:
    torch.manual_seed(0)
    preprocessing = densenet.Preprocessing(image_mode="RGB", resize=side, crop=side, mean=MEAN, std=STD)
    model = densenet.DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8,
                              num_classes=len(class_names), stem="cifar",
                              meta=densenet.ModelMeta(class_names=class_names, preprocessing=preprocessing))
    randomize_batch_norm(model)
    with torch.no_grad():
        model.classifier.weight.mul_(20)  # spread the logits: probabilities far from uniform
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("weights"), NAMES)


@pytest.fixture
def spies(monkeypatch):
    """Every model that optimize_for_inference returns and every model that runs, as the deploy room sees them."""
    made: list[torch.nn.Module] = []
    ran: list[torch.nn.Module] = []
    optimize, run_model = inference.optimize_for_inference, inference.run_model

    def spy_optimize(model, *args, **kwargs):
        made.append(optimize(model, *args, **kwargs))
        return made[-1]

    def spy_run(model, images):
        ran.append(model)
        return run_model(model, images)

    monkeypatch.setattr(inference, "optimize_for_inference", spy_optimize)
    monkeypatch.setattr(inference, "run_model", spy_run)
    return made, ran


def _write_images(folder: Path, count: int, side: int) -> dict[str, np.ndarray]:
    """Random RGB PNGs of exactly the crop size (resize and crop leave them as they are); their pixels by name."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    pixels = {f"{i}.png": rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8) for i in range(count)}
    for name, array in pixels.items():
        Image.fromarray(array).save(folder / name)
    return pixels


def test_predict_probabilities_are_the_softmax_of_the_saved_models_logits(weights, tmp_path, capsys, spies):
    pixels = _write_images(tmp_path / "images", 3, 16)
    assert main(["predict", "--weights", str(weights), str(tmp_path / "images"), "--json", "--top-k", "4"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert sorted(Path(p["file"]).name for p in predictions) == sorted(pixels)

    plain = densenet.from_pretrained(weights).eval()
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    largest = []
    for prediction in predictions:
        image = torch.from_numpy(pixels[Path(prediction["file"]).name]).permute(2, 0, 1)  # (3, H, W) uint8
        x = ((image.float() / 255 - mean) / std).unsqueeze(0)  # (1, 3, 16, 16), as Preprocessing says
        with torch.no_grad():
            expected = torch.softmax(plain(x).double(), dim=1)[0]  # [F7]
        top = prediction["top_k"]
        probabilities = [entry["probability"] for entry in top]
        indices = [entry["index"] for entry in top]
        assert sorted(indices) == [0, 1, 2, 3] and [entry["class"] for entry in top] == [NAMES[i] for i in indices]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-6)
        assert probabilities == sorted(probabilities, reverse=True)
        assert probabilities == pytest.approx(expected[indices].tolist(), abs=1e-5)
        largest.append(probabilities[0])
    assert max(largest) > 0.5  # far from uniform: a wrong input or a wrong normalisation would show

    assert main(["predict", "--weights", str(weights), str(tmp_path / "images"), "--json", "--top-k", "2"]) == 0
    shorter = {p["file"]: p["top_k"] for p in json.loads(capsys.readouterr().out)}
    assert all(shorter[p["file"]] == p["top_k"][:2] for p in predictions)  # the two most probable

    made, ran = spies
    assert len(made) == 2 and ran and all(isinstance(model, OptimizedDenseNet) for model in ran)
    assert all(any(model is one for one in made) for model in ran)


def test_eval_runs_the_optimized_network(tmp_path, capsys, spies):
    root = make_image_folder(tmp_path / "colours", train=1, val=3, size=16)
    weights = _save(tmp_path / "weights", sorted(CLASSES))
    assert main(["eval", "--weights", str(weights), "--dataset", "folder", "--data-dir", str(root), "--workers", "0",
                 "--json", "--out", str(tmp_path / "eval")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 9 and sum(map(sum, report["confusion"])) == 9
    made, ran = spies
    assert len(made) == 1 and ran and all(model is made[0] for model in ran)
    assert isinstance(made[0], OptimizedDenseNet)


def test_load_model_is_the_saved_function_optimized(weights):
    fast = inference.load_model(weights)
    plain = densenet.from_pretrained(weights).eval()
    assert isinstance(fast, OptimizedDenseNet)
    assert fast.config == plain.config and fast.meta == plain.meta and list(fast.meta.class_names) == NAMES
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert max_relative_error(fast(x), plain(x)) <= 1e-4
