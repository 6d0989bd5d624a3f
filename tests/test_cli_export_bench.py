"""`densenet export` and `densenet bench` from the command line, including their bad-input contract."""

import itertools
import json
import subprocess
import sys

import pytest
import torch

import densenet
from densenet.cli import main


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    directory = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    densenet.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=3, stem="cifar",
                      class_names=["a", "b", "c"]).save_pretrained(directory)
    return directory


def test_export_onnx(weights, tmp_path, capsys):
    output = tmp_path / "model.onnx"
    assert main(["export", "--weights", str(weights), "--format", "onnx", "--output", str(output), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert output.is_file() and report["format"] == "onnx" and report["max_rel_diff"] <= 1e-4


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "densenet", *args], capture_output=True, text=True, check=False)


@pytest.mark.parametrize(("make_args", "message"), [
    (lambda w, t: ["--weights", str(w), "--format", "tflite", "--output", str(t / "m.tflite")],
     "unsupported export format 'tflite'"),
    (lambda w, t: ["--weights", str(w / "model.safetensors"), "--format", "onnx", "--output", str(t / "m.onnx")],
     "is a file; expected a directory written by save_pretrained"),
    (lambda w, t: ["--weights", str(t / "nothing"), "--format", "onnx", "--output", str(t / "m.onnx")],
     "does not exist"),
    (lambda w, t: ["--weights", str(w), "--format", "onnx", "--output", str(t / "missing" / "m.onnx")],
     "directory"),
])
def test_export_bad_input_is_one_line(weights, tmp_path, make_args, message):
    result = _run("export", *make_args(weights, tmp_path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_bench_against_torchvision(capsys):
    assert main(["bench", "densenet121", "--input-size", "64", "--batch", "2", "--rounds", "1", "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert "matmul peak" in out
    for label in ("ours", "torchvision", "torchvision-channels-last"):
        assert f"\n{label} " in out


def test_bench_ours_alone_says_so(capsys, monkeypatch):
    assert main(["bench", "densenet_bc100_k12", "--batch", "2", "--rounds", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [m["label"] for m in report["measurements"]] == ["ours"]
    assert "measuring ours alone" in report["notes"][0]
    assert report["measurements"][0]["peak_memory_mib"] > 0

    import densenet.bench as bench

    real = bench.importlib.util.find_spec
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name: None if name == "torchvision" else real(name))
    assert main(["bench", "densenet121", "--input-size", "64", "--batch", "2", "--rounds", "1", "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert "torchvision is not installed or cannot express this architecture: measuring ours alone" in out


def test_bench_training(capsys):
    assert main(["bench", "densenet121", "--input-size", "64", "--batch", "2", "--rounds", "1", "--train",
                 "--no-memory", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "train" and [m["label"] for m in report["measurements"]] == ["ours", "torchvision"]


def test_interleaved_timing_varies_the_order():
    from densenet.bench import time_interleaved

    calls: list[str] = []
    runners = {label: (lambda label=label: calls.append(label), 1) for label in "abc"}
    times = time_interleaved(runners, rounds=30, warmup=1, settle=0.0)
    assert {label: len(seconds) for label, seconds in times.items()} == {"a": 30, "b": 30, "c": 30}
    rounds = ["".join(calls[i:i + 3]) for i in range(0, len(calls), 3)]
    assert all(sorted(one) == ["a", "b", "c"] for one in rounds)  # every configuration once per round
    neighbours = {(first, second) for one in rounds for first, second in itertools.pairwise(one)}
    assert neighbours == {(x, y) for x in "abc" for y in "abc" if x != y}  # each follows each other one
    calls.clear()
    time_interleaved(runners, rounds=30, warmup=1, settle=0.0)
    assert ["".join(calls[i:i + 3]) for i in range(0, len(calls), 3)] == rounds  # seeded: the same orders
