"""Inflating 2-D kernels: a 3-D kernel on a volume constant along depth, and a 1-D kernel on a signal, answer as the
2-D kernel answers the image — exactly where the kernel's window stays inside the input, and not at the borders,
where zero padding sums fewer copies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from densenet.inflate import inflate_kernel, inflate_state_dict


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
