"""The explain test's localisation run over several data seeds: pointing game of the trained model and of its
weight-randomised copies, for each CAM method.

    python benchmarks/pointing_game.py [--seeds 0 1 2] [--train 48] [--epochs 8] [--methods gradcam gradcam++]

Each seed generates the set of ``tests/localisation.py`` (``--train`` images per class, 20 test images per class),
trains it through ``densenet train`` with the recipe of ``tests/explain/conftest.py`` and plays the pointing game
on the 60 object images (the true class explained), then on 5 randomised copies. Results in
``benchmarks/results/pointing_game.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harness import ROOT, machine, write_json

sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "explain"))

import densenet
from conftest import RECIPE
from densenet.cli import main
from densenet.explain.checks import box_fraction, pointing_game, randomized_copy
from localisation import make_localisation_folder


def one_seed(seed: int, train: int, epochs: int, methods: list[str], root: Path) -> dict[str, object]:
    data = make_localisation_folder(root / f"data{seed}", train=train, test=20, seed=seed)
    recipe = [*RECIPE]
    recipe[recipe.index("--epochs") + 1] = str(epochs)
    start = time.perf_counter()
    assert main(["train", "--dataset", "folder", "--data-dir", str(data), "--out", str(root / f"run{seed}"),
                 *recipe]) == 0
    seconds = time.perf_counter() - start
    boxes = json.loads((data / "boxes.json").read_text())
    names = sorted(name for name in boxes if name.startswith("test/"))
    paths, classes = [data / n for n in names], [Path(n).parent.name for n in names]
    model = densenet.from_pretrained(root / f"run{seed}" / "best")
    result: dict[str, object] = {"seed": seed, "train_and_eval_seconds": round(seconds, 1),
                                 "chance": box_fraction([boxes[n] for n in names], (24, 24))}
    for method in methods:
        def score(m: torch.nn.Module, method: str = method) -> float:
            maps = densenet.explain(m, paths, targets=classes, method=method)
            return pointing_game([e.heatmap for e in maps], [boxes[n] for n in names])

        randomized = [score(randomized_copy(model, s)) for s in range(5)]
        result[method] = {"trained": score(model), "randomized": randomized,
                          "randomized_mean": float(np.mean(randomized))}
        print(seed, method, result[method], flush=True)
    return result


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--methods", nargs="+", default=["gradcam", "gradcam++", "layercam", "eigencam"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        runs = [one_seed(seed, args.train, args.epochs, args.methods, Path(directory)) for seed in args.seeds]
    path = write_json("pointing_game", {"machine": machine(), "train_per_class": args.train, "epochs": args.epochs,
                                        "runs": runs})
    print(path)


if __name__ == "__main__":
    run()
