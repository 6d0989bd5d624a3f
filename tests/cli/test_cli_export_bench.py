"""`densenet export` and `densenet bench` from the command line, including their bad-input contract."""

import itertools
import json
import re
import subprocess
import sys

import pytest
import torch

import densenet
from densenet.cli import main
from densenet.deploy.bench import run_bench
from densenet.deploy.export import export_model
from densenet.deploy.inference import predict


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    directory = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    densenet.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=3, stem="cifar",
                      meta=densenet.ModelMeta(class_names=["a", "b", "c"])).save_pretrained(directory)
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
    (lambda w, t: ["--weights", str(w), "--format", "onnx", "--output", str(t)], "is a directory; name a file"),
    (lambda w, t: ["--weights", str(w), "--format", "onnx", "--output", str(w / "config.json" / "m.onnx")],
     "is a file, not a directory"),
])
def test_export_bad_input_is_one_line(weights, tmp_path, make_args, message):
    result = _run("export", *make_args(weights, tmp_path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.parametrize("field, value, message", [
    ("preprocessing", "x", "preprocessing must map image_mode"),
    ("crop", -4, r"crop must be an integer in \[1, 8192\], got -4"),
    ("crop", 100000, r"crop must be an integer in \[1, 8192\]"),
    ("std", [0.0, 0.2, 0.2], "std finite and > 0"),
])
def test_malformed_preprocessing_in_weights_is_one_line(weights, tmp_path, capsys, field, value, message):
    edited = tmp_path / "edited"
    edited.mkdir()
    for item in weights.iterdir():
        (edited / item.name).write_bytes(item.read_bytes())
    meta = json.loads((edited / "config.json").read_text())
    meta["preprocessing"] = value if field == "preprocessing" else {
        "image_mode": "RGB", "resize": 32, "crop": 32, "mean": [0.5] * 3, "std": [0.2] * 3, field: value}
    (edited / "config.json").write_text(json.dumps(meta))
    assert main(["export", "--weights", str(edited), "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "is not a valid densenet config" in lines[0], lines
    assert re.search(message, lines[0]), lines[0]


@pytest.mark.parametrize("argv", [
    ["export", "--weights", "w", "--format", "onnx", "--output", "m.onnx", "--input-size", "-3"],
    ["export", "--weights", "w", "--format", "onnx", "--output", "m.onnx", "--input-size", "0"],
    ["bench", "densenet121", "--threads", "0"],
    ["bench", "densenet121", "--input-size", "0"],
    ["summary", "densenet121", "--input-size", "0"],
    ["predict", "--weights", "w", "a.png", "--batch-size", "-1"],
    ["demo", "--samples", "0"],
])
def test_sizes_and_counts_below_one_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and "must be at least 1" in lines[0], lines


def test_library_entry_points_check_sizes(weights, tmp_path):
    with pytest.raises(ValueError, match="input size must be at least 1"):
        export_model(densenet.from_pretrained(weights), "onnx", tmp_path / "m.onnx", input_size=-3)
    with pytest.raises(ValueError, match="threads must be at least 1"):
        run_bench("densenet121", threads=-1)
    with pytest.raises(ValueError, match="one value per channel, too few for batch statistics"):
        run_bench("densenet121", batch=1, input_size=32, train=True)
    with pytest.raises(ValueError, match="input 16×16 is too small for densenet121: .* at least 29"):
        run_bench("densenet121", input_size=16, train=True)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        predict(densenet.from_pretrained(weights), [tmp_path], batch_size=0)
    assert list(tmp_path.iterdir()) == []


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

    import densenet.deploy.bench as bench

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
    from densenet.deploy.bench import time_interleaved

    calls: list[str] = []
    runners = {label: (lambda label=label: calls.append(label), 1) for label in "abc"}
    times = time_interleaved(runners, rounds=30, warmup=1, settle=0.0).seconds
    assert {label: len(seconds) for label, seconds in times.items()} == {"a": 30, "b": 30, "c": 30}
    rounds = ["".join(calls[i:i + 3]) for i in range(0, len(calls), 3)]
    assert all(sorted(one) == ["a", "b", "c"] for one in rounds)  # every configuration once per round
    neighbours = {(first, second) for one in rounds for first, second in itertools.pairwise(one)}
    assert neighbours == {(x, y) for x in "abc" for y in "abc" if x != y}  # each follows each other one
    calls.clear()
    time_interleaved(runners, rounds=30, warmup=1, settle=0.0)
    assert ["".join(calls[i:i + 3]) for i in range(0, len(calls), 3)] == rounds  # seeded: the same orders


def test_bench_isolated_times_each_configuration_in_processes_of_its_own(capsys, monkeypatch):
    import densenet.deploy.bench as bench

    children: list[tuple[str, int]] = []
    run_child = bench._run_child

    def spy(spec):
        children.append((spec["label"], spec["rounds"]))
        return run_child(spec)

    monkeypatch.setattr(bench, "_run_child", spy)
    assert main(["bench", "densenet121", "--input-size", "64", "--batch", "2", "--rounds", "2", "--no-memory",
                 "--isolated", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    labels = ["ours", "torchvision", "torchvision-channels-last"]
    assert sorted(children) == sorted((label, 1) for label in labels for _ in range(2))  # two passes of one round
    assert report["timing"].startswith("isolated") and report["warmup"] == 3
    for measurement in report["measurements"]:
        assert len(measurement["times_ms"]) == 2
        assert (measurement["minor_faults_per_batch"] is None) == (bench.resource is None)


def test_a_failed_child_measurement_names_itself():
    from densenet.deploy.bench import _run_child

    spec = {"task": "time", "label": "ours", "name": "no-such-model", "batch": 1, "input_size": 32, "train": False,
            "onnx": False, "threads": 1, "workdir": ".", "rounds": 1, "warmup": 0}
    with pytest.raises(RuntimeError, match=r"time measurement of ours failed in its child process \(exit 1\): .*"
                                           r"no-such-model"):
        _run_child(spec)


def test_isolated_children_reuse_the_parents_onnx_export(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import densenet.deploy.bench as bench
    import densenet.deploy.export

    exports: list[str] = []
    export = densenet.deploy.export.export_model

    def spy(model, fmt, output, **kwargs):
        exports.append(str(output))
        return export(model, fmt, output, **kwargs)

    monkeypatch.setattr(densenet.deploy.export, "export_model", spy)
    parent, _ = bench.build_runners("densenet40_k12", 2, 32, False, True, 1, tmp_path)  # as run_bench builds
    assert list(parent) == ["ours", "onnxruntime-ours"]
    child, _ = bench.build_runners("densenet40_k12", 2, 32, False, True, 1, tmp_path, only="onnxruntime-ours")
    assert list(child) == ["onnxruntime-ours"]
    torch.testing.assert_close(torch.from_numpy(child["onnxruntime-ours"][0]()[0]),
                               torch.from_numpy(parent["onnxruntime-ours"][0]()[0]))
    assert exports == [str(tmp_path / "ours.onnx")]  # exported once, by the parent
