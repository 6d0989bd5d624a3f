"""The default model (memory_efficient=True) in the tools a torchvision or timm user already has: FX feature
extraction, torch.jit.trace, torch.export (its module called with and without grad), torch.compile, Grad-CAM and
captum — each giving the plain path's numbers."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor

import densenet
from densenet.features import DenseNetFeatures
from helpers import randomize_batch_norm

CASES = [("densenet121", 64), ("densenet_bc100_k12", 32)]


def _pair(name: str) -> tuple[densenet.DenseNet, densenet.DenseNet]:
    """The default model and a plain-path twin with the same (trained-looking) weights, both in eval mode."""
    torch.manual_seed(0)
    model = randomize_batch_norm(densenet.create_model(name, num_classes=7), seed=3).eval()
    plain = densenet.create_model(name, num_classes=7, memory_efficient=False).eval()
    plain.load_state_dict(model.state_dict())
    assert model.config.memory_efficient and not plain.config.memory_efficient
    return model, plain


@pytest.mark.parametrize(("name", "side"), CASES)
def test_fx_feature_extractor(name, side):
    model, plain = _pair(name)
    extractor = create_feature_extractor(model, {"features.denseblock2": "block2", "classifier": "logits"})
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        out = extractor(x)
        reference = DenseNetFeatures(plain.features, plain.config, (2,))(x)[0]
        torch.testing.assert_close(out["block2"], reference, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out["logits"], plain(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("name", "side"), CASES)
def test_jit_trace_with_and_without_grad(name, side):
    model, plain = _pair(name)
    x = torch.randn(2, 3, side, side)
    traced = torch.jit.trace(model, x, check_trace=False)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), plain(x), rtol=1e-4, atol=1e-5)
    inputs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    traced(inputs[0]).square().sum().backward()
    plain(inputs[1]).square().sum().backward()
    torch.testing.assert_close(inputs[0].grad, inputs[1].grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("name", "side"), CASES)
def test_torch_export_module_with_and_without_grad(name, side):
    model, plain = _pair(name)
    x = torch.randn(2, 3, side, side)
    exported = torch.export.export(model, (x,)).module()
    with torch.no_grad():
        expected = plain(x)
        torch.testing.assert_close(exported(x), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(exported(x), expected, rtol=1e-4, atol=1e-5)  # outside no_grad
    inputs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    exported(inputs[0])[:, 3].sum().backward()
    plain(inputs[1])[:, 3].sum().backward()
    torch.testing.assert_close(inputs[0].grad, inputs[1].grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("name", "side"), CASES)
def test_torch_compile_gives_the_plain_numbers(name, side):
    model, plain = _pair(name)
    x = torch.randn(2, 3, side, side)
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), plain(x), rtol=1e-4, atol=1e-5)


def test_jit_script_names_the_supported_paths():
    model, _ = _pair("densenet_bc100_k12")
    with pytest.raises(TypeError, match=r"torch.jit.script cannot compile densenet.DenseNet.*torch.export.export"):
        torch.jit.script(model)


def test_forward_intermediates_and_grad_checkpointing_switch():
    model, plain = _pair("densenet121")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, indices=(0, -1))
        torch.testing.assert_close(final, plain.forward_features(x), rtol=1e-4, atol=1e-5)
        assert [m.shape[1:] for m in maps] == [(64, 32, 32), (1024, 2, 2)]
        assert len(model.forward_intermediates(x, indices=2, intermediates_only=True)) == 2
    model.set_grad_checkpointing(False)
    assert not model.config.memory_efficient
    assert not any(getattr(m, "memory_efficient", False) for m in model.modules())
    model.set_grad_checkpointing()
    assert model.config.memory_efficient and model.features.denseblock3.memory_efficient
    assert model.features.transition1.memory_efficient and model.features.memory_efficient


@pytest.mark.parametrize(("name", "side"), CASES)
def test_grad_cam_maps_equal_the_plain_paths(name, side):
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, plain = _pair(name)
    x = torch.randn(2, 3, side, side)
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(4)]
    last = f"denseblock{len(model.config.block_config)}"
    for method in (GradCAM, GradCAMPlusPlus):
        maps = []
        for net in (model, plain):
            with method(model=net, target_layers=[getattr(net.features, last)]) as cam:
                maps.append(torch.from_numpy(cam(input_tensor=x, targets=targets)))
        assert maps[0].shape == (2, side, side) and maps[0].std() > 0.01  # a real map, not a constant
        torch.testing.assert_close(maps[0], maps[1], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(("name", "side"), CASES)
def test_captum_attributions_equal_the_plain_paths(name, side):
    from captum.attr import IntegratedGradients, LayerGradCam, Saliency

    model, plain = _pair(name)
    x = torch.randn(2, 3, side, side)
    results = []
    for net in (model, plain):
        integrated = IntegratedGradients(net).attribute(x, target=2, n_steps=8)
        saliency = Saliency(net).attribute(x, target=2)
        layer = LayerGradCam(net, net.features.denseblock2).attribute(x, target=2)
        results.append((integrated, saliency, layer))
    for ours, reference in zip(*results, strict=True):
        assert ours.abs().sum() > 0
        torch.testing.assert_close(ours, reference, rtol=1e-3, atol=1e-5)
