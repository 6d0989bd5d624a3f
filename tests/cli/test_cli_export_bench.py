"""`densenet export` and `densenet bench` from the command line: what they write and report, checked against
independent computations (onnxruntime on the file, ``from_pretrained``'s logits, ``analysis.summarize``'s MACs),
and their bad-input contract. The benchmark's library side: tests/deploy/test_bench.py."""

import json
import re
import statistics

import pytest
import torch

import densenet
import densenet.deploy.bench.run
import densenet.deploy.bench.timing
from densenet.analysis import summarize
from densenet.cli import main
from densenet.deploy.bench import run_bench
from densenet.deploy.export import export_model
from densenet.deploy.inference import predict
from helpers import max_relative_error, randomize_batch_norm

PEAK = 123.0  # a stand-in for the measured matmul peak (4096² float32 products take seconds on a test machine)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    directory = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    densenet.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=3, stem="cifar",
                      meta=densenet.ModelMeta(class_names=["a", "b", "c"])).save_pretrained(directory)
    return directory


@pytest.fixture
def quick_peak(monkeypatch):
    """The matmul peak as a known constant (the function itself: test_bench.py)."""
    monkeypatch.setattr(densenet.deploy.bench.run, "matmul_peak_gflops", lambda threads: PEAK)
    monkeypatch.setattr(densenet.deploy.bench.run, "conv_ceiling_gops", lambda threads, dtype: PEAK)


def _export_cases():
    gray = densenet.Preprocessing(image_mode="L", resize=20, crop=16, mean=(0.5,), std=(0.25,))
    return {
        "one-channel": (lambda: densenet.DenseNet(growth_rate=6, block_config=(3, 2), num_init_features=12,
                                                  num_classes=4, stem="cifar", in_chans=1,
                                                  meta=densenet.ModelMeta(preprocessing=gray)), [], 16),
        # densenet121's stem and four blocks, shallower: the dynamo export takes about a second per layer
        "densenet121-stem": (lambda: densenet.create_model("densenet121", num_classes=10, block_config=(5, 2, 1, 1)),
                             ["--input-size", "64"], 64),
    }


@pytest.mark.parametrize("case", list(_export_cases()))
def test_cli_onnx_export_runs_like_the_saved_model(case, tmp_path, capsys):
    """The file `densenet export` writes, run in onnxruntime, gives `from_pretrained(dir)`'s logits; its graph
    concatenates every four layers of a block; its height and width are the saved crop or --input-size."""
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    make, extra, side = _export_cases()[case]
    torch.manual_seed(0)
    model = randomize_batch_norm(make())
    model.save_pretrained(tmp_path / "weights")
    output = tmp_path / "model.onnx"
    assert main(["export", "--weights", str(tmp_path / "weights"), "--format", "onnx", "--output", str(output),
                 "--json", *extra]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == str(output) and report["format"] == "onnx" and report["max_rel_diff"] <= 1e-4

    saved = densenet.from_pretrained(tmp_path / "weights").eval()
    channels = saved.config.in_chans
    x = torch.randn(5, channels, side, side)  # a batch size neither traced (2) nor checked (3) by the export
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    actual = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        expected = saved(x)
    assert actual.shape == expected.shape and max_relative_error(actual, expected) <= 1e-4

    graph = onnx.load(str(output)).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [channels, side, side] and dims[0].dim_param  # dynamic batch
    concats = sum(node.op_type == "Concat" for node in graph.node)
    # per block of L layers: one before layers 5, 9, … and one for its output
    assert concats == sum((layers - 1) // 4 + 1 for layers in saved.config.block_config)


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
def test_export_bad_input_is_one_line(weights, tmp_path, capsys, make_args, message):
    """In this process (a real process's one line and exit status: tests/cli/test_cli_train.py)."""
    assert main(["export", *make_args(weights, tmp_path)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
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


def _bench(capsys, *args: str) -> dict:
    assert main(["bench", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_numbers_follow_from_its_times_and_the_closed_form_macs(capsys, quick_peak):
    report = _bench(capsys, "densenet121", "--input-size", "32", "--batch", "2", "--rounds", "3", "--warmup", "0",
                    "--threads", "1", "--no-memory")
    assert (report["model"], report["mode"], report["batch"], report["input_size"], report["threads"],
            report["rounds"], report["warmup"]) == ("densenet121", "inference", 2, 32, 1, 3, 0)
    assert report["timing"] == "interleaved in one process" and report["matmul_peak_gflops"] == PEAK
    summary = summarize(densenet.get_config("densenet121"), 32)
    macs = {"ours": summary.macs_executed, "torchvision": summary.macs, "torchvision-channels-last": summary.macs}
    assert [m["label"] for m in report["measurements"]] == list(macs)
    for m in report["measurements"]:
        times = m["times_ms"]
        assert len(times) == 3 and all(0 < t < float("inf") for t in times)
        median = statistics.median(times) / 1e3
        assert m["macs_per_image"] == macs[m["label"]]
        assert m["images_per_second"] == pytest.approx(2 / median, rel=1e-9)
        assert m["latency_ms"] == pytest.approx(1e3 * median, rel=1e-9)
        assert m["gflops"] == pytest.approx(2 * macs[m["label"]] * 2 / median / 1e9, rel=1e-9)
        assert m["peak_memory_mib"] is None


def test_bench_table_against_torchvision(capsys, quick_peak):
    assert main(["bench", "densenet121", "--input-size", "32", "--batch", "2", "--rounds", "1", "--warmup", "0",
                 "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert f"ceiling (oneDNN convolution, GFLOP/s; int8 GOP/s): float32 {PEAK:.0f}" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[3:]}
    assert set(rows) == {"ours", "torchvision", "torchvision-channels-last"}
    assert rows["torchvision"][3] == "1.00"  # the ratio column is relative to torchvision


def test_bench_ours_alone_says_so(capsys, monkeypatch, quick_peak):
    report = _bench(capsys, "densenet_bc100_k12", "--batch", "2", "--rounds", "1", "--warmup", "0")
    assert [m["label"] for m in report["measurements"]] == ["ours"]
    assert report["notes"][0] == ("torchvision's DenseNet cannot express this architecture (cifar stem): "
                                  "measuring ours alone")
    assert report["measurements"][0]["peak_memory_mib"] > 0

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "torchvision" else real(name))
    assert main(["bench", "densenet121", "--input-size", "32", "--batch", "2", "--rounds", "1", "--warmup", "0",
                 "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert "note: torchvision is not installed: measuring ours alone" in out
    assert "\nours " in out and "\ntorchvision " not in out


def test_bench_training(capsys, quick_peak):
    report = _bench(capsys, "densenet121", "--input-size", "32", "--batch", "2", "--rounds", "1", "--warmup", "0",
                    "--train", "--no-memory")
    summary = summarize(densenet.get_config("densenet121"), 32)
    assert report["mode"] == "train" and [m["label"] for m in report["measurements"]] == ["ours", "torchvision"]
    assert {m["label"]: m["macs_per_image"] for m in report["measurements"]} == {
        "ours": 3 * summary.macs_executed, "torchvision": 3 * summary.macs}
    assert all(len(m["times_ms"]) == 1 and m["times_ms"][0] > 0 for m in report["measurements"])


def test_bench_isolated_times_each_configuration_in_processes_of_its_own(capsys, monkeypatch, quick_peak):
    timing = densenet.deploy.bench.timing
    children: list[tuple[str, int, int]] = []
    run_child = timing.run_child

    def spy(spec):
        children.append((spec["label"], spec["rounds"], spec["warmup"]))
        return run_child(spec)

    monkeypatch.setattr(timing, "run_child", spy)
    report = _bench(capsys, "densenet_bc100_k12", "--batch", "2", "--rounds", "2", "--no-memory", "--isolated",
                    "--dtypes", "float32", "bfloat16")
    labels = ["ours", "ours-bfloat16"]  # two configurations: a child process costs seconds to start
    # two passes of one round each, the default three warm-up runs in every process
    assert sorted(children) == sorted((label, 1, 3) for label in labels for _ in range(2))
    assert report["timing"].startswith("isolated") and report["warmup"] == 3
    for measurement in report["measurements"]:
        assert len(measurement["times_ms"]) == 2 and all(t > 0 for t in measurement["times_ms"])
        assert (measurement["minor_faults_per_batch"] is None) == (timing.resource is None)
