"""Inflating 2-D kernels: a 3-D kernel on a volume constant along depth, and a 1-D kernel on a signal, answer as the
2-D kernel answers the image — exactly where the kernel's window stays inside the input, and not at the borders,
where zero padding sums fewer copies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

import densenet
from densenet.inflate import RULES, inflate_kernel, inflate_state_dict
from densenet.pretrained import load_start
from helpers import randomize_batch_norm


def _double(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(("kernel", "stride"), [(7, 2), (3, 1), (1, 1)])
def test_3d_kernel_on_a_depth_constant_volume_is_the_2d_kernel_on_its_slice(kernel, stride):
    weight, image = _double(4, 3, kernel, kernel, seed=0), _double(2, 3, 13, 11, seed=1)
    depth = 15
    inflated = inflate_kernel(weight, (4, 3, kernel, kernel, kernel))
    padding = kernel // 2
    volume = image.unsqueeze(2).expand(2, 3, depth, 13, 11)  # x[d] = image for every slice d
    expected = F.conv2d(image, weight, stride=stride, padding=padding)  # (N, 4, h, w)
    actual = F.conv3d(volume, inflated, stride=stride, padding=padding)  # (N, 4, D', h, w)
    # output slice j reads input slices stride·j − padding … stride·j + padding: inside iff both are
    inside = [j for j in range(actual.shape[2]) if stride * j - padding >= 0 and stride * j + padding < depth]
    outside = [j for j in range(actual.shape[2]) if j not in inside]
    assert inside
    for j in inside:
        torch.testing.assert_close(actual[:, :, j], expected, rtol=1e-12, atol=1e-12)
    for j in outside:  # fewer than K slices summed: the border answers K_in/K of the 2-D response
        assert not torch.allclose(actual[:, :, j], expected)
    assert outside or kernel == 1


@pytest.mark.parametrize(("kernel", "stride"), [(7, 2), (3, 1)])
def test_1d_kernel_on_a_signal_is_the_2d_kernel_on_the_image_repeating_it_down_its_rows(kernel, stride):
    weight, signal = _double(4, 3, kernel, kernel, seed=2), _double(2, 3, 17, seed=3)
    height = 9
    collapsed = inflate_kernel(weight, (4, 3, kernel))
    padding = kernel // 2
    image = signal.unsqueeze(2).expand(2, 3, height, 17)  # x[h, w] = s[w] for every row h
    expected = F.conv2d(image, weight, stride=stride, padding=padding)  # (N, 4, h', w')
    actual = F.conv1d(signal, collapsed, stride=stride, padding=padding)  # (N, 4, w')
    inside = [i for i in range(expected.shape[2]) if stride * i - padding >= 0 and stride * i + padding < height]
    assert inside
    for i in inside:
        torch.testing.assert_close(actual, expected[:, :, i], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(actual, expected[:, :, 0])  # the top row's window reaches into the padding


def test_the_rules_by_value():
    weight = torch.arange(8.0).reshape(1, 2, 2, 2)  # w[0, i, h, w]
    inflated = inflate_kernel(weight, (1, 2, 4, 2, 2))
    assert torch.equal(inflated[0, 1, 3], weight[0, 1] / 4)
    assert torch.equal(inflate_kernel(weight, (1, 2, 2)), torch.tensor([[[2.0, 4.0], [10.0, 12.0]]]))


def test_what_does_not_fit_is_refused_or_left_alone():
    weight = torch.zeros(4, 3, 3, 3)
    for shape in ((4, 3, 3, 5, 5), (4, 1, 3), (4, 3, 3, 3)):
        with pytest.raises(ValueError, match="cannot inflate"):
            inflate_kernel(weight, shape)
    with pytest.raises(ValueError, match="expected a 2-D convolution kernel"):
        inflate_kernel(torch.zeros(4, 3, 3), (4, 3, 3, 3, 3))
    state = {"conv.weight": weight, "norm.weight": torch.ones(4), "other.weight": weight}
    expected = {"conv.weight": torch.zeros(4, 3, 3, 3, 3), "norm.weight": torch.ones(4),
                "other.weight": torch.zeros(4, 3, 1, 1, 1)}
    inflated, count = inflate_state_dict(state, expected)
    assert count == 1 and inflated["conv.weight"].shape == (4, 3, 3, 3, 3)
    assert inflated["norm.weight"] is state["norm.weight"] and inflated["other.weight"] is weight


# A small ImageNet-stem network: conv0 7/2 pad 3, max-pool 3/2 pad 1, one 3×3 dense layer, a 2/2 pool, one more.
SMALL = {"growth_rate": 4, "block_config": (1, 1), "num_init_features": 8, "bn_size": 2, "num_classes": 3}
# (kernel, stride, padding) along one axis, input to output; the 1×1 convs change nothing
WINDOWS = [(7, 2, 3), (3, 2, 1), (3, 1, 1), (2, 2, 0), (3, 1, 1)]


def clean_positions(size: int) -> list[int]:
    """The final-map positions along an axis of ``size`` whose receptive field never reaches the zero padding:
    each window, traced back through every layer, stays inside that layer's input (⌊(W − K + 2P)/S⌋ + 1 [F9])."""
    sizes = [size]
    for kernel, stride, padding in WINDOWS:
        sizes.append((sizes[-1] - kernel + 2 * padding) // stride + 1)
    clean = []
    for position in range(sizes[-1]):
        low, high, inside = position, position, True
        for (kernel, stride, padding), width in zip(reversed(WINDOWS), reversed(sizes[:-1]), strict=True):
            low, high = stride * low - padding, stride * high - padding + kernel - 1
            inside = inside and low >= 0 and high <= width - 1
        if inside:
            clean.append(position)
    return clean


def _started_from_2d(spatial_dims: int, log_lines: list[str]) -> tuple[densenet.DenseNet, densenet.DenseNet]:
    """A 2-D network with random batch-norm statistics, and an N-D one started from its state with ``load_start``."""
    torch.manual_seed(0)
    flat = randomize_batch_norm(densenet.DenseNet(**SMALL)).eval()
    model = densenet.DenseNet(**SMALL, spatial_dims=spatial_dims).eval()
    assert load_start(model, flat.state_dict(), "the 2-D net")
    assert f"the 2-D net: 6 2-D convolution kernels inflated to {spatial_dims}-D ({RULES[spatial_dims]})" in log_lines
    return flat, model


def test_3d_start_answers_a_depth_constant_volume_as_the_2d_net_its_slice_where_padding_is_not_seen(log_lines):
    flat, model = _started_from_2d(3, log_lines)
    image = torch.randn(2, 3, 24, 20)
    depth = 64
    clean = clean_positions(depth)
    assert clean == [3, 4, 5]  # of 8: the receptive field (40 slices wide) reaches the padding everywhere else
    with torch.no_grad():
        expected = flat.forward_features(image)  # (N, C, h, w)
        actual = model.forward_features(image.unsqueeze(2).expand(2, 3, depth, 24, 20).contiguous())  # (N, C, d, h, w)
    assert actual.shape[2] == 8
    for position in clean:
        torch.testing.assert_close(actual[:, :, position], expected, rtol=1e-4, atol=1e-5)
    # the outermost slices sum only part of the volume (conv0's first window holds 3 zero slices of 7); positions
    # between them and the clean ones may agree or not (a max-pool can hide the difference)
    for position in (0, 7):
        assert not torch.allclose(actual[:, :, position], expected, rtol=1e-2, atol=1e-3)


def test_1d_start_answers_a_signal_as_the_2d_net_the_image_repeating_it_down_its_rows(log_lines):
    flat, model = _started_from_2d(1, log_lines)
    signal = torch.randn(2, 3, 40)
    height = 64
    with torch.no_grad():
        expected = flat.forward_features(signal.unsqueeze(2).expand(2, 3, height, 40).contiguous())  # (N, C, h, w)
        actual = model.forward_features(signal)  # (N, C, w)
    assert clean_positions(height) == [3, 4, 5] and expected.shape[2] == 8
    for row in clean_positions(height):
        torch.testing.assert_close(actual, expected[:, :, row], rtol=1e-4, atol=1e-5)
    for row in (0, 7):  # the outermost rows see the zero padding above and below the image
        assert not torch.allclose(actual, expected[:, :, row], rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("spatial_dims", [1, 3])
def test_create_model_pretrained_inflates_the_imagenet_start(spatial_dims, tmp_path, monkeypatch, log_lines):
    """``create_model(..., spatial_dims=d, pretrained=True)`` from torchvision's file (a random one in a fresh
    cache, no server): every kernel inflated, summing back to the file's over the new axis (3-D) or over the height
    (1-D), the gray stem summed over RGB first; batch norms the file's; a fresh head; one log line each."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("DENSENET_WEIGHTS_MIRROR", "http://127.0.0.1:9")  # a download would fail at once
    torch.manual_seed(0)
    file = randomize_batch_norm(torchvision.models.densenet121()).state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(file, tmp_path / "hub" / "checkpoints" / "densenet121-a639ec97.pth")
    model = densenet.create_model("densenet121", spatial_dims=spatial_dims, in_chans=1, num_classes=2,
                                  pretrained=True, progress=False)
    assert "densenet121.imagenet1k: 120 2-D convolution kernels inflated to " \
           f"{spatial_dims}-D ({RULES[spatial_dims]})" in log_lines
    assert "densenet121.imagenet1k: first convolution adapted from 3 to 1 input channel(s)" in log_lines
    state = model.state_dict()
    back = {3: lambda w: w.sum(dim=2), 1: lambda w: w}[spatial_dims]  # 3-D: Σ_d w₃ = w₂
    flat = {3: lambda w: w, 1: lambda w: w.sum(dim=2)}[spatial_dims]  # 1-D: w₁ = Σ_h w₂
    for key, value in file.items():
        if key == "features.conv0.weight":
            value = value.sum(dim=1, keepdim=True)  # (64, 1, 7, 7): the gray stem
        if ".conv" in key:
            torch.testing.assert_close(back(state[key]), flat(value), rtol=1e-5, atol=1e-6)
        elif not key.startswith("classifier."):
            assert torch.equal(state[key], value), key
    assert model.meta.preprocessing is None and model.meta.class_names is None
