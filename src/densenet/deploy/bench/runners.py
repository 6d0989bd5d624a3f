"""What ``densenet bench`` times: one runner per configuration, each running one batch on the same weights.

Inference: ours (:func:`~densenet.deploy.optimize.optimize_for_inference`), torchvision's DenseNet with the same
weights (contiguous and channels-last), and with ``onnx`` both models' ONNX exports under ONNX Runtime. Training: one
SGD step of ours and of torchvision's. An inference runner returns the batch's logits, so the configurations can be
compared value for value; a training runner returns nothing.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from densenet.analysis import Summary, summarize
from densenet.config import DenseNetConfig
from densenet.deploy.bench import peers as peers_module
from densenet.deploy.optimize import optimize_for_inference
from densenet.deploy.quantize import is_quantized
from densenet.deploy.runtime import onnx_feed, onnx_session
from densenet.model import DenseNet
from densenet.registry import create_model, get_config
from densenet.weights import from_pretrained, read_pretrained_config

Runner = Callable[[], Any]
Runners = dict[str, tuple[Runner, int]]  # label → (run one batch, MACs per image)
M = TypeVar("M", bound=nn.Module)
NO_TORCHVISION = "torchvision is not installed: measuring ours alone"
NO_TWIN = "torchvision's DenseNet cannot express this architecture ({}): measuring ours alone"
NO_ONNXRUNTIME = "onnxruntime is not installed (pip install 'densenet[export]'): no ONNX comparison"


def is_weights_directory(name: str) -> bool:
    """Whether ``densenet bench``'s model argument names a weights directory rather than a registered model."""
    return Path(name).is_dir()


def bench_config(name: str, spatial_dims: int = 2) -> DenseNetConfig:
    """The architecture ``densenet bench`` times: a registered model's in ``spatial_dims``, or a weights directory's
    ``config.json``.

    Raises:
        ValueError: an unknown name, an invalid directory, or a directory whose network has other spatial dimensions.
    """
    if not is_weights_directory(name):
        return get_config(name, spatial_dims=spatial_dims)
    config, _ = read_pretrained_config(name)
    if config.spatial_dims != spatial_dims:
        raise ValueError(f"{name} holds a network with spatial_dims {config.spatial_dims}; "
                         f"pass --spatial-dims {config.spatial_dims}")
    return config


def bench_model(name: str, spatial_dims: int = 2) -> DenseNet:
    """The float32 network every configuration runs: a registered model in ``spatial_dims`` with
    :func:`trained_like` weights, or the weights saved in directory ``name`` (``save_pretrained``, or ``densenet
    quantize``'s: its float32 weights)."""
    if is_weights_directory(name):
        bench_config(name, spatial_dims)  # its dimensions are the ones asked for
        return from_pretrained(name).float().eval()
    return trained_like(create_model(name, spatial_dims=spatial_dims))


def bench_input(config: DenseNetConfig, batch: int, input_size: int) -> torch.Tensor:
    """The batch every configuration runs: ``(batch, in_chans, *[input_size] * d)`` standard normal, seeded."""
    shape = (batch, config.in_chans, *[input_size] * config.spatial_dims)
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def trained_like(model: M, seed: int = 0) -> M:
    """``model`` with every batch norm's ``γ, β`` and running statistics drawn at random, as in a trained network.

    Fresh batch norms are all alike (``γ = 1, β = 0, μ = 0, σ² = 1``), and the ONNX exporter merges alike BN-ReLUs
    that read the same tensor: timed with fresh batch norms, our ONNX export (:mod:`densenet.deploy.onnx_graph`)
    would run faster than it does with a trained network's weights (benchmarks/NOTES.md). ``γ`` is drawn positive,
    as most of a trained network's are.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):  # BatchNorm1d/2d/3d
                shape = module.weight.shape
                module.weight.copy_(torch.rand(shape, generator=generator) + 0.5)  # γ ~ U[0.5, 1.5)
                module.bias.copy_(torch.randn(shape, generator=generator) * 0.1)  # β ~ N(0, 0.1²)
                module.running_mean.copy_(torch.randn(shape, generator=generator) * 0.1)  # μ ~ N(0, 0.1²)
                module.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)  # σ² ~ U[0.5, 1.5)
    return model


def no_twin_reason(model: DenseNet) -> str | None:
    """Why :func:`torchvision_twin` has no twin for ``model`` (torchvision missing, or which of the architecture's
    features it cannot express), or None when it has one."""
    if importlib.util.find_spec("torchvision") is None:
        return NO_TORCHVISION
    config = model.config
    reasons = [text for failed, text in ((config.stem != "imagenet", f"{config.stem} stem"),
                                         (not config.bottleneck, "no bottleneck"),
                                         (config.compression != 0.5, f"compression {config.compression}"),
                                         (config.in_chans != 3, f"{config.in_chans} input channels"),
                                         (config.spatial_dims != 2, f"{config.spatial_dims}-D")) if failed]
    return NO_TWIN.format(", ".join(reasons)) if reasons else None


def torchvision_twin(model: DenseNet) -> nn.Module | None:
    """torchvision's DenseNet with ``model``'s weights, or None when torchvision is missing or cannot express the
    architecture (CIFAR stem, no bottleneck, compression other than ½, other input channels): :func:`no_twin_reason`
    says which."""
    if no_twin_reason(model) is not None:
        return None
    config = model.config
    import torchvision

    twin = torchvision.models.DenseNet(config.growth_rate, config.block_config, config.num_init_features,
                                       config.bn_size, config.drop_rate, config.num_classes or 1000)
    twin.load_state_dict(model.state_dict())
    return twin


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor) -> Runner:
    """One training step of ``model`` on ``(x, target)``: forward, cross-entropy, backward, optimizer step."""
    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def build_runners(name: str, batch: int, input_size: int, train: bool, onnx: bool, threads: int,
                  workdir: Path, only: str | None = None, dtypes: tuple[str, ...] = ("float32",),
                  peers: tuple[str, ...] = (), spatial_dims: int = 2) -> tuple[Runners, list[str]]:
    """The configurations to time: ``label → (run one batch, MACs per image)``, and notes for the user.

    Every configuration runs the same weights (:func:`bench_model`: the registered model ``name`` with
    :func:`trained_like` weights, or the weights directory ``name``; an int8 directory's ``ours-int8`` is its own
    saved calibration) on the same seeded batch ``(batch, in_chans, *[input_size] * spatial_dims)``. ``only`` builds
    that one configuration's runner alone (what a child process measures); the model, its summary and the
    torchvision twin it is compared with are built first either way, so every child starts from the same heap. The
    ONNX files are exported into ``workdir`` once: a file already there is reused, so children time the parent's
    exports — ``workdir`` must belong to this one measurement (:func:`~densenet.deploy.bench.run_bench` makes a
    temporary one). ``dtypes`` and ``peers``: ours in each dtype and the other runtimes in the same dtypes
    (:mod:`~densenet.deploy.bench.peers`; float32 is ``ours`` and torchvision's twin, as without them);
    ``onnxruntime`` among the peers implies ``onnx``. ``spatial_dims``: the model built for signals (1) or volumes
    (3); torchvision has no twin for it.
    """
    def wanted(label: str) -> bool:
        return only is None or label == only

    torch.manual_seed(0)
    model = bench_model(name, spatial_dims)
    quantized = name if is_weights_directory(name) and is_quantized(name) else None
    summary = summarize(model.config, input_size)
    twin = torchvision_twin(model)
    notes = [reason] if (reason := no_twin_reason(model)) is not None else []
    x = bench_input(model.config, batch, input_size)
    if train:
        return _train_runners(model, twin, summary, x, wanted), notes
    float32 = "float32" in dtypes
    runners = _inference_runners(model, twin if float32 else None, summary, x,
                                 lambda label: wanted(label) and (float32 or label != "ours"))
    calibration = peers_module.bench_calibration(x)
    _add(runners, notes, summary, *peers_module.ours_runners(model, x, dtypes, calibration, wanted, quantized))
    if "openvino" in peers:
        _add(runners, notes, summary, *peers_module.openvino_runners(model, x, dtypes, calibration, threads, wanted))
    if onnx or "onnxruntime" in peers:
        if importlib.util.find_spec("onnxruntime") is None:
            notes.append(NO_ONNXRUNTIME)
            return runners, notes
        if float32:
            runners.update(_onnx_runners(model, twin, summary, x, threads, workdir, wanted))
        if "onnxruntime" in peers:
            _add(runners, notes, summary, *peers_module.onnxruntime_runners(model, x, dtypes, calibration, threads,
                                                                            workdir, wanted, quantized))
    return runners, notes


def _add(runners: Runners, notes: list[str], summary: Summary, built: dict[str, Runner], more: list[str]) -> None:
    """Add ``built`` with each label's MACs, and ``more`` notes."""
    runners.update({label: (run, peers_module.macs_of(label, summary)) for label, run in built.items()})
    notes += more


def _train_runners(model: DenseNet, twin: nn.Module | None, summary: Summary, x: torch.Tensor,
                   wanted: Callable[[str], bool]) -> Runners:
    """One SGD step each; a training step counts 3× the forward's MACs (forward, input and weight gradients)."""
    target = torch.randint(0, max(model.config.num_classes, 1), (x.shape[0],))
    models = {"ours": (model.train(), summary.macs_executed)}
    if twin is not None:
        models["torchvision"] = (twin.train(), summary.macs)
    runners: Runners = {}
    for label, (net, macs) in models.items():
        if wanted(label):
            optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
            runners[label] = (train_step(net, optimizer, x, target), 3 * macs)
    return runners


def _inference_runners(model: DenseNet, twin: nn.Module | None, summary: Summary, x: torch.Tensor,
                       wanted: Callable[[str], bool]) -> Runners:
    """Ours optimized (pool-first transitions: ``macs_executed``), torchvision's in both memory formats."""
    runners: Runners = {}
    if wanted("ours"):
        runners["ours"] = (_no_grad(optimize_for_inference(model.eval()), x), summary.macs_executed)
    if twin is not None:
        if wanted("torchvision"):
            runners["torchvision"] = (_no_grad(twin.eval(), x), summary.macs)
        if wanted("torchvision-channels-last"):
            twin_cl = torchvision_twin(model).eval().to(memory_format=torch.channels_last)
            runners["torchvision-channels-last"] = (
                _no_grad(twin_cl, x.contiguous(memory_format=torch.channels_last)), summary.macs)
    return runners


def _onnx_runners(model: DenseNet, twin: nn.Module | None, summary: Summary, x: torch.Tensor, threads: int,
                  workdir: Path, wanted: Callable[[str], bool]) -> Runners:
    """Our export (:func:`~densenet.deploy.export.export_model`) and torchvision's, each under ONNX Runtime."""
    from densenet.deploy.export import export_model

    runners: Runners = {}
    ours_path = workdir / "ours.onnx"
    if wanted("onnxruntime-ours"):
        if not ours_path.exists():
            export_model(model, "onnx", ours_path, input_size=x.shape[-1], threads=threads)
        runners["onnxruntime-ours"] = (_onnx_runner(ours_path, x, threads), summary.macs_executed)
    twin_path = workdir / "torchvision.onnx"
    if twin is not None and wanted("onnxruntime-torchvision"):
        if not twin_path.exists():
            _export_torchvision_onnx(twin, x, twin_path)
        runners["onnxruntime-torchvision"] = (_onnx_runner(twin_path, x, threads), summary.macs)
    return runners


def _no_grad(model: nn.Module, x: torch.Tensor) -> Runner:
    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)
    return run


def _onnx_runner(path: Path, x: torch.Tensor, threads: int) -> Runner:
    session = onnx_session(path, threads)
    feed = onnx_feed(session, x)  # converted once, outside the timed call
    return lambda: torch.from_numpy(session.run(None, feed)[0])


def _export_torchvision_onnx(twin: nn.Module, x: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(twin.eval(), (x[:2],), dynamo=True, input_names=["image"],
                                    dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
                                    verbose=False)
    program.save(str(path))
