"""The localisation run the explain and report tests share: a generated set (tests/localisation.py) trained through
``densenet train --report`` with the smallest recipe measured to reach the pointing game's 85 % (benchmarks/NOTES.md,
"explain: pointing game")."""

from __future__ import annotations

from pathlib import Path

import pytest

from densenet.cli import main
from localisation import make_localisation_folder

RECIPE = ["--image-size", "24", "--augment", "none", "--cache", "--epochs", "8", "--batch-size", "16", "--lr", "0.1",
          "--workers", "0", "--model-arg", "block_config=[2,2]", "--model-arg", "growth_rate=8", "--log-every", "0"]


@pytest.fixture(scope="session")
def localisation_data(tmp_path_factory) -> Path:
    return make_localisation_folder(tmp_path_factory.mktemp("localisation"), train=48, test=20)


@pytest.fixture(scope="session")
def localisation_run(localisation_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "localisation"
    code = main(["train", "--dataset", "folder", "--data-dir", str(localisation_data), "--out", str(run), *RECIPE,
                 "--report"])
    assert code == 0
    return run
