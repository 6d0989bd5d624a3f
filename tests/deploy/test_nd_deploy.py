"""optimize_for_inference and ONNX export of signal (1D) and volume (3D) networks."""

import json

import pytest
import torch

import densenet
from densenet.deploy.export import export_model
from densenet.deploy.optimize import optimize_for_inference
from helpers import max_relative_error, randomize_batch_norm

# both stems, with and without bottleneck; sides that floor in the pools
CASES = [dict(stem="imagenet", bn_size=2, compression=0.5), dict(stem="cifar", bn_size=0, compression=0.7)]
SIDES = {1: 37, 3: 11}


def _model(dims: int, overrides: dict, blocks: tuple[int, ...] = (2, 3)) -> densenet.DenseNet:
    torch.manual_seed(dims)
    model = densenet.DenseNet(growth_rate=4, block_config=blocks, num_init_features=8, num_classes=3, in_chans=2,
                              spatial_dims=dims, **overrides)
    randomize_batch_norm(model)
    return model.eval()


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("overrides", CASES, ids=["imagenet", "cifar"])
@pytest.mark.parametrize("dims", [1, 3])
def test_optimized_logits_match(dims, overrides, channels_last):
    """float32 (oneDNN's fused convolutions on CPU; signals as unit-height images) within 1e-4 of the model; float64
    (plain convolutions) to rounding."""
    model = _model(dims, overrides)
    x = torch.randn(3, 2, *[SIDES[dims]] * dims)
    with torch.no_grad():
        assert max_relative_error(optimize_for_inference(model, channels_last)(x), model(x)) <= 1e-4
        model64, x64 = model.double(), x.double()
        assert max_relative_error(optimize_for_inference(model64, channels_last)(x64), model64(x64)) <= 1e-12


@pytest.mark.parametrize("dims", [1, 3])
def test_optimized_rejects_the_wrong_dimension(dims):
    fast = optimize_for_inference(_model(dims, CASES[1]))
    with pytest.raises(ValueError, match=f"expected a {dims + 2}-D input"):
        fast(torch.randn(1, 2, 16, 16))


@pytest.mark.parametrize("dims", [1, 3])
def test_onnx_export_round_trip(dims, tmp_path):
    """The ONNX file (concatenate-every-four block) reproduces the model on a batch of another size than traced;
    its metadata names the spatial dimensions and carries no image preprocessing."""
    onnxruntime = pytest.importorskip("onnxruntime")
    model = _model(dims, CASES[0], blocks=(1, 1))  # few nodes: the exporter's time grows with them
    side = SIDES[dims]
    path = tmp_path / "model.onnx"
    report = export_model(model, "onnx", path, input_size=side)
    assert report.max_rel_diff <= 1e-4
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 2, *[side] * dims)
    actual = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        assert max_relative_error(actual, model(x)) <= 1e-4
    metadata = session.get_modelmeta().custom_metadata_map
    assert metadata["spatial_dims"] == str(dims) and json.loads(metadata["architecture"])["spatial_dims"] == dims
    assert "image_mode" not in metadata
