"""Export to ONNX, TorchScript and ExportedProgram, each checked against PyTorch (ONNX with onnxruntime)."""

import json

import pytest
import torch

import densenet
from densenet.deploy.export import ExportError, export_model
from densenet.deploy.onnx_graph import CONCAT_EVERY, PartsDenseBlock
from densenet.nn.layers import DenseBlock
from helpers import max_relative_error, randomize_batch_norm


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = densenet.DenseNet(growth_rate=8, block_config=(3, 3), num_init_features=16, num_classes=4, stem="cifar")
    randomize_batch_norm(model)
    return model.eval()


def _run_onnx(path, x):
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "exported-program"])
def test_export_round_trip_with_dynamic_batch(model, fmt, tmp_path):
    path = tmp_path / f"model.{fmt}"
    report = export_model(model, fmt, path, input_size=16)
    assert report.path == path and path.is_file() and report.max_rel_diff <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left behind
    x = torch.randn(5, 3, 16, 16)  # neither the traced batch (2) nor the checked one (3)
    with torch.no_grad():
        expected = model(x)
        if fmt == "onnx":
            actual = _run_onnx(path, x)
        elif fmt == "torchscript":
            actual = torch.jit.load(str(path))(x)
        else:
            actual = torch.export.load(str(path)).module()(x)
    assert (actual - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_bad_format_and_missing_directory(model, tmp_path):
    with pytest.raises(ValueError, match="unsupported export format 'tflite'"):
        export_model(model, "tflite", tmp_path / "m.tflite")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_model(model, "onnx", tmp_path / "missing" / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_mismatch_is_reported(model, tmp_path, monkeypatch):
    """The check is real: an exported file that computes something else is rejected and not left in place."""
    import densenet.deploy.export as export

    monkeypatch.setattr(export, "_run_exported", lambda fmt, path, x, threads: torch.zeros(x.shape[0], 4))
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_model(model, "exported-program", tmp_path / "m.pt2")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bottleneck", [True, False])
@pytest.mark.parametrize("concat_every", [1, 2, 3, 7])
def test_parts_block_equals_the_block_in_float64(bottleneck, concat_every):
    """[F2] with the input in parts: W ∗ σ(BN([a; b])) = W_a ∗ σ(BN_a(a)) + W_b ∗ σ(BN_b(b)), BN2 folded."""
    torch.manual_seed(0)
    block = DenseBlock(5, 6, growth_rate=4, bn_size=2 if bottleneck else 0, drop_rate=0.2,
                       memory_efficient=False).double()
    randomize_batch_norm(block)
    block.eval()
    parts = PartsDenseBlock(block, concat_every)
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        expected, actual = block(x), parts(x)
    assert actual.shape == expected.shape == (2, 26, 5, 5)
    assert max_relative_error(actual, expected) < 1e-12


@pytest.mark.parametrize("bn_size", [4, 0])
def test_onnx_file_concatenates_every_few_layers(bn_size, tmp_path):
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = densenet.DenseNet(growth_rate=4, block_config=(9, 2), num_init_features=8, bn_size=bn_size,
                              num_classes=3, stem="cifar")
    randomize_batch_norm(model)
    with pytest.raises(ValueError, match="concat_every must be at least 1"):
        PartsDenseBlock(model.features.denseblock1, 0)
    report = export_model(model, "onnx", tmp_path / "m.onnx", input_size=8)  # checked against the model itself
    assert report.max_rel_diff <= 1e-4
    concats = [node for node in onnx.load(str(tmp_path / "m.onnx")).graph.node if node.op_type == "Concat"]
    # block 1 (9 layers): before layers 5 and 9, and its output; block 2 (2 layers): its output
    assert CONCAT_EVERY == 4 and len(concats) == 4


def test_importing_the_deploy_room_loads_neither_onnx_nor_onnxruntime():
    """onnx and onnxruntime load on first export or session (inside the functions), not on import."""
    import json
    import subprocess
    import sys

    code = ("import sys, json; import densenet.deploy.optimize, densenet.deploy.export, densenet.deploy.runtime, "
            "densenet.deploy.bench; print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert "densenet.deploy.bench.runners" in loaded and "densenet.deploy.runtime" in loaded
    assert [name for name in loaded if name.split(".")[0] in ("onnx", "onnxruntime", "onnxscript")] == []


def test_onnx_file_carries_class_names_preprocessing_and_input_size(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    preprocessing = densenet.Preprocessing("L", 40, 36, (0.45,), (0.22,))
    model = densenet.create_model("densenet_bc100_k12", block_config=(2, 2, 2), num_classes=3, in_chans=1,
                                  class_names=["cat", "dog", "emu"])
    model.meta = model.meta.replace(preprocessing=preprocessing)
    export_model(model, "onnx", tmp_path / "m.onnx", input_size=36)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["class_names"]) == ["cat", "dog", "emu"]
    assert (props["image_mode"], props["resize"], props["crop"], props["input_size"]) == ("L", "40", "36", "36")
    assert json.loads(props["mean"]) == [0.45] and json.loads(props["std"]) == [0.22]
    assert json.loads(props["architecture"])["block_config"] == [2, 2, 2] and props["model_name"] == ""
    assert props["in_chans"] == "1"
