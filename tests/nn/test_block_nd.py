"""The network in 1, 2 and 3 spatial dimensions: the explicit path (dense block F2/F2b, recomputing stem and
transitions) against the plain autograd path in float64, the modules each dimension builds, and gradcheck of the
explicit Functions in 1D and 3D."""

import pytest
import torch
from torch import nn

import densenet
from densenet.nn import dims as nd
from densenet.nn.layers import DenseBlock
from densenet.nn.recompute import ConvBatchNormReLUPoolFunction, batch_norm_relu_pool
from helpers import max_relative_error, randomize_batch_norm

pytestmark = pytest.mark.usefixtures("block_kernels")  # fused kernels and ATen's operations (conftest.py)

# tiny networks: both stems, with and without bottleneck, dropout through the explicit block's own masks
CONFIGS = {
    "imagenet": dict(growth_rate=3, block_config=(2, 2), num_init_features=4, bn_size=2, stem="imagenet"),
    "cifar_plain": dict(growth_rate=3, block_config=(2, 1), num_init_features=4, bn_size=0, stem="cifar",
                        drop_rate=0.25),
}
SIDES = {1: {"imagenet": 40, "cifar_plain": 12}, 2: {"imagenet": 17, "cifar_plain": 6},
         3: {"imagenet": 9, "cifar_plain": 4}}
KINDS = {1: (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AvgPool1d),
         2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d),
         3: (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.AvgPool3d)}


def _pair(dims: int, name: str, in_chans: int = 3):
    torch.manual_seed(dims)
    config = densenet.DenseNetConfig(**CONFIGS[name], num_classes=3, spatial_dims=dims, in_chans=in_chans)
    reference = densenet.DenseNet(config.replace(memory_efficient=False))
    randomize_batch_norm(reference)
    ours = densenet.DenseNet(config)
    ours.load_state_dict(reference.state_dict())
    return reference.double(), ours.double()


def _step(model: nn.Module, x: torch.Tensor, seed: int):
    torch.manual_seed(seed)  # the same dropout masks in both paths
    x = x.detach().clone().requires_grad_()
    out = model.train()(x)
    torch.nn.functional.cross_entropy(out, torch.arange(out.shape[0]) % out.shape[1]).backward()
    return out.detach(), x.grad


@pytest.mark.parametrize(("name", "in_chans"), [*((name, 3) for name in sorted(CONFIGS)), ("imagenet", 1)])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_float64_gradients_equal_plain_path(dims, name, in_chans):
    """Two SGD steps: outputs, input gradients, every parameter gradient and the running statistics of the explicit
    path equal the plain autograd path's to 1e-8 in float64 — the statistics updated once per forward. One input
    channel too: its stem runs on a channels-last view of the input (:func:`densenet.nn.dims.channel_stride_one`)."""
    reference, ours = _pair(dims, name, in_chans)
    x = torch.randn(3, in_chans, *[SIDES[dims][name]] * dims, dtype=torch.float64) * 2 + 0.5
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (reference, ours)]
    for step in range(2):
        for optimizer in optimizers:
            optimizer.zero_grad()
        out_ref, grad_ref = _step(reference, x, step)
        out_ours, grad_ours = _step(ours, x, step)
        assert max_relative_error(out_ours, out_ref) <= 1e-8
        assert max_relative_error(grad_ours, grad_ref) <= 1e-8
        for (key, p_ref), p_ours in zip(reference.named_parameters(), ours.parameters(), strict=True):
            assert max_relative_error(p_ours.grad, p_ref.grad) <= 1e-8, key
        for optimizer in optimizers:
            optimizer.step()
    buffers_ref = dict(reference.named_buffers())
    for key, buffer in ours.named_buffers():
        if key.endswith("num_batches_tracked"):
            assert buffer.item() == buffers_ref[key].item() == 2, key
        else:
            assert max_relative_error(buffer, buffers_ref[key]) <= 1e-8, key


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_modules_follow_the_dimension(dims):
    """Every conv, batch norm and pool is the ``d``-dimensional one, kernels ``K^d``; the input is ``(N, C, *d)``."""
    model = densenet.create_model("densenet121", spatial_dims=dims, in_chans=1, num_classes=2)
    conv, norm, max_pool, avg_pool = KINDS[dims]
    assert model.config.spatial_dims == dims
    assert tuple(model.features.conv0.weight.shape) == (64, 1, *[7] * dims)
    assert tuple(model.features.denseblock1.denselayer1.conv2.weight.shape) == (32, 128, *[3] * dims)
    assert isinstance(model.features.pool0, max_pool) and isinstance(model.features.transition1.pool, avg_pool)
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            assert type(module) is conv
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            assert type(module) is norm
    wrong = torch.randn(1, 1, *[40] * (1 if dims > 1 else 2))
    with pytest.raises(ValueError, match=f"expected a {dims + 2}-D input"):
        model(wrong)


def test_densenet121_3d_parameter_count_is_monai_s():
    """DenseNet-121 in 3D with 1 input channel and 2 classes has MONAI's ``DenseNet121(spatial_dims=3,
    in_channels=1, out_channels=2)`` parameter count, 11,244,674 (MONAI 1.6.1's, counted once by hand:
    ``sum(p.numel() for p in DenseNet121(...).parameters())``)."""
    model = densenet.create_model("densenet121", spatial_dims=3, in_chans=1, num_classes=2)
    assert sum(p.numel() for p in model.parameters()) == 11_244_674


@pytest.mark.parametrize("dims", [1, 3])
def test_gradcheck_explicit_block(dims):
    """gradcheck of the explicit dense block Function (F2b) in 1D and 3D, training mode, float64."""
    torch.manual_seed(0)
    block = DenseBlock(2, 3, 2, 2, 0.0, spatial_dims=dims).double().train()
    randomize_batch_norm(block)
    x = torch.randn(2, 3, *[4 if dims == 1 else 2] * dims, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in block.flat_parameters()]

    def run(x, *params):
        return block._run_explicit(x, list(params))

    assert torch.autograd.gradcheck(run, (x, *params), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dims", [1, 3])
def test_gradcheck_stem_and_transition(dims):
    """gradcheck of the recomputing Functions: the ImageNet stem (conv [F1b], BN, ReLU, max-pool) and a transition's
    BN-ReLU-average-pool [F3b], in 1D and 3D, float64."""
    torch.manual_seed(0)
    config = densenet.DenseNetConfig(growth_rate=2, block_config=(1, 1), num_init_features=3, bn_size=0,
                                     in_chans=2, spatial_dims=dims)
    features = densenet.DenseNet(config).double().train().features
    x = torch.randn(2, 2, *[6 if dims == 1 else 4] * dims, dtype=torch.float64, requires_grad=True)
    norm, conv = features.norm0, features.conv0
    geometry = (tuple(conv.stride), tuple(conv.padding))

    def stem(x, weight, bias, conv_weight):
        return ConvBatchNormReLUPoolFunction.apply(norm, ("max", 3, 2, 1), geometry, x, weight, bias, conv_weight)

    params = [t.detach().clone().requires_grad_() for t in (norm.weight, norm.bias, conv.weight)]
    assert torch.autograd.gradcheck(stem, (x, *params), eps=1e-6, atol=1e-6)
    transition = features.transition1.norm
    y = torch.randn(2, 5, *[4 if dims == 1 else 2] * dims, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y: batch_norm_relu_pool(transition, y, ("avg", 2, 2, 0)), (y,),
                                    eps=1e-6, atol=1e-6)


def test_config_round_trips_spatial_dims_and_old_configs_read_as_2d():
    config = densenet.DenseNetConfig(spatial_dims=3)
    assert densenet.DenseNetConfig.from_dict(config.to_dict()) == config
    old = config.to_dict()
    del old["spatial_dims"]
    assert densenet.DenseNetConfig.from_dict(old).spatial_dims == 2
    for bad in (0, 4, True, "3"):
        with pytest.raises(ValueError, match="spatial_dims must be 1, 2 or 3"):
            densenet.DenseNetConfig(spatial_dims=bad)


@pytest.mark.parametrize("name", densenet.list_models())
def test_every_registered_name_takes_spatial_dims(name):
    assert densenet.get_config(name, spatial_dims=1).spatial_dims == 1
    assert densenet.get_config(name, spatial_dims=3, in_chans=1).spatial_dims == 3


@pytest.mark.parametrize("dims", [2, 3])
def test_one_channel_view_is_channels_last_and_so_is_the_stem_conv(dims):
    """A one-channel map gets the channel stride 1 without a copy, and the stem's convolution of it comes out
    channels-last (from the plain strides it comes out plain, and its max-pool takes the slow plain-layout kernel)."""
    x = torch.randn(2, 1, *[9] * dims)
    view = nd.channel_stride_one(x)
    assert view.stride(1) == 1 and view.data_ptr() == x.data_ptr() and torch.equal(view, x)
    weight = torch.randn(4, 1, *[3] * dims)
    layout = nd.memory_format(dims)
    assert not nd.conv(x, weight, None, 2, 1).is_contiguous(memory_format=layout)
    assert nd.conv(view, weight, None, 2, 1).is_contiguous(memory_format=layout)
    rgb = torch.randn(2, 3, *[9] * dims)
    assert nd.channel_stride_one(rgb) is rgb


def test_bf16_volumes_pool_train_and_infer_on_cpu():
    """ATen has no CPU bf16 ``avg_pool3d`` (forward or backward): such volumes are pooled in float32, each mean
    rounded once. With it the explicit path trains under bf16 autocast (its input gradient no further from
    float32's than twice the plain path's: bf16 rounding on a tiny network with random statistics is large in
    both), and ``optimize_for_inference(dtype=torch.bfloat16)`` of a 3-D model gives float32's logits within bf16's."""
    volume = torch.randn(2, 3, 4, 6, 8).bfloat16()
    means = volume.float().unflatten(4, (4, 2)).unflatten(3, (3, 2)).unflatten(2, (2, 2)).mean(dim=(3, 5, 7))
    assert torch.equal(nd.avg_pool(volume, 2, 2), means.bfloat16())
    reference, ours = _pair(3, "imagenet", 1)
    reference, ours = reference.float(), ours.float()
    x = torch.randn(2, 1, 20, 20, 20)
    errors = []
    for model in (reference, ours):
        grads = []
        for autocast in (False, True):
            x_in = x.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = model.train()(x_in)
            out.float().sum().backward()
            grads.append(x_in.grad)
        errors.append(max_relative_error(grads[1], grads[0]))
    assert errors[1] <= 2 * errors[0]
    fast = densenet.optimize_for_inference(ours.eval(), dtype=torch.bfloat16)
    with torch.no_grad():
        assert max_relative_error(fast(x), ours(x)) <= 5e-2


def test_is_channels_last_means_a_dense_channels_last_map_in_2d_and_3d_only():
    image, volume = torch.zeros(2, 5, 4, 3), torch.zeros(2, 5, 4, 3, 2)
    assert nd.is_channels_last(image.contiguous(memory_format=torch.channels_last))
    assert nd.is_channels_last(volume.contiguous(memory_format=torch.channels_last_3d))
    assert not nd.is_channels_last(image) and not nd.is_channels_last(volume)  # plain contiguous
    buffer = torch.zeros(2, 4, 3, 8).movedim(-1, 1)  # (N, 8, H, W) channels-last
    assert nd.is_channels_last(buffer) and not nd.is_channels_last(buffer[:, :5])  # a channel slice has gaps
    assert not nd.is_channels_last(torch.zeros(2, 5, 7).movedim(1, -1).movedim(-1, 1))  # 1D has no such format


@pytest.mark.parametrize("dims", [2, 3])
def test_gradcheck_channels_last_transition(dims, block_kernels):
    """gradcheck of a transition's BN-ReLU-average-pool [F3b] on a channels-last map (what a dense block hands it),
    whose backward is one fused BN-ReLU pass on the CPU (``block_kernels``: and ATen's operations), float64, with
    a pool window that drops the odd last row."""
    torch.manual_seed(0)
    config = densenet.DenseNetConfig(growth_rate=2, block_config=(1, 1), num_init_features=3, bn_size=0,
                                     spatial_dims=dims)
    transition = densenet.DenseNet(config).double().train().features.transition1.norm
    with torch.no_grad():
        transition.weight.uniform_(-1, 1)  # scales of both signs
        transition.bias.uniform_(-1, 1)
    memory_format = torch.channels_last if dims == 2 else torch.channels_last_3d
    y = torch.randn(2, 5, *[3] * dims, dtype=torch.float64).contiguous(memory_format=memory_format)
    y.requires_grad_()
    params = [t.detach().clone().requires_grad_() for t in (transition.weight, transition.bias)]

    def run(y, weight, bias):
        return ConvBatchNormReLUPoolFunction.apply(transition, ("avg", 2, 2, 0), None, y, weight, bias, None)

    assert torch.autograd.gradcheck(run, (y, *params), eps=1e-6, atol=1e-6)
