"""The explicit, memory-linear dense block (F2, F2b) against the plain autograd reference (memory_efficient=False)."""

import copy
import itertools
import logging

import pytest
import torch
from torch._dynamo.utils import counters

import densenet
from densenet.nn import double_backward
from helpers import max_relative_error, randomize_batch_norm

pytestmark = pytest.mark.usefixtures("block_kernels")  # fused kernels and ATen's operations (conftest.py)

CONFIGS = {
    "bottleneck": dict(growth_rate=4, block_config=(3, 2), num_init_features=6, bn_size=4, stem="cifar"),
    "plain": dict(growth_rate=4, block_config=(3, 2), num_init_features=6, bn_size=0, compression=1.0, stem="cifar"),
    "imagenet": dict(growth_rate=6, block_config=(2, 2, 2), num_init_features=8, bn_size=2, stem="imagenet"),
}


def _pair(name: str, drop_rate: float = 0.0, dtype: torch.dtype = torch.float64):
    """The reference and the explicit block with identical weights and randomised BN statistics."""
    torch.manual_seed(0)
    config = densenet.DenseNetConfig(**CONFIGS[name], drop_rate=drop_rate, num_classes=5)
    reference = densenet.DenseNet(config.replace(memory_efficient=False))
    randomize_batch_norm(reference)
    ours = densenet.DenseNet(config)
    ours.load_state_dict(reference.state_dict())
    return reference.to(dtype), ours.to(dtype)


def _input(name: str, dtype: torch.dtype, batch: int = 3) -> torch.Tensor:
    side = 32 if CONFIGS[name]["stem"] == "imagenet" else 10
    return (torch.randn(batch, 3, side, side, dtype=dtype) * 2 + 0.5).requires_grad_()


def _step(model, x, seed: int):
    """One forward/backward with a fixed RNG seed (so both implementations draw the same dropout masks)."""
    torch.manual_seed(seed)
    x = x.detach().clone().requires_grad_()
    out = model(x)
    target = torch.arange(out.shape[0]) % out.shape[1]
    torch.nn.functional.cross_entropy(out, target).backward()
    return out.detach(), x.grad


def _compare_runs(name: str, drop_rate: float, dtype: torch.dtype, steps: int = 3):
    """Train both for a few SGD steps; collect each step's worst output/input-gradient/parameter error."""
    reference, ours = _pair(name, drop_rate, dtype)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (reference, ours)]
    x = _input(name, dtype)
    errors = {"output": 0.0, "input_grad": 0.0, "param_grad": 0.0}
    for step in range(steps):
        for optimizer in optimizers:
            optimizer.zero_grad()
        out_ref, grad_ref = _step(reference.train(), x, step)
        out_ours, grad_ours = _step(ours.train(), x, step)
        errors["output"] = max(errors["output"], max_relative_error(out_ours, out_ref))
        errors["input_grad"] = max(errors["input_grad"], max_relative_error(grad_ours, grad_ref))
        if dtype == torch.float64:
            for p_ref, p_ours in zip(reference.parameters(), ours.parameters(), strict=True):
                errors["param_grad"] = max(errors["param_grad"], max_relative_error(p_ours.grad, p_ref.grad))
        else:  # float32: relative L2 over all parameters (elementwise is ill-conditioned through BN)
            g_ref = torch.cat([p.grad.flatten() for p in reference.parameters()])
            g_ours = torch.cat([p.grad.flatten() for p in ours.parameters()])
            errors["param_grad"] = max(errors["param_grad"], ((g_ours - g_ref).norm() / g_ref.norm()).item())
        for optimizer in optimizers:
            optimizer.step()
    return reference, ours, errors


@pytest.mark.parametrize("drop_rate", [0.0, 0.3])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_float64_equals_reference(name, drop_rate):
    """F2 and F2b: outputs, input and parameter gradients of the explicit block equal the reference's in float64
    (≤ 1e-8); with ``drop_rate`` 0.3 through F6 and F6b on the same masks; the models' transitions (F3, F3b)
    and stems run through the recomputing path."""
    reference, ours, errors = _compare_runs(name, drop_rate, torch.float64)
    assert max(errors.values()) <= 1e-8, errors
    buffers_ref = dict(reference.named_buffers())
    for key, buffer in ours.named_buffers():
        if key.endswith("num_batches_tracked"):
            assert buffer.item() == buffers_ref[key].item() == 3, key
        else:
            assert max_relative_error(buffer, buffers_ref[key]) <= 1e-8, key


@pytest.mark.parametrize("drop_rate", [0.0, 0.3])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_float32_equals_reference(name, drop_rate):
    """float32: outputs, the input gradient (max relative error) and the parameter gradients (relative L2) within
    1e-4 of the reference (measured: ≤ 4e-6)."""
    _, _, errors = _compare_runs(name, drop_rate, torch.float32)
    assert errors["output"] <= 1e-4 and errors["input_grad"] <= 1e-4 and errors["param_grad"] <= 1e-4, errors


def test_dropout_masks_differ_between_layers_and_steps():
    """Dropout is live in the explicit block: two seeds give different outputs, the same seed the same."""
    _, ours = _pair("bottleneck", drop_rate=0.3)
    x = _input("bottleneck", torch.float64)
    first, _ = _step(ours.train(), x, 0)
    again, _ = _step(ours.train(), x, 0)
    other, _ = _step(ours.train(), x, 1)
    assert not torch.allclose(first, other)
    assert torch.equal(first, again)  # train-mode output depends on the batch statistics, not the running ones


def test_running_statistics_updated_once_per_forward():
    reference, ours = _pair("bottleneck")
    x = _input("bottleneck", torch.float64)
    with torch.no_grad():
        reference.train()(x)
    ours.train()(x).sum().backward()  # forward and backward: the backward must not touch the statistics
    buffers_ref = dict(reference.named_buffers())
    for key, buffer in ours.named_buffers():
        if key.endswith("num_batches_tracked"):
            assert buffer.item() == 1, key
        else:
            assert max_relative_error(buffer, buffers_ref[key]) <= 1e-12, key


@pytest.mark.parametrize("name", ["bottleneck", "plain"])
def test_eval_mode_gradients(name):
    """Eval mode with gradients (running statistics are constants): input and parameter gradients match."""
    reference, ours = _pair(name)
    x = _input(name, torch.float64)
    out_ref, grad_ref = _step(reference.eval(), x, 0)
    out_ours, grad_ours = _step(ours.eval(), x, 0)
    assert max_relative_error(out_ours, out_ref) <= 1e-10
    assert max_relative_error(grad_ours, grad_ref) <= 1e-10
    for p_ref, p_ours in zip(reference.parameters(), ours.parameters(), strict=True):
        assert max_relative_error(p_ours.grad, p_ref.grad) <= 1e-10


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("train", [False, True])
def test_no_grad_saves_nothing(context, train):
    reference, ours = _pair("bottleneck")
    x = _input("bottleneck", torch.float64).detach()
    packed = []
    with context(), torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        out_ours = ours.train(train)(x)
        out_ref = reference.train(train)(x)
    assert packed == []
    assert max_relative_error(out_ours, out_ref) <= 1e-10


def test_channels_last_input():
    reference, ours = _pair("imagenet")
    x = _input("imagenet", torch.float64).detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    out_ref, grad_ref = _step(reference.train(), x, 0)
    out_ours, grad_ours = _step(ours.to(memory_format=torch.channels_last).train(), x, 0)
    assert max_relative_error(out_ours, out_ref) <= 1e-10
    assert max_relative_error(grad_ours, grad_ref) <= 1e-10


def test_frozen_parameters_and_input_without_grad():
    reference, ours = _pair("bottleneck")
    for model in (reference, ours):
        block = model.features.denseblock1
        block.denselayer2.conv1.weight.requires_grad_(False)
        block.denselayer1.norm1.requires_grad_(False)
        block.denselayer3.norm2.weight.requires_grad_(False)
        model.features.conv0.requires_grad_(False)
    x = _input("bottleneck", torch.float64).detach()  # no input gradient wanted
    for model in (reference, ours):
        torch.manual_seed(0)
        model.train()(x).square().mean().backward()
    for (key, p_ref), p_ours in zip(reference.named_parameters(), ours.parameters(), strict=True):
        if not p_ref.requires_grad:
            assert p_ours.grad is None, key
        else:
            assert max_relative_error(p_ours.grad, p_ref.grad) <= 1e-10, key


def test_gradient_accumulation():
    _, ours = _pair("plain")
    x = _input("plain", torch.float64)
    _step(ours.eval(), x, 0)
    once = [p.grad.clone() for p in ours.parameters()]
    _step(ours.eval(), x, 0)
    for p, g in zip(ours.parameters(), once, strict=True):
        assert torch.allclose(p.grad, 2 * g, rtol=1e-12, atol=0)


@pytest.mark.parametrize(("name", "drop_rate"), [("imagenet", 0.0), ("bottleneck", 0.2), ("plain", 0.0)])
def test_double_backward_gradient_penalty_equals_the_reference(name, drop_rate, monkeypatch, caplog):
    """A gradient penalty (double backward, create_graph=True) through the explicit block, stem and transitions
    gives the reference's gradients in float64, and says once that it differentiates the plain form."""
    monkeypatch.setattr(double_backward, "_announced", set())
    results = []
    for model in _pair(name, drop_rate):
        torch.manual_seed(1)  # the same dropout masks in both
        x = _input(name, torch.float64)
        with caplog.at_level(logging.INFO, logger="densenet"):
            out = model.train()(x)
            (grad_x,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
            penalty = (grad_x.flatten(1).norm(dim=1) - 1).square().mean() + out.mean()
            penalty.backward()
        results.append([grad_x.detach(), x.grad, *(p.grad for p in model.parameters())])
    for ref, got in zip(*results, strict=True):
        assert max_relative_error(got, ref) <= 1e-8
    assert "double backward through the memory-efficient dense block" in caplog.text
    assert ("stem and transitions" in caplog.text) == (name == "imagenet" or len(CONFIGS[name]["block_config"]) > 1)


def test_autocast_bfloat16_cpu():
    """Under CPU autocast the explicit block runs in bfloat16 (BN statistics in float32) and stays as close to
    the float32 result as the reference under the same autocast does (bfloat16 alone costs ~10% of relative L2
    in the gradients of a small network)."""
    torch.manual_seed(0)
    config = densenet.DenseNetConfig(growth_rate=8, block_config=(4, 4), num_init_features=16, num_classes=10,
                                     stem="cifar")
    reference = densenet.DenseNet(config.replace(memory_efficient=False))
    randomize_batch_norm(reference)
    ours = densenet.DenseNet(config)
    ours.load_state_dict(reference.state_dict())
    exact = copy.deepcopy(reference)
    x = torch.randn(8, 3, 16, 16)
    exact_out, _ = _step(exact.train(), x, 0)
    exact_grads = torch.cat([p.grad.flatten() for p in exact.parameters()])
    errors = {}
    for label, model in (("reference", reference), ("ours", ours)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = _step(model.train(), x, 0)
        assert out.dtype == torch.bfloat16
        assert all(p.grad.dtype == torch.float32 for p in model.parameters())
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        errors[label] = (max_relative_error(out.float(), exact_out),
                         ((grads - exact_grads).norm() / exact_grads.norm()).item())
    assert errors["ours"][0] <= 0.05, errors
    assert errors["ours"][1] <= 1.25 * errors["reference"][1] + 0.02, errors


def test_torch_compile_runs_and_matches():
    """torch.compile traces the model with its autograd Functions (the ``aot_eager`` backend: the same Dynamo and
    AOTAutograd capture as the default, without inductor's code generation, ~30 s on CPU). A traced graph runs
    ATen's operations; the eager run it is compared with, the fused kernels or ATen's (``block_kernels``)."""
    _, ours = _pair("plain", dtype=torch.float32)
    x = _input("plain", torch.float32).detach()
    torch._dynamo.reset()  # a fresh capture for each parametrization (block_kernels), not the cached one
    compiled = torch.compile(copy.deepcopy(ours), backend="aot_eager")
    out_eager, _ = _step(ours.eval(), x, 0)
    counters.clear()
    out_compiled, _ = _step(compiled.eval(), x, 0)
    assert counters["aot_autograd"]["ok"] >= 1  # graphs were captured and compiled, not all run eagerly
    assert torch.allclose(out_compiled, out_eager, rtol=1e-5, atol=1e-6)
    for p_eager, p_compiled in zip(ours.parameters(), compiled.parameters(), strict=True):
        assert torch.allclose(p_compiled.grad, p_eager.grad, rtol=1e-4, atol=1e-6)


def test_block_input_gradient_sums_every_later_layer():
    """F2b on a single block: ∂L/∂x_0 collects what every later layer sends back (checked against autograd of
    the reference block on the same weights, in float64, for every block size)."""
    for layers, k in itertools.product((1, 2, 5), (1, 3)):
        torch.manual_seed(layers * 10 + k)
        block = densenet.nn.layers.DenseBlock(layers, 4, k, 2, 0.0).double()
        randomize_batch_norm(block)
        x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
        weights = torch.randn(2, 4 + layers * k, 5, 5, dtype=torch.float64)
        (grad_ours,) = torch.autograd.grad((block(x) * weights).sum(), x)
        (grad_ref,) = torch.autograd.grad((block.reference_forward(x) * weights).sum(), x)
        assert max_relative_error(grad_ours, grad_ref) <= 1e-10
