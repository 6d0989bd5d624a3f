"""bfloat16 on a CPU without oneDNN's bfloat16 (an AVX2 CPU): the deploy paths leave oneDNN for PyTorch's generic
kernels and compute the same function, inference and training say once why it is slow, and ``amp: auto`` trains in
float32 there. Forced here on any CPU by patching the capability test; on such a CPU it is the real case."""

import warnings

import pytest
import torch

import densenet
from densenet import capability
from densenet.cli import main
from densenet.deploy import optimize as optimize_module
from densenet.deploy.optimize import FrozenDenseBlock, optimize_for_inference
from densenet.training.build import check_recipe, with_autocast
from densenet.training.distributed import Context
from densenet.training.engine import train
from densenet.training.recipe import TrainConfig, load_config
from helpers import max_relative_error, randomize_batch_norm


@pytest.fixture
def no_onednn_bfloat16(monkeypatch):
    """This CPU as one without oneDNN's bfloat16 (every caller asks ``densenet.capability``), the once-per-process
    warning re-armed."""
    monkeypatch.setattr(capability, "onednn_bfloat16", lambda: False)
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


@pytest.mark.parametrize("fast, chosen", [(True, "bf16"), (False, "off")])
def test_amp_auto_takes_bfloat16_only_where_this_cpu_computes_it_fast(monkeypatch, fast, chosen):
    monkeypatch.setattr(capability, "onednn_bfloat16", lambda: fast)
    cpu = torch.device("cpu")
    assert with_autocast(TrainConfig(amp="auto"), cpu).amp == chosen
    for amp in ("off", "bf16"):  # a mode the recipe names is kept
        assert with_autocast(TrainConfig(amp=amp), cpu).amp == amp
    assert with_autocast(TrainConfig(amp="auto"), torch.device("meta")).amp == "off"  # no such device to ask


def test_amp_auto_on_such_a_cpu_trains_in_float32_and_records_it(no_onednn_bfloat16, tmp_path):
    """The run says nothing (float32 is not slow) and its config.yaml records ``amp: off``, so a resume keeps it."""
    run = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(TrainConfig(dataset="synthetic", train_limit=16, eval_limit=8, image_size=8, batch_size=8, epochs=1,
                          model_args={"block_config": [1, 1], "growth_rate": 4}, log_every=0, amp="auto",
                          workers=0, out=str(run)))
    assert not [w for w in caught if "bfloat16" in str(w.message)]
    assert load_config(run / "config.yaml").amp == "off"
