"""The benchmark behind ``densenet bench`` as a library: every configuration computes the same function on the same
weights, the timing takes turns in a seeded random order, children reuse the parent's exports and name themselves
when they fail, and the report's numbers follow from the times (the CLI side: tests/cli/test_cli_export_bench.py)."""

import itertools
import math

import pytest
import torch

import densenet
import densenet.deploy.bench.runners as runners_module
from densenet.analysis import summarize
from densenet.capability import onednn_bfloat16
from densenet.deploy.bench import (
    Measurement,
    build_runners,
    format_report,
    matmul_peak_gflops,
    run_child,
    time_interleaved,
    train_step,
    trained_like,
)
from densenet.deploy.bench.ceiling import conv_ceiling_gops
from densenet.deploy.bench.runners import no_twin_reason
from densenet.deploy.int8 import int8_supported
from helpers import max_relative_error, randomize_batch_norm


def _logits(runner) -> torch.Tensor:
    return runner().float()


def test_configurations_compute_the_same_logits_on_the_same_weights(tmp_path):
    """densenet121 as bench builds it: ours optimized, torchvision's twin in both memory formats — one function."""
    runners, notes = build_runners("densenet121", 2, 32, False, False, 1, tmp_path)
    assert list(runners) == ["ours", "torchvision", "torchvision-channels-last"] and notes == []
    reference = _logits(runners["torchvision"][0])  # torchvision's own code, our weights loaded into it
    assert reference.shape == (2, 1000) and torch.isfinite(reference).all()
    for label in ("ours", "torchvision-channels-last"):
        assert max_relative_error(_logits(runners[label][0]), reference) <= 1e-4, label
    summary = summarize(densenet.get_config("densenet121"), 32)
    assert {label: macs for label, (_, macs) in runners.items()} == {
        "ours": summary.macs_executed, "torchvision": summary.macs, "torchvision-channels-last": summary.macs}


def test_every_configuration_and_export_agrees_and_children_reuse_the_exports(tmp_path, monkeypatch):
    """A small ImageNet-stem model in place of the registered one, BN scales of both signs: ours, torchvision's
    twin, and both ONNX exports under ONNX Runtime give the same logits; a child process's runner reuses the parent's
    ONNX files instead of exporting again."""
    pytest.importorskip("onnxruntime")
    import densenet.deploy.export

    def tiny(name, **overrides):
        return densenet.DenseNet(growth_rate=8, block_config=(2, 3), num_init_features=16, num_classes=5, **overrides)

    monkeypatch.setattr(runners_module, "create_model", tiny)
    monkeypatch.setattr(runners_module, "trained_like", randomize_batch_norm)  # γ of both signs, not only positive
    exports: list[str] = []
    export_model, export_twin = densenet.deploy.export.export_model, runners_module._export_torchvision_onnx

    def spy_ours(model, fmt, output, **kwargs):
        exports.append(output.name)
        return export_model(model, fmt, output, **kwargs)

    def spy_twin(twin, x, path):
        exports.append(path.name)
        return export_twin(twin, x, path)

    monkeypatch.setattr(densenet.deploy.export, "export_model", spy_ours)
    monkeypatch.setattr(runners_module, "_export_torchvision_onnx", spy_twin)
    parent, _ = build_runners("tiny", 3, 32, False, True, 1, tmp_path)  # as run_bench builds them
    assert list(parent) == ["ours", "torchvision", "torchvision-channels-last", "onnxruntime-ours",
                            "onnxruntime-torchvision"]
    reference = _logits(parent["torchvision"][0])
    assert reference.shape == (3, 5)
    for label, (run, _) in parent.items():
        assert max_relative_error(_logits(run), reference) <= 1e-4, label
    assert sorted(exports) == ["ours.onnx", "torchvision.onnx"]
    for label in ("onnxruntime-ours", "onnxruntime-torchvision"):
        child, _ = build_runners("tiny", 3, 32, False, True, 1, tmp_path, only=label)
        assert list(child) == [label]
        torch.testing.assert_close(_logits(child[label][0]), _logits(parent[label][0]))
    assert sorted(exports) == ["ours.onnx", "torchvision.onnx"]  # exported once, by the parent


def test_training_runners_take_a_step(tmp_path):
    runners, notes = build_runners("densenet_bc100_k12", 2, 32, True, False, 1, tmp_path)
    assert list(runners) == ["ours"] and "measuring ours alone" in notes[0]
    summary = summarize(densenet.get_config("densenet_bc100_k12"), 32)
    run, macs = runners["ours"]
    assert macs == 3 * summary.macs_executed  # forward, input gradients, weight gradients
    assert run() is None


def test_train_step_updates_the_weights_downhill():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, target = torch.randn(8, 4), torch.randint(0, 3, (8,))
    step = train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), x, target)
    before = torch.nn.functional.cross_entropy(model(x), target).item()
    for _ in range(5):
        step()
    assert torch.nn.functional.cross_entropy(model(x), target).item() < before


def test_trained_like_draws_positive_scales_reproducibly():
    """bench's own batch-norm draw (product code; the tests' parity checks use helpers.randomize_batch_norm)."""
    model = densenet.DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, num_classes=3, stem="cifar")
    assert trained_like(model, seed=3) is model
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 2 * 4 + 1 + 1  # two per bottleneck layer, one per transition, norm5
    for norm in norms:
        assert ((norm.weight >= 0.5) & (norm.weight < 1.5)).all()  # γ > 0: one-sided clamps in ours
        assert ((norm.running_var >= 0.5) & (norm.running_var < 1.5)).all()
        assert not torch.equal(norm.bias, torch.zeros_like(norm.bias))
        assert not torch.equal(norm.running_mean, torch.zeros_like(norm.running_mean))
    again = trained_like(densenet.DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, num_classes=3,
                                           stem="cifar"), seed=3)
    other = trained_like(densenet.DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, num_classes=3,
                                           stem="cifar"), seed=4)
    first = {k: v for k, v in model.state_dict().items() if "norm" in k}
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in first.items())
    assert not all(torch.equal(v, other.state_dict()[k]) for k, v in first.items())


def test_interleaved_timing_varies_the_order():
    calls: list[str] = []
    runners = {label: (lambda label=label: calls.append(label), 1) for label in "abc"}
    times = time_interleaved(runners, rounds=30, warmup=1, settle=0.0).seconds
    assert {label: len(seconds) for label, seconds in times.items()} == {"a": 30, "b": 30, "c": 30}
    assert all(t >= 0 for seconds in times.values() for t in seconds)
    assert len(calls) == 31 * 3  # warm-up rounds run too, untimed
    rounds = ["".join(calls[i:i + 3]) for i in range(0, len(calls), 3)]
    assert all(sorted(one) == ["a", "b", "c"] for one in rounds)  # every configuration once per round
    neighbours = {(first, second) for one in rounds for first, second in itertools.pairwise(one)}
    assert neighbours == {(x, y) for x in "abc" for y in "abc" if x != y}  # each follows each other one
    calls.clear()
    time_interleaved(runners, rounds=30, warmup=1, settle=0.0)
    assert ["".join(calls[i:i + 3]) for i in range(0, len(calls), 3)] == rounds  # seeded: the same orders


def test_a_failed_child_measurement_names_itself():
    spec = {"task": "time", "label": "ours", "name": "no-such-model", "batch": 1, "input_size": 32, "train": False,
            "onnx": False, "threads": 1, "workdir": ".", "rounds": 1, "warmup": 0}
    with pytest.raises(RuntimeError, match=r"time measurement of ours failed in its child process \(exit 1\): .*"
                                           r"no-such-model"):
        run_child(spec)


def test_measurement_numbers_follow_from_the_times():
    seconds = [0.5, 0.1, 0.2, 0.4]  # median 0.3 s
    m = Measurement.from_times("ours", batch=6, macs_per_image=10**9, seconds=seconds, minor_faults=[7, 1, 3],
                               peak_memory_mib=12.5)
    assert m.images_per_second == pytest.approx(6 / 0.3) and m.latency_ms == pytest.approx(300.0)
    assert m.gflops == pytest.approx(2 * 10**9 * 6 / 0.3 / 1e9)  # 2 FLOPs per multiply-accumulate
    assert m.times_ms == pytest.approx([500.0, 100.0, 200.0, 400.0]) and m.minor_faults_per_batch == 3
    assert Measurement.from_times("x", 1, 1, [1.0], [], None).minor_faults_per_batch is None


def test_format_report_ratios_and_ceiling_share_per_dtype():
    rows = [Measurement.from_times("ours", 2, 10**9, [0.1], [5], 30.0),
            Measurement.from_times("torchvision", 2, 10**9, [0.2], [], None),
            Measurement.from_times("ours-int8", 2, 10**9, [0.025], [], None),
            Measurement.from_times("openvino-int8", 2, 10**9, [0.05], [], None)]
    report = {"model": "m", "mode": "inference", "batch": 2, "input_size": 32, "threads": 1, "torch": "x",
              "matmul_peak_gflops": 100.0, "conv_ceiling_gops": {"float32": 80.0, "int8": 320.0},
              "timing": "interleaved in one process", "rounds": 1, "notes": ["hello"],
              "measurements": [vars(row) for row in rows]}
    lines = format_report(report).splitlines()
    ours = next(line.split() for line in lines if line.startswith("ours "))
    # 20 img/s, 100 ms, 2.00× torchvision's 10 img/s, 40 GFLOP/s = 50% of the float32 ceiling 80, 30 MiB, 5 faults
    assert ours == ["ours", "20.00", "100.0", "2.00", "40", "50", "30", "5"]
    # 80 img/s, 160 GOP/s = 50% of the int8 ceiling 320 (not 160% of the float32 one)
    assert next(line.split() for line in lines if line.startswith("ours-int8 "))[4:6] == ["160", "50"]
    assert next(line.split() for line in lines if line.startswith("torchvision "))[-2:] == ["-", "-"]
    assert "float32 80, int8 320; float32 matmul 100" in lines[0] and lines[-1] == "note: hello"
    assert "ours int8: ÷ openvino int8 2.00, ÷ ours float32 4.00" in lines


def test_conv_ceiling_per_dtype_is_a_positive_rate_and_restores_the_threads():
    threads = torch.get_num_threads()
    for dtype in ("float32", "bfloat16") + (("int8",) if int8_supported() else ()):
        rate = conv_ceiling_gops(1, dtype, batch=1, repeats=2, shapes=((16, 8, 3, 8),))
        assert math.isfinite(rate) and rate > 0 and torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="dtype must be one of"):
        conv_ceiling_gops(1, "float16")


def test_no_twin_says_which_reason():
    assert "cifar stem" in no_twin_reason(densenet.create_model("densenet_bc100_k12"))
    assert no_twin_reason(densenet.create_model("densenet121")) is None


def test_matmul_peak_is_a_positive_rate_and_restores_the_threads():
    threads = torch.get_num_threads()
    peak = matmul_peak_gflops(1, size=128, repeats=2)
    assert math.isfinite(peak) and peak > 0 and torch.get_num_threads() == threads


def test_the_child_entry_point_without_a_spec_says_what_it_is(capsys):
    from densenet.deploy.bench.timing import child_main

    assert child_main([]) == 2
    assert "child process of `densenet bench`" in capsys.readouterr().err


def _tiny_dtype_runners(tmp_path, monkeypatch, dtypes, peers=()):
    def tiny(name: str, **overrides: object) -> densenet.DenseNet:
        return densenet.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=5, **overrides)

    monkeypatch.setattr(runners_module, "create_model", tiny)
    monkeypatch.setattr(runners_module, "trained_like", randomize_batch_norm)
    return build_runners("tiny", 4, 32, False, False, 1, tmp_path, dtypes=dtypes, peers=peers)


TOLERANCE = {"float32": 1e-4, "bfloat16": 0.05, "int8": 0.25}  # relative to the largest float32 logit


def test_ours_in_every_dtype_computes_the_same_function(tmp_path, monkeypatch):
    runners, notes = _tiny_dtype_runners(tmp_path, monkeypatch, ("float32", "bfloat16", "int8"))
    measured = ("bfloat16", "int8") if int8_supported() else ("bfloat16",)
    assert {f"ours-{dtype}" for dtype in measured} <= set(runners), notes
    expected = _logits(runners["ours"][0])
    for dtype in measured:
        assert max_relative_error(_logits(runners[f"ours-{dtype}"][0]), expected) <= TOLERANCE[dtype], dtype
    if not int8_supported():
        assert "ours-int8" not in runners and any(note.startswith("ours-int8 not measured") for note in notes)
    # where bfloat16 runs on PyTorch's generic kernels the report says so (and runs it: the same function)
    assert any(note.startswith("ours-bfloat16: this CPU has no bfloat16") for note in notes) != onednn_bfloat16()


def test_openvino_float32_and_bf16_compute_the_same_function(tmp_path, monkeypatch):
    """(Its int8 is NNCF's, slow to make and not ours to test; `densenet bench` checks nothing of it either.)"""
    pytest.importorskip("openvino", reason="openvino (the bench extra) is not installed")
    runners, _ = _tiny_dtype_runners(tmp_path, monkeypatch, ("float32", "bfloat16"), ("openvino",))
    expected = _logits(runners["ours"][0])
    for dtype in ("float32", "bfloat16"):
        assert max_relative_error(_logits(runners[f"openvino-{dtype}"][0]), expected) <= TOLERANCE[dtype], dtype
