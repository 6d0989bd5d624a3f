"""The model: torchvision equality, input checks, head API."""

import pytest
import torch
import torchvision

import densenet
from helpers import max_relative_error, randomize_batch_norm

TORCHVISION_MODELS = ["densenet121", "densenet161", "densenet169", "densenet201"]


def _twins(name: str, **overrides):
    """Our model and torchvision's with identical random weights and randomised BN statistics."""
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)()
    randomize_batch_norm(reference)
    ours = densenet.create_model(name, **overrides)
    ours.load_state_dict(reference.state_dict())
    return ours, reference


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_eval_logits_equal_torchvision(name):
    """Eval mode (running statistics), float32: the same logits as torchvision (64×64 input: 2×2 final maps)."""
    ours, reference = _twins(name)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference.eval()(x)
        actual = ours.eval()(x)
    assert max_relative_error(actual, expected) <= 1e-5


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_train_gradients_equal_torchvision(name):
    """float64, train mode (batch statistics): logits, every parameter gradient and the BN running stats."""
    ours, reference = _twins(name)
    ours, reference = ours.double().train(), reference.double().train()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    target = torch.tensor([3, 7])
    for model in (ours, reference):
        torch.nn.functional.cross_entropy(model(x), target).backward()
    ours_params, reference_params = dict(ours.named_parameters()), dict(reference.named_parameters())
    assert ours_params.keys() == reference_params.keys()
    for key, parameter in reference_params.items():
        assert max_relative_error(ours_params[key].grad, parameter.grad) <= 1e-10, key
    reference_buffers = dict(reference.named_buffers())
    for key, buffer in ours.named_buffers():
        assert torch.equal(buffer, reference_buffers[key]) if "num_batches" in key else \
            max_relative_error(buffer, reference_buffers[key]) <= 1e-12, key


def test_input_checks():
    model = densenet.create_model("densenet121").eval()
    with pytest.raises(ValueError, match="4-D input"):
        model(torch.randn(3, 224, 224))
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        model(torch.randn(1, 1, 224, 224))
    with pytest.raises(ValueError, match="too small.*at least 29"):
        model(torch.randn(1, 3, 28, 64))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 29, 29)).shape == (1, 1000)


def test_custom_config_and_head_api():
    model = densenet.DenseNet(growth_rate=8, block_config=(2, 3), num_init_features=16, in_chans=1, stem="cifar",
                              num_classes=4, compression=0.75, bn_size=2)
    assert model.features.transition1.conv.out_channels == 24  # ⌊0.75 · (16 + 2·8)⌋
    x = torch.randn(2, 1, 16, 16)
    features = model.forward_features(x)
    assert features.shape == (2, model.num_features, 8, 8)
    pooled = model.forward_head(features, pre_logits=True)
    assert pooled.shape == (2, 24 + 3 * 8)
    assert torch.allclose(model.forward_head(features), model.get_classifier()(pooled))
    with pytest.raises(ValueError, match="2 class names for 4 classes"):
        densenet.DenseNet(model.config, meta=densenet.ModelMeta(class_names=["a", "b"]))


def test_weight_initialisation():
    model = densenet.create_model("densenet_bc100_k12")
    conv = model.features.denseblock1.denselayer1.conv1.weight
    fan_in = conv[0].numel()
    # Kaiming normal: std = sqrt(2 / fan_in)
    assert abs(conv.std().item() - (2 / fan_in) ** 0.5) < 0.1 * (2 / fan_in) ** 0.5
    assert torch.all(model.features.norm5.weight == 1) and torch.all(model.features.norm5.bias == 0)
    assert torch.all(model.classifier.bias == 0)
