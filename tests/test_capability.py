"""bfloat16 on a CPU without oneDNN's bfloat16 (an AVX2 CPU): the deploy paths leave oneDNN for PyTorch's generic
kernels and compute the same function, and inference and training say once why it is slow. Forced here on any CPU
by patching the capability test; on such a CPU it is the real case."""

import warnings

import pytest
import torch

import densenet
from densenet import capability
from densenet.cli import main
from densenet.deploy import onednn_loop
from densenet.deploy import optimize as optimize_module
from densenet.deploy.optimize import FrozenDenseBlock, optimize_for_inference
from densenet.training.build import check_recipe
from densenet.training.distributed import Context
from densenet.training.recipe import TrainConfig
from helpers import max_relative_error, randomize_batch_norm


@pytest.fixture
def no_onednn_bfloat16(monkeypatch):
    """This CPU as one without oneDNN's bfloat16, the once-per-process warning re-armed."""
    for module in (capability, optimize_module, onednn_loop):
        monkeypatch.setattr(module, "onednn_bfloat16", lambda: False)
    capability.warn_slow_bfloat16.cache_clear()
    yield
    capability.warn_slow_bfloat16.cache_clear()


def test_bfloat16_inference_leaves_onednn_keeps_the_function_and_says_why_once(no_onednn_bfloat16):
    torch.manual_seed(0)
    model = densenet.create_model("densenet121", block_config=(2, 2, 2, 2), num_classes=5).eval()
    randomize_batch_norm(model)
    with pytest.warns(RuntimeWarning, match="no bfloat16 instructions oneDNN uses"):
        fast = optimize_for_inference(model, dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimize_for_inference(model, dtype=torch.bfloat16)  # once per process
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected, got = model(x), fast(x)
    assert got.dtype == torch.float32 and max_relative_error(got, expected) <= 3e-2
    assert not fast.onednn_plans._plans  # no oneDNN plan was made (on such a CPU one cannot be)
    assert not any(block.onednn_plans._plans for block in fast.modules() if isinstance(block, FrozenDenseBlock))
    assert not any(conv._packed for conv in fast.modules() if isinstance(conv, optimize_module.FrozenConv))


def test_float32_inference_says_nothing(no_onednn_bfloat16):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimize_for_inference(densenet.create_model("densenet_bc100_k12", block_config=(1, 1, 1)).eval())


def test_bfloat16_training_on_such_a_cpu_says_why_it_is_slow(no_onednn_bfloat16):
    context = Context(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with pytest.warns(RuntimeWarning, match="float32 is the faster choice here"):
        check_recipe(TrainConfig(dataset="digits", amp="bf16", keep_freed_memory=False), context)
    capability.warn_slow_bfloat16.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_recipe(TrainConfig(dataset="digits", amp="off", keep_freed_memory=False), context)



def test_the_command_line_shows_the_warning_as_one_line(no_onednn_bfloat16, tmp_path, capsys):
    """``densenet train --amp bf16`` on such a CPU: the warning is one ``densenet train: warning: …`` line on stderr,
    not Python's two lines quoting the source that warned; the process's warning display is back afterwards."""
    shown_before = warnings.showwarning
    code = main(["train", "--dataset", "synthetic", "--train-limit", "8", "--eval-limit", "8", "--image-size", "16",
                 "--epochs", "1", "--batch-size", "8", "--amp", "bf16", "--model-arg", "block_config=[1,1]",
                 "--model-arg", "growth_rate=4", "--log-every", "0", "--out", str(tmp_path / "run")])
    assert code == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line.lower()]
    assert len(warned) == 1, warned
    assert warned[0].startswith("densenet train: warning: this CPU has no bfloat16 instructions")
    assert warned[0].endswith("float32 is the faster choice here")
    assert warnings.showwarning is shown_before
