"""`densenet bench --spatial-dims`: signal (1-D) and volume (3-D) models, timed alone with the closed form's MACs of
that dimension; peak memory measured in a child that builds the same model."""

import json

import pytest

import densenet
import densenet.deploy.bench.run
import densenet.deploy.bench.timing
from densenet.analysis import summarize
from densenet.cli import main
from densenet.deploy.bench import run_bench

PEAK = 123.0  # a stand-in for the measured matmul and convolution peaks (tests/cli/test_cli_export_bench.py)


@pytest.fixture
def quick_peak(monkeypatch):
    monkeypatch.setattr(densenet.deploy.bench.run, "matmul_peak_gflops", lambda threads: PEAK)
    monkeypatch.setattr(densenet.deploy.bench.run, "conv_ceiling_gops", lambda threads, dtype: PEAK)


def _bench(capsys, *args: str) -> dict:
    assert main(["bench", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_volume_model_alone_with_3d_macs(capsys, quick_peak):
    report = _bench(capsys, "densenet_bc100_k12", "--spatial-dims", "3", "--input-size", "8", "--batch", "2",
                    "--rounds", "2", "--warmup", "0", "--no-memory")
    assert (report["spatial_dims"], report["input_size"], report["mode"]) == (3, 8, "inference")
    [ours] = report["measurements"]
    assert ours["label"] == "ours" and len(ours["times_ms"]) == 2
    summary = summarize(densenet.get_config("densenet_bc100_k12", spatial_dims=3), 8)
    assert ours["macs_per_image"] == summary.macs_executed
    assert report["notes"] == ["torchvision's DenseNet cannot express this architecture (cifar stem, 3-D): "
                               "measuring ours alone"]
    assert main(["bench", "densenet_bc100_k12", "--spatial-dims", "3", "--input-size", "8", "--batch", "2",
                 "--rounds", "1", "--warmup", "0", "--no-memory"]) == 0
    assert capsys.readouterr().out.startswith("densenet_bc100_k12 inference, batch 2, 8×8×8, ")


def test_bench_signal_training_measures_memory_in_a_1d_child(capsys, monkeypatch, quick_peak):
    timing = densenet.deploy.bench.timing
    specs: list[dict] = []
    run_child = timing.run_child

    def spy(spec):
        specs.append(spec)
        return run_child(spec)

    monkeypatch.setattr(timing, "run_child", spy)
    report = _bench(capsys, "densenet121", "--spatial-dims", "1", "--input-size", "32", "--batch", "2", "--rounds",
                    "1", "--warmup", "0", "--train")
    [ours] = report["measurements"]
    summary = summarize(densenet.get_config("densenet121", spatial_dims=1), 32)
    assert (report["spatial_dims"], report["mode"], ours["label"]) == (1, "train", "ours")
    assert ours["macs_per_image"] == 3 * summary.macs_executed
    assert "1-D" in report["notes"][0]
    assert [(spec["task"], spec["spatial_dims"]) for spec in specs] == [("memory", 1)]
    assert ours["peak_memory_mib"] > 0


def test_bench_nd_refuses_what_it_cannot_compare():
    with pytest.raises(ValueError, match="--peers compare image"):
        run_bench("densenet121", spatial_dims=3, peers=("openvino",))
    with pytest.raises(ValueError, match="spatial_dims must be 1, 2 or 3"):
        run_bench("densenet121", spatial_dims=4)
    with pytest.raises(ValueError, match="input 16×16×16 is too small for densenet121"):
        run_bench("densenet121", spatial_dims=3, input_size=16)


def test_bench_nd_int8_alone_is_one_line_not_an_empty_report(capsys, quick_peak):
    assert main(["bench", "densenet_bc100_k12", "--spatial-dims", "3", "--input-size", "8", "--batch", "1",
                 "--dtypes", "int8", "--rounds", "1", "--warmup", "0", "--no-memory"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("densenet bench: error: nothing to measure:") and "the int8 path runs images" in err
    assert "\n" not in err


def test_bench_directory_of_other_dimensions_names_the_option(tmp_path):
    model = densenet.create_model("densenet_bc100_k12", spatial_dims=3, in_chans=1, num_classes=2)
    model.save_pretrained(tmp_path / "volume")
    with pytest.raises(ValueError, match="holds a network with spatial_dims 3; pass --spatial-dims 3"):
        run_bench(str(tmp_path / "volume"), input_size=8)
