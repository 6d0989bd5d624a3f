"""The C++ layer loops — oneDNN's primitives made once (densenet.deploy.onednn_loop) and the TorchScript loop
(densenet.deploy.layer_loop) — compute what the blocks' Python loops compute, bit for bit, in float32, bfloat16
(2-D and 3-D) and int8, for every input shape; a hooked convolution gets its Python loop. Each test runs with
both loops (``layer_loop``)."""

import warnings
from collections.abc import Iterator

import pytest
import torch

import densenet
from densenet.capability import onednn_bfloat16
from densenet.deploy import int8, onednn_loop
from densenet.deploy.int8 import QuantizedDenseBlock
from densenet.deploy.optimize import FrozenDenseBlock, FrozenTransition, Workspace, optimize_for_inference
from densenet.deploy.quantize import quantize
from helpers import max_relative_error, randomize_batch_norm


def block_outputs(model: torch.nn.Module, block_type: type, x: torch.Tensor) -> list[torch.Tensor]:
    """Every dense block's output for input ``x`` (copies: the blocks write into reused workspaces)."""
    outputs = []
    handles = [module.register_forward_hook(lambda _m, _i, out: outputs.append(out.clone()))
               for module in model.modules() if isinstance(module, block_type)]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def python_loop_outputs(model: torch.nn.Module, block_type: type, x: torch.Tensor) -> tuple[list[torch.Tensor], int]:
    """The same with a forward hook on every block's first 1×1 convolution, which sends each block through its Python
    loop; and how often the hooks ran."""
    calls = []
    handles = [module.conv1[0].register_forward_hook(lambda *_: calls.append(1))
               for module in model.modules() if isinstance(module, block_type)]
    try:
        return block_outputs(model, block_type, x), len(calls)
    finally:
        for handle in handles:
            handle.remove()


@pytest.fixture(params=["onednn", "torchscript"])
def layer_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Runs the test with the oneDNN loop (which must have been built: the test fails otherwise) and again with the
    TorchScript loop."""
    monkeypatch.setenv(onednn_loop.SWITCH, "1" if request.param == "onednn" else "0")
    assert onednn_loop.applies(torch.zeros(1, 1)) == (request.param == "onednn"), (
        "the oneDNN layer loop was not built (see the RuntimeWarning)")
    yield request.param


def planned(model: torch.nn.Module, block_type: type) -> bool:
    """Whether every block of ``model`` holds a oneDNN plan (the oneDNN loop ran)."""
    blocks = [module for module in model.modules() if isinstance(module, block_type)]
    return bool(blocks) and all(block.onednn_plans._plans for block in blocks)


def planned_in_onednn(layer_loop: str, dtype: torch.dtype) -> bool:
    """Whether the oneDNN loop serves ``dtype`` here: not where this CPU has no oneDNN bfloat16 (those models run
    their Python loops on PyTorch's generic kernels, and must still match)."""
    return layer_loop == "onednn" and (dtype != torch.bfloat16 or onednn_bfloat16())


NEEDS_ONEDNN_BFLOAT16 = pytest.mark.skipif(not onednn_bfloat16(), reason="this CPU has no oneDNN bfloat16")


def assert_same(compiled: list[torch.Tensor], python: list[torch.Tensor]) -> None:
    assert len(compiled) == len(python) > 0
    for got, expected in zip(compiled, python, strict=True):
        assert got.stride() == expected.stride()
        assert torch.equal(got, expected)


@pytest.mark.parametrize(("spatial_dims", "dtype"), [(2, torch.float32), (2, torch.bfloat16), (3, torch.float32),
                                                   (3, torch.bfloat16)])
def test_float_loop_equals_the_python_loop_for_every_shape(spatial_dims, dtype, layer_loop):
    torch.manual_seed(0)
    model = densenet.create_model("densenet_bc100_k12", spatial_dims=spatial_dims, block_config=(3, 4, 2))
    randomize_batch_norm(model)
    fast = optimize_for_inference(model.eval(), dtype=dtype)
    for batch, side in [(2, 12), (1, 9), (2, 12)]:  # a new shape repacks; the first shape's plan is reused after
        x = torch.randn(batch, 3, *[side] * spatial_dims)
        python, hook_calls = python_loop_outputs(fast, FrozenDenseBlock, x)
        assert hook_calls == 3  # one per block: the hooked blocks ran their Python loop
        assert_same(block_outputs(fast, FrozenDenseBlock, x), python)
    assert planned(fast, FrozenDenseBlock) == planned_in_onednn(layer_loop, dtype)


def test_a_global_forward_hook_also_gets_the_python_loop():
    torch.manual_seed(0)
    fast = optimize_for_inference(densenet.create_model("densenet_bc100_k12", block_config=(2, 2, 2)).eval())
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, _i, _o: seen.append(type(module).__name__))
    try:
        with torch.inference_mode():
            fast(torch.randn(1, 3, 8, 8))
    finally:
        handle.remove()
    assert seen.count("FrozenConv") == 1 + 3 * 2 * 2 + 2  # stem, two per layer, one per transition


@pytest.mark.skipif(not int8.int8_supported(), reason="this CPU has no AVX-512 VNNI / AVX-VNNI / AMX")
def test_int8_loop_equals_the_python_loop_for_every_shape(layer_loop):
    torch.manual_seed(0)
    model = densenet.create_model("densenet_bc100_k12", block_config=(3, 4, 2)).eval()
    randomize_batch_norm(model)
    quantized = quantize(model, [torch.randn(32, 3, 16, 16)], observer="minmax")
    for batch, side in [(2, 16), (1, 12), (2, 16)]:
        x = torch.randn(batch, 3, side, side)
        python, hook_calls = python_loop_outputs(quantized, QuantizedDenseBlock, x)
        assert hook_calls == 3
        assert_same(block_outputs(quantized, QuantizedDenseBlock, x), python)
    assert planned(quantized, QuantizedDenseBlock) == (layer_loop == "onednn")


def test_an_unavailable_onednn_loop_warns_once_and_leaves_the_torchscript_loop(monkeypatch):
    def missing() -> None:
        raise RuntimeError("onednn-cpu-gomp is not installed (pip install onednn-cpu-gomp onednn-devel-cpu-gomp)\n…")

    monkeypatch.setattr(onednn_loop, "_build", missing)
    monkeypatch.setattr(onednn_loop, "_module", None)
    monkeypatch.setattr(onednn_loop.platform, "system", lambda: "Linux")
    monkeypatch.setattr(onednn_loop.platform, "machine", lambda: "x86_64")
    with pytest.warns(RuntimeWarning, match=r"oneDNN layer loop is unavailable \(onednn-cpu-gomp is not installed"):
        assert not onednn_loop.applies(torch.zeros(1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not onednn_loop.applies(torch.zeros(1, 1))  # decided once: no second attempt, no second warning
    torch.manual_seed(0)
    model = densenet.create_model("densenet_bc100_k12", block_config=(2, 2, 2)).eval()
    fast = optimize_for_inference(model)
    x = torch.randn(1, 3, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(fast(x), model(x), atol=1e-5)
    assert not planned(fast, FrozenDenseBlock)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_stem_and_transitions_on_onednn_match_the_model_at_odd_sizes(dtype, layer_loop):
    """The stem's conv (7×7, stride 2, padding 3) and max pool (3, 2, 1) planned in oneDNN keep PyTorch's floor rule
    for the output size at odd sides, and the model's function; so do the transitions (clamp, 2×2 average pool,
    1×1 conv; planned for even sides, PyTorch's operators at odd ones)."""
    torch.manual_seed(0)
    model = densenet.create_model("densenet121", block_config=(2, 2, 2, 2), num_classes=7).eval()
    randomize_batch_norm(model)
    fast = optimize_for_inference(model, dtype=dtype)
    for shape in [(2, 3, 64, 64), (1, 3, 45, 53), (2, 3, 64, 64)]:
        x = torch.randn(shape)
        with torch.inference_mode():
            expected = model(x)
            got = fast(x)
            features = fast.forward_features(x.to(dtype))
        assert features.shape[2:] == model.features(x).shape[2:]
        assert max_relative_error(got.float(), expected) <= (1e-4 if dtype == torch.float32 else 3e-2)
    assert bool(fast.onednn_plans._plans) == planned_in_onednn(layer_loop, dtype)
    assert planned(fast, FrozenTransition) == planned_in_onednn(layer_loop, dtype)


@pytest.mark.skipif(not int8.int8_supported(), reason="this CPU has no AVX-512 VNNI / AVX-VNNI / AMX")
def test_int8_stem_and_transitions_on_onednn_give_pytorchs_codes(monkeypatch):
    """The int8 stem (the image encoded, the int8 conv subtracting the image's zero point, the max pool on codes)
    and the int8 transitions (clamp, 2×2 average of codes rounded half to even, 1×1 conv) planned in oneDNN give
    the codes of PyTorch's operators: at most one code apart (a requantized value on a tie), and rarely."""
    torch.manual_seed(0)
    model = densenet.create_model("densenet121", block_config=(2, 2, 2, 2), num_classes=7).eval()
    randomize_batch_norm(model)
    quantized = quantize(model, [torch.randn(32, 3, 64, 64)], observer="minmax")
    x = torch.randn(2, 3, 64, 64) * 1.5
    transitions = [stage for stage in quantized.stages if isinstance(stage, int8.QuantizedTransition)]
    outputs = {}
    for mode in ("1", "0"):
        monkeypatch.setenv(onednn_loop.SWITCH, mode)
        with torch.inference_mode():
            codes = [quantized.stem(x).clone()]
            for stage in quantized.stages:
                codes.append(stage(codes[-1]).clone())
            outputs[mode] = [codes[0]] + [codes[i + 1] for i, s in enumerate(quantized.stages) if s in transitions]
    for native, pytorch in zip(outputs["1"], outputs["0"], strict=True):
        difference = (native.int() - pytorch.int()).abs()
        assert difference.max() <= 1 and (difference > 0).float().mean() <= 1e-3
        assert native.stride() == pytorch.stride()
    assert quantized.stem.onednn_plans._plans and all(stage.onednn_plans._plans for stage in transitions)


@pytest.mark.parametrize(("dtype", "spatial"), [(torch.float32, (5, 7)), (torch.bfloat16, (3, 4)),
                                                (torch.uint8, (7, 7)), (torch.float32, (2, 3, 4))])
def test_the_one_pass_head_is_the_bn_relu_then_the_mean(dtype, spatial):
    """``(1/S) Σ_s σ(a·x + b)`` per channel, against the float64 formula, for channels-last maps of every dtype the
    plans produce (u8 codes with their code folded into ``a``, ``b``)."""
    torch.manual_seed(0)
    shape = (3, 40, *spatial)
    x = torch.randint(0, 256, shape, dtype=torch.uint8) if dtype == torch.uint8 else torch.randn(shape).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last if len(spatial) == 2 else torch.channels_last_3d)
    scale, shift = torch.randn(40) * (0.05 if dtype == torch.uint8 else 1.0), torch.randn(40)
    expected = torch.relu(x.double() * scale.double().view(40, *[1] * len(spatial))
                          + shift.double().view(40, *[1] * len(spatial))).mean(dim=tuple(range(2, x.dim())))
    got = onednn_loop.pooled_features(x, scale, shift)
    assert got.dtype == torch.float32 and got.shape == (3, 40)
    assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=NEEDS_ONEDNN_BFLOAT16)])
def test_the_one_call_head_is_the_pooled_features_then_the_classifier(dtype):
    """``W·p + b`` of the pooled features in one call, against the float64 formula (bf16: the features rounded to
    bf16 and the logits written in bf16, as PyTorch's bf16 linear); a classifier changed in place or replaced is
    followed; a hooked classifier, or one that is not an ``nn.Linear``, is called on the pooled features."""
    torch.manual_seed(0)
    x = torch.randn(2, 48, 3, 5).to(dtype).contiguous(memory_format=torch.channels_last)
    scale, shift = torch.randn(48), torch.randn(48)
    classifier = torch.nn.Linear(48, 7).to(dtype)
    plans, workspace = onednn_loop.PlanCache(), Workspace()

    def expected() -> torch.Tensor:
        pooled = onednn_loop.pooled_features(x, scale, shift).to(dtype).double()
        return pooled @ classifier.weight.double().T + classifier.bias.double()

    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    with torch.inference_mode():
        got = onednn_loop.classify(x, scale, shift, classifier, dtype, plans, workspace)
        assert got.dtype == dtype and got.shape == (2, 7)
        assert torch.allclose(got.double(), expected(), rtol=tolerance, atol=tolerance)
    with torch.no_grad():
        classifier.weight.mul_(-1.0)  # in place: seen by the version counter
    with torch.inference_mode():
        assert torch.allclose(onednn_loop.classify(x, scale, shift, classifier, dtype, plans, workspace).double(),
                              expected(), rtol=tolerance, atol=tolerance)
    classifier.weight = torch.nn.Parameter(classifier.weight.detach() * 3)  # replaced
    with torch.inference_mode():
        assert torch.allclose(onednn_loop.classify(x, scale, shift, classifier, dtype, plans, workspace).double(),
                              expected(), rtol=tolerance, atol=tolerance)
        calls = []
        handle = classifier.register_forward_hook(lambda *_: calls.append(1))
        hooked_logits = onednn_loop.classify(x, scale, shift, classifier, dtype, plans, workspace)
        wrapped = onednn_loop.classify(x, scale, shift, torch.nn.Sequential(classifier), dtype, plans, workspace)
        handle.remove()
        assert calls == [1, 1]  # both called, not bypassed
        for logits in (hooked_logits, wrapped):
            assert torch.allclose(logits.double(), expected(), rtol=tolerance, atol=tolerance)
