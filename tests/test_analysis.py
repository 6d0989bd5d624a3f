"""Closed-form analysis against torchvision's published MACs and against counts taken from real models."""

import itertools

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import densenet
from densenet.analysis import output_size, summarize

# torchvision's published GFLOPS (conv + linear multiply-accumulates at 224×224), at their precision.
PUBLISHED_GMACS = {"densenet121": "2.834", "densenet161": "7.728", "densenet169": "3.36", "densenet201": "4.291"}


@pytest.mark.parametrize("name", sorted(PUBLISHED_GMACS))
def test_macs_equal_torchvision_published(name):
    published = PUBLISHED_GMACS[name]
    decimals = len(published.split(".")[1])
    macs = summarize(densenet.get_config(name), 224).macs
    assert f"{macs / 1e9:.{decimals}f}" == published


def _executed_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of the convolutions and matrix products the forward pass actually runs, counted by
    torch's FLOP counter at the aten level (it counts 2 FLOPs per multiply-accumulate)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("memory_efficient", [True, False])
@pytest.mark.parametrize(("name", "side"), [("densenet121", 224), ("densenet121", 97), ("densenet_bc100_k12", 32),
                                            ("densenet40_k12", 35)])
def test_executed_macs_equal_counted(name, side, memory_efficient):
    model = densenet.create_model(name, memory_efficient=memory_efficient)
    assert summarize(model.config, side).macs_executed == _executed_macs(model, torch.randn(1, 3, side, side))


def test_output_size_formula():
    """F9 at the ImageNet stem's sizes and where the division floors."""
    # ⌊(W − K + 2P)/S⌋ + 1: 224 through the 7×7/2 pad-3 conv is 112, through the 3×3/2 pad-1 max-pool 56.
    assert output_size(224, 7, 2, 3) == 112
    assert output_size(112, 3, 2, 1) == 56
    assert output_size(7, 2, 2) == 3


def test_too_small_input_rejected():
    with pytest.raises(ValueError, match="at least 29"):
        summarize(densenet.get_config("densenet121"), 28)


def saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd saves for backward in one forward pass (parameters and
    BN running statistics excluded), measured with saved-tensor hooks."""
    skip = {t.untyped_storage().data_ptr() for t in itertools.chain(model.parameters(), model.buffers())}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x)
    return sum(seen.values())


@pytest.mark.parametrize("memory_efficient", [False, True])
@pytest.mark.parametrize(("stem", "bn_size", "drop_rate", "num_classes", "side"),
                         [("imagenet", 4, 0.0, 5, 37), ("imagenet", 0, 0.2, 0, 32), ("cifar", 4, 0.2, 5, 32),
                          ("cifar", 0, 0.0, 5, 19)])
def test_activation_memory_equals_measured(memory_efficient, stem, bn_size, drop_rate, num_classes, side):
    config = densenet.DenseNetConfig(growth_rate=4, block_config=(2, 3), num_init_features=8, stem=stem,
                                     bn_size=bn_size, drop_rate=drop_rate, num_classes=num_classes,
                                     memory_efficient=memory_efficient)
    model = densenet.DenseNet(config).train()
    measured = saved_activation_bytes(model, torch.randn(3, 3, side, side))
    memory = summarize(config, side, batch_size=3).activation_memory
    assert (memory.memory_efficient if memory_efficient else memory.reference) == measured


def test_explicit_block_memory_is_linear_in_depth():
    """Saved bytes of the explicit block grow by the same amount for each added layer; the reference's growth
    itself grows (quadratic)."""
    def saved(layers: int, memory_efficient: bool) -> int:
        config = densenet.DenseNetConfig(growth_rate=4, block_config=(layers,), num_init_features=8, stem="cifar",
                                         num_classes=3, memory_efficient=memory_efficient)
        return saved_activation_bytes(densenet.DenseNet(config).train(), torch.randn(2, 3, 8, 8))

    ours = [saved(layers, True) for layers in (4, 8, 12)]
    reference = [saved(layers, False) for layers in (4, 8, 12)]
    assert ours[2] - ours[1] == ours[1] - ours[0]
    assert reference[2] - reference[1] > reference[1] - reference[0]


def test_summary_dict_is_complete():
    data = summarize(densenet.get_config("densenet121")).to_dict()
    names = [row["name"] for row in data["rows"]]
    assert names == ["Input", "Conv1", "Pool1", "Dense Block 1", "Transition 1", "Dense Block 2", "Transition 2",
                     "Dense Block 3", "Transition 3", "Dense Block 4", "Final BN-ReLU", "Global Avg Pool",
                     "Fully Connected", "Softmax"]
    assert len(data["rows"][3]["children"]) == 6
    assert data["rows"][1]["param_formula"] == "7·7·3·64 + BN 2·64 = 9,536"
    assert data["totals"]["params"] == 7_978_856


ND_CONFIGS = [dict(stem="imagenet", bn_size=4, drop_rate=0.0, num_classes=5),
              dict(stem="cifar", bn_size=0, drop_rate=0.2, num_classes=0)]
ND_SIDES = {1: 45, 3: 11}


@pytest.mark.parametrize("memory_efficient", [False, True])
@pytest.mark.parametrize("dims", [1, 3])
@pytest.mark.parametrize("overrides", ND_CONFIGS, ids=["imagenet", "cifar"])
def test_summary_equals_counted_in_1d_and_3d(overrides, dims, memory_efficient):
    """In 1D and 3D: parameters (F8 with K^d) equal the model's, every row's output shape the map the model
    produces there, executed MACs the FLOP counter's, activation memory the bytes autograd saves."""
    config = densenet.DenseNetConfig(growth_rate=4, block_config=(2, 3), num_init_features=8, spatial_dims=dims,
                                     memory_efficient=memory_efficient, **overrides)
    side = ND_SIDES[dims]
    summary = summarize(config, side, batch_size=2)
    model = densenet.DenseNet(config)
    assert summary.params == sum(p.numel() for p in model.parameters())
    assert summary.bn_buffers == sum(b.numel() for b in model.buffers())
    x = torch.randn(2, 3, *[side] * dims)
    assert summary.macs_executed == _executed_macs(model, x[:1])
    shapes = {}
    hooks = [module.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
             for name, module in model.features.named_children()]
    model.eval()(x)
    for hook in hooks:
        hook.remove()
    rows = {row.name: row.output_shape for row in summary.rows}
    stem = "pool0" if config.stem == "imagenet" else "conv0"
    assert rows["Pool1" if config.stem == "imagenet" else "Conv1"] == shapes[stem]
    assert rows["Dense Block 1"] == shapes["denseblock1"] and rows["Transition 1"] == shapes["transition1"]
    assert rows["Dense Block 2"] == shapes["denseblock2"] and rows["Final BN-ReLU"] == shapes["norm5"]
    measured = saved_activation_bytes(model.train(), x)
    memory = summary.activation_memory
    assert (memory.memory_efficient if memory_efficient else memory.reference) == measured


def test_summary_formulas_use_k_to_the_d():
    rows = {d: {row.name: row for row in summarize(densenet.get_config("densenet121", spatial_dims=d), 64).rows}
            for d in (1, 2, 3)}
    assert rows[3]["Conv1"].param_formula == "7·7·7·3·64 + BN 2·64 = 65,984"
    assert rows[1]["Conv1"].param_formula == "7·3·64 + BN 2·64 = 1,472"
    assert rows[3]["Conv1"].output_shape == (64, 32, 32, 32) and rows[1]["Pool1"].output_shape == (64, 16)
    assert rows[3]["Dense Block 1"].kernel == "[1×1×1, 3×3×3] × 6"
    assert rows[3]["Transition 1"].kernel == "1×1×1 conv, 2×2×2 avg"
