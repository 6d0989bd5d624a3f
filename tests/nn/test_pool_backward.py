"""nn.dims.pool_backward's max-pool through a ReLU (``through_relu``) against autograd, in 1, 2 and 3 dimensions,
with windows whose inputs are all inactive (their maximum is a ReLU zero) and ties at zero."""

import pytest
import torch
import torch.nn.functional as F

from densenet.nn import dims as nd

_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_through_relu_equals_autograd_of_pool_of_relu(dims):
    torch.manual_seed(0)
    u = torch.randn(2, 3, *(7,) * dims, dtype=torch.float64)
    u[0, 0] = -1.0 - torch.rand_like(u[0, 0])  # a whole channel inactive: every window's maximum is a ReLU zero
    u[(1, 1, *(slice(0, 3),) * dims)] = -0.5  # one corner window inactive
    u = u.contiguous(memory_format=nd._FORMATS[dims]) if dims in nd._FORMATS else u
    leaf = u.clone().requires_grad_()
    out = _POOL[dims](F.relu(leaf), 3, 2, 1)
    grad_out = torch.randn_like(out)
    (expected,) = torch.autograd.grad(out, leaf, grad_out)
    relu = F.relu(u)
    got = nd.pool_backward(grad_out, relu, "max", 3, 2, 1, out=relu.clone(), through_relu=True)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not got[0, 0].any()  # nothing reaches an inactive input
    without = nd.pool_backward(grad_out, relu, "max", 3, 2, 1)  # the pool alone sends some gradient there
    assert without[0, 0].any()


def test_average_pool_refuses_through_relu():
    x = torch.rand(1, 2, 4, 4)
    with pytest.raises(ValueError, match="through_relu"):
        nd.pool_backward(torch.ones(1, 2, 2, 2), x, "avg", 2, 2, 0, through_relu=True)
