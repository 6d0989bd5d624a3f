"""What a run resolves and checks before it trains, and how it ends: the image size from the data, the memory
pre-check's readers, AdamW beside SGD, early stopping and the epoch's mean learning rate."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from densenet.registry import get_config
from densenet.training import engine
from densenet.training.distributed import Context
from densenet.training.earlystop import epochs_without_improvement, should_stop
from densenet.training.imagesize import with_image_size
from densenet.training.memory import available_memory, check_memory, parse_bytes
from densenet.training.metrics import EvalResult
from densenet.training.recipe import TrainConfig

TINY = {"dataset": "synthetic", "train_limit": 64, "eval_limit": 16, "image_size": 8, "model": "densenet_bc100_k12",
        "model_args": {"block_config": [2, 2], "growth_rate": 8}, "batch_size": 32, "log_every": 0}


def _folder(root: Path, sizes: list[tuple[int, int]]) -> Path:
    for i, size in enumerate(sizes):
        (root / "train" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size).save(root / "train" / f"c{i % 2}" / f"{i}.png")
    return root


def test_image_size_comes_from_the_data_within_the_models_limits(tmp_path):
    small = _folder(tmp_path / "small", [(8, 8)] * 4)
    assert with_image_size(TrainConfig(dataset="folder", data_dir=str(small))).image_size == 8
    # densenet121's smallest input: 29 → 15 (7×7/2 conv) → 8 (3×3/2 pool) → 4 → 2 → 1 (the /2 transitions)
    assert with_image_size(TrainConfig(dataset="folder", data_dir=str(small), model="densenet121")).image_size == 29
    large = _folder(tmp_path / "large", [(300, 260), (320, 280), (400, 300)])
    assert with_image_size(TrainConfig(dataset="folder", data_dir=str(large))).image_size == 224  # at most 224
    assert with_image_size(TrainConfig(dataset="folder", data_dir=str(large), image_size=64)).image_size == 64
    resumed = TrainConfig(dataset="folder", data_dir=str(small), resume=True, out=str(tmp_path / "old"))
    assert with_image_size(resumed).image_size == 224  # a run recorded before sizes were resolved: its old default
    assert with_image_size(TrainConfig(dataset="digits")).image_size == 8
    assert with_image_size(TrainConfig(dataset="synthetic")).image_size == 32


def test_a_csv_table_of_images_takes_its_image_size_from_the_data(tmp_path):
    _folder(tmp_path, [(12, 12)] * 4)
    rows = "".join(f"train/c{i % 2}/{i}.png,c{i % 2}\n" for i in range(4))
    (tmp_path / "train.csv").write_text("path,label\n" + rows)
    assert with_image_size(TrainConfig(dataset="csv", data_dir=str(tmp_path))).image_size == 12


def test_memory_readers(tmp_path, monkeypatch):
    assert [parse_bytes(text) for text in ("1000", "6G", "512MiB", "1.5k", "2 GB")] == [
        1000, 6 * 2**30, 512 * 2**20, 1536, 2 * 2**30]
    with pytest.raises(ValueError, match="DENSENET_MEMORY_LIMIT='lots' is not a size"):
        parse_bytes("lots")
    monkeypatch.delenv("DENSENET_MEMORY_LIMIT", raising=False)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  8000000 kB\nMemAvailable:  4000000 kB\n")
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("1073741824\n")
    (v2 / "memory.current").write_text(f"{600 * 2**20}\n")
    (v2 / "memory.stat").write_text(f"anon 1\ninactive_file {100 * 2**20}\n")
    room = available_memory(torch.device("cpu"), v2, meminfo)
    assert room is not None and (room.bytes, room.source) == (524 * 2**20, "cgroup v2 memory.max")  # 1024 − 500
    (v2 / "memory.max").write_text("max\n")  # no limit: MemAvailable
    room = available_memory(torch.device("cpu"), v2, meminfo)
    assert room is not None and (room.bytes, room.source) == (4000000 * 1024, "MemAvailable")
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(f"{2**30}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{2**29}\n")
    (v1 / "memory.stat").write_text(f"inactive_file 5\ntotal_inactive_file {2**28}\n")
    room = available_memory(torch.device("cpu"), v1.parent, meminfo)
    assert room is not None and (room.bytes, room.source) == (3 * 2**28, "cgroup v1 memory.limit_in_bytes")
    monkeypatch.setenv("DENSENET_MEMORY_LIMIT", "3M")
    room = available_memory(torch.device("cpu"), v1.parent, meminfo)
    assert room is not None and (room.bytes, room.source) == (3 * 2**20, "DENSENET_MEMORY_LIMIT")


def test_the_issues_run_that_the_kernel_killed_now_stops_first(monkeypatch):
    """densenet_bc100_k12 at 224×224, batch 64: 17 GiB by the closed form, killed (exit 137) with ~20 GiB free."""
    monkeypatch.setenv("DENSENET_MEMORY_LIMIT", "20G")
    recipe = TrainConfig(dataset="folder", data_dir=".", model="densenet_bc100_k12", image_size=224, batch_size=64)
    cpu = Context(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"needs more than 25\.45 GiB .* 20\.00 GiB is available .*would fit: "
                                         r"--batch-size \d+ or --image-size \d+"):
        check_memory(recipe, cpu, get_config("densenet_bc100_k12"), 224, 64)


def test_autocast_runs_skip_the_float32_memory_check(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSENET_MEMORY_LIMIT", "1")
    with pytest.raises(ValueError, match="not even 1 image at the smallest input fits: use a smaller model"):
        engine.train(TrainConfig(**{**TINY, "epochs": 1, "out": str(tmp_path / "a")}))
    result = engine.train(TrainConfig(**{**TINY, "epochs": 1, "amp": "bf16", "out": str(tmp_path / "b")}))
    assert len(result.history) == 1


def test_adamw_defaults_and_state(tmp_path):
    assert (TrainConfig().lr, TrainConfig().weight_decay) == (0.1, 1e-4)
    config = TrainConfig(**{**TINY, "epochs": 1, "optimizer": "adamw", "out": str(tmp_path / "run")})
    assert (config.lr, config.weight_decay) == (1e-3, 0.05)
    assert TrainConfig(optimizer="adamw", lr=0.01, weight_decay=0.0).lr == 0.01
    with pytest.raises(ValueError, match="must be one of sgd, adamw"):
        TrainConfig(optimizer="adam")
    engine.train(config)
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (recorded["optimizer"], recorded["lr"], recorded["weight_decay"]) == ("adamw", 1e-3, 0.05)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["optimizer"]
    first = state["state"][0]
    assert set(first) >= {"exp_avg", "exp_avg_sq"}  # AdamW's two moments, not SGD's momentum buffer
    assert state["param_groups"][0]["weight_decay"] == 0.05


def test_early_stop_counts():
    rows = [{"eval_acc": value} for value in (0.5, 0.7, 0.7, 0.6)]
    assert [epochs_without_improvement(rows[:n]) for n in range(5)] == [0, 0, 0, 1, 2]
    assert should_stop(rows, 2) and not should_stop(rows, 3) and not should_stop(rows, None)


def test_early_stop_ends_the_run_resume_safely_and_the_epoch_lr_is_its_mean(tmp_path, monkeypatch):
    scores = iter([0.5, 0.6, 0.6, 0.55, 0.9, 0.9, 0.9])

    def scripted(run, stop=None):  # evaluation top-1 of each epoch, then of the resumed run's final evaluation
        return EvalResult(16, 1.0, next(scores), 1.0, [0.0] * 10, [[0] * 10] * 10, run.class_names)

    monkeypatch.setattr(engine, "evaluate", scripted)
    # 2 steps per epoch, 12 in all: warm-up over steps 0-1 (lr × ½, × 1), × 0.1 from step round(0.25 · 12) = 3 on
    config = TrainConfig(**{**TINY, "epochs": 6, "early_stop": 2, "warmup_epochs": 1.0, "milestones": [0.25],
                            "lr": 0.2, "out": str(tmp_path / "run")})
    result = engine.train(config)
    assert result.stopped_early and len(result.history) == 4  # best 0.6 at epoch 2; epochs 3 and 4 no better
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [float(row["lr"]) for row in rows] == pytest.approx([0.2 * 0.75, 0.2 * 0.55, 0.02, 0.02])
    resumed = engine.train(TrainConfig(**{**config.to_dict(), "resume": True}))
    assert resumed.stopped_early and len(resumed.history) == 4  # nothing more to train
