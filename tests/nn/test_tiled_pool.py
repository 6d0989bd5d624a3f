"""The channels-last volume pool (densenet.nn.tiled_pool) against ATen's avg_pool3d and its backward: float64 to
rounding, float32 bit-equal forward, floored sides, bf16 means rounded once, and the routing in nn.dims."""

import pytest
import torch
import torch.nn.functional as F

from densenet.nn import dims as nd
from densenet.nn import tiled_pool

CL = torch.channels_last_3d


@pytest.mark.parametrize(("shape", "k"), [((2, 5, 8, 6, 4), 2), ((1, 3, 9, 7, 5), 2), ((2, 4, 6, 9, 7), 3)])
def test_equals_aten_in_float64_forward_and_backward(shape, k):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=CL)
    out = tiled_pool.avg_pool(x, k)
    assert out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out, F.avg_pool3d(x, k, k), rtol=1e-14, atol=1e-14)
    grad_out = torch.randn_like(out)
    expected = torch.ops.aten.avg_pool3d_backward(grad_out, x.contiguous(), [k] * 3, [k] * 3, [0] * 3, False, True,
                                                  None)
    grad = tiled_pool.avg_pool_backward(grad_out, x, k)
    assert grad.is_contiguous(memory_format=CL)
    torch.testing.assert_close(grad, expected, rtol=1e-14, atol=1e-14)  # the floored entries get 0


def test_float32_forward_is_bit_equal_and_bf16_rounds_each_mean_once():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 8, 8).contiguous(memory_format=CL)
    assert torch.equal(tiled_pool.avg_pool(x, 2), F.avg_pool3d(x, 2, 2))
    low = x.bfloat16()
    assert torch.equal(tiled_pool.avg_pool(low, 2), F.avg_pool3d(low.float(), 2, 2).bfloat16())


def test_dims_routes_only_channels_last_non_overlapping_pools():
    x = torch.randn(1, 4, 6, 6, 6)
    assert not tiled_pool.applies(x, (2,) * 3, (2,) * 3, (0,) * 3)  # NCDHW
    cl = x.contiguous(memory_format=CL)
    assert tiled_pool.applies(cl, (2,) * 3, (2,) * 3, (0,) * 3)
    assert not tiled_pool.applies(cl, (3,) * 3, (2,) * 3, (1,) * 3)  # the stem's max-pool shape
    assert nd.avg_pool(cl, 2, 2).is_contiguous(memory_format=CL)
    torch.testing.assert_close(nd.avg_pool(cl, 2, 2), F.avg_pool3d(x, 2, 2))
    grad = nd.pool_backward(torch.ones(1, 4, 3, 3, 3), cl, "avg", 2, 2, 0)
    assert torch.equal(grad, torch.full_like(x, 1 / 8))
