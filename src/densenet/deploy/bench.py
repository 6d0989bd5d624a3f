"""Side-by-side speed and memory: ours against torchvision's DenseNet with identical weights (``densenet bench``).

Timing: every configuration is built in one process and timed in turn, round after round (interleaved), so a
change of machine load hits all alike; after warm-up rounds, the median time per batch gives images per second
and latency. With ``isolated`` each configuration is instead timed in fresh processes of its own (the way it runs
when deployed), the processes taking turns over a few passes: in one shared process a model's speed depends on
what the others left in the heap — measured, torchvision's channels-last densenet121 faults in ~30,000 fresh pages
per batch in a process of its own and ~6,000 in one that also holds onnxruntime sessions (~340 vs ~300 ms). The
minor page faults of each run are counted in both modes. Peak memory: each configuration runs once more in a fresh
child process, which reports its resident-set high-water mark above the baseline it had before the run.
Achieved GFLOP/s (2 FLOPs per multiply-accumulate actually executed; training counts 3× the forward) is shown next
to the machine's measured float32 matrix-multiply peak, the physical ceiling for these convolutions.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

try:
    import resource  # Unix only: page-fault counts
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

import torch
from torch import nn

from densenet.analysis import summarize
from densenet.deploy.optimize import optimize_for_inference
from densenet.model import DenseNet, check_batch_statistics
from densenet.registry import create_model, get_config

Runner = Callable[[], Any]
M = TypeVar("M", bound=nn.Module)
# idle time before each timed run; measured: an onnxruntime session right after a PyTorch run was 7% slower
SETTLE_SECONDS = 0.1
# isolated timing: each configuration's rounds are split over this many fresh processes, taking turns with the others'
ISOLATED_PASSES = 3


@dataclass
class Measurement:
    """One configuration's numbers."""

    label: str
    images_per_second: float
    latency_ms: float
    gflops: float
    peak_memory_mib: float | None
    macs_per_image: int
    times_ms: list[float]
    minor_faults_per_batch: float | None  # median over the timed runs; None where it cannot be counted


@dataclass
class Timings:
    """Per configuration: seconds per batch, and minor page faults per batch (empty lists where not countable)."""

    seconds: dict[str, list[float]]
    minor_faults: dict[str, list[int]]

    @classmethod
    def for_labels(cls, labels: list[str]) -> Timings:
        """Empty lists for each configuration, to be filled run by run."""
        return cls({label: [] for label in labels}, {label: [] for label in labels})


def matmul_peak_gflops(threads: int, size: int = 4096, repeats: int = 3) -> float:
    """Measured float32 ``size×size`` matrix-multiply throughput with ``threads`` threads (the ceiling)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    seconds = (time.perf_counter() - start) / repeats
    torch.set_num_threads(previous)
    return 2 * size**3 / seconds / 1e9


def torchvision_twin(model: DenseNet) -> nn.Module | None:
    """torchvision's DenseNet with ``model``'s weights, or None when torchvision is missing or cannot express the
    architecture (CIFAR stem, no bottleneck, compression other than ½, other input channels)."""
    if importlib.util.find_spec("torchvision") is None:
        return None
    config = model.config
    if config.stem != "imagenet" or not config.bottleneck or config.compression != 0.5 or config.in_chans != 3:
        return None
    import torchvision

    twin = torchvision.models.DenseNet(config.growth_rate, config.block_config, config.num_init_features,
                                       config.bn_size, config.drop_rate, config.num_classes or 1000)
    twin.load_state_dict(model.state_dict())
    return twin


def _onnx_session(path: Path, threads: int) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # onnxruntime's threads otherwise spin-wait after each run and steal the cores from the next configuration
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _onnx_runner(session: Any, x: torch.Tensor) -> Runner:
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def _export_torchvision_onnx(twin: nn.Module, x: torch.Tensor, path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(twin.eval(), (x[:2],), dynamo=True, input_names=["image"],
                                    dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
                                    verbose=False)
    program.save(str(path))


def trained_like(model: M, seed: int = 0) -> M:
    """``model`` with every batch norm's ``γ, β`` and running statistics drawn at random, as in a trained network.

    Fresh batch norms are all alike (``γ = 1, β = 0, μ = 0, σ² = 1``), and the ONNX exporter merges alike BN-ReLUs
    that read the same tensor: measured, that made our ONNX export (:mod:`densenet.deploy.onnx_graph`) run 3–8% faster
    than it does with a trained network's weights.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                shape = module.weight.shape
                module.weight.copy_(torch.rand(shape, generator=generator) + 0.5)  # γ ~ U[0.5, 1.5)
                module.bias.copy_(torch.randn(shape, generator=generator) * 0.1)  # β ~ N(0, 0.1²)
                module.running_mean.copy_(torch.randn(shape, generator=generator) * 0.1)  # μ ~ N(0, 0.1²)
                module.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)  # σ² ~ U[0.5, 1.5)
    return model


def build_runners(name: str, batch: int, input_size: int, train: bool, onnx: bool, threads: int,
                  workdir: Path, only: str | None = None) -> tuple[dict[str, tuple[Runner, int]], list[str]]:
    """The configurations to time: ``label → (run one batch, MACs per image)``, and notes for the user.

    ``only`` builds that one configuration's runner alone (what a child process measures); the model, its summary
    and the torchvision twin it is compared with are built first either way, so every child starts from the same
    heap. The ONNX files are exported into ``workdir`` once: a file already there is reused, so children time the
    parent's exports — ``workdir`` must belong to this one measurement (:func:`run_bench` makes a temporary one).
    """
    def wanted(label: str) -> bool:
        return only is None or label == only

    torch.manual_seed(0)
    model = trained_like(create_model(name))
    summary = summarize(model.config, input_size)
    twin = torchvision_twin(model)
    notes = []
    if twin is None:
        notes.append("torchvision is not installed or cannot express this architecture: measuring ours alone")
    x = torch.randn(batch, model.config.in_chans, input_size, input_size)
    runners: dict[str, tuple[Runner, int]] = {}
    if train:
        target = torch.randint(0, max(model.config.num_classes, 1), (batch,))
        models = {"ours": (model.train(), summary.macs_executed)}
        if twin is not None:
            models["torchvision"] = (twin.train(), summary.macs)
        for label, (net, macs) in models.items():
            if wanted(label):
                optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
                runners[label] = (train_step(net, optimizer, x, target), 3 * macs)
        return runners, notes

    if wanted("ours"):
        runners["ours"] = (_no_grad(optimize_for_inference(model.eval()), x), summary.macs_executed)
    if twin is not None:
        if wanted("torchvision"):
            runners["torchvision"] = (_no_grad(twin.eval(), x), summary.macs)
        if wanted("torchvision-channels-last"):
            twin_cl = torchvision_twin(model).eval().to(memory_format=torch.channels_last)
            runners["torchvision-channels-last"] = (
                _no_grad(twin_cl, x.contiguous(memory_format=torch.channels_last)), summary.macs)
    if onnx:
        if importlib.util.find_spec("onnxruntime") is None:
            notes.append("onnxruntime is not installed (pip install 'densenet[export]'): no ONNX comparison")
        else:
            from densenet.deploy.export import export_model

            ours_path = workdir / "ours.onnx"
            if wanted("onnxruntime-ours"):
                if not ours_path.exists():
                    export_model(model, "onnx", ours_path, input_size=input_size, threads=threads)
                runners["onnxruntime-ours"] = (_onnx_runner(_onnx_session(ours_path, threads), x),
                                               summary.macs_executed)
            twin_path = workdir / "torchvision.onnx"
            if twin is not None and wanted("onnxruntime-torchvision"):
                if not twin_path.exists():
                    _export_torchvision_onnx(twin, x, twin_path)
                runners["onnxruntime-torchvision"] = (_onnx_runner(_onnx_session(twin_path, threads), x),
                                                      summary.macs)
    return runners, notes


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor) -> Runner:
    """One training step of ``model`` on ``(x, target)``: forward, cross-entropy, backward, optimizer step."""
    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def _no_grad(model: nn.Module, x: torch.Tensor) -> Runner:
    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)
    return run


def _minor_faults() -> int | None:
    """Minor page faults of this process so far (a fresh page's first touch), or None where not countable."""
    return None if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_interleaved(runners: dict[str, tuple[Runner, int]], rounds: int, warmup: int,
                     settle: float = SETTLE_SECONDS, seed: int = 0) -> Timings:
    """Seconds and minor page faults per batch of each runner, ``rounds`` times after ``warmup`` rounds, taking turns.

    Each run starts after ``settle`` idle seconds, so the worker threads of the configuration before it (OpenMP
    spin-waits after each parallel region) have stopped competing for the cores; and each round takes the
    configurations in a new random order (seeded: reproducible), so that none keeps the same neighbour or the same
    place in the round.
    """
    labels = list(runners)
    timings = Timings.for_labels(labels)
    order = random.Random(seed)
    for index in range(warmup + rounds):
        for label in order.sample(labels, len(labels)):
            time.sleep(settle)
            faults = _minor_faults()
            start = time.perf_counter()
            runners[label][0]()
            seconds = time.perf_counter() - start
            if index >= warmup:
                timings.seconds[label].append(seconds)
                if faults is not None:
                    timings.minor_faults[label].append(_minor_faults() - faults)
    return timings


def time_isolated(labels: list[str], spec: dict[str, Any], rounds: int, warmup: int,
                  passes: int = ISOLATED_PASSES, seed: int = 0) -> Timings:
    """Like :func:`time_interleaved`, each configuration in fresh processes of its own.

    The ``rounds`` are split over ``passes`` passes; in each pass every configuration runs in a new child process
    (``warmup`` runs, then its share of the rounds), the children one at a time in a seeded random order. ``spec``
    is what :func:`build_runners` needs, ``workdir`` included (its ONNX files are reused, not exported again).
    """
    shares = [rounds // passes + (index < rounds % passes) for index in range(min(passes, rounds))]
    timings = Timings.for_labels(labels)
    order = random.Random(seed)
    for share in shares:
        for label in order.sample(labels, len(labels)):
            result = _run_child({**spec, "task": "time", "label": label, "rounds": share, "warmup": warmup})
            timings.seconds[label] += result["seconds"]
            timings.minor_faults[label] += result["minor_faults"]
    return timings


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement (``spec["task"]``: ``"time"`` or ``"memory"``) in a fresh process; its JSON result."""
    result = subprocess.run([sys.executable, "-m", "densenet.deploy.bench", json.dumps(spec)], capture_output=True,
                            text=True, check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if result.returncode != 0:
        last_line = (result.stderr.strip().splitlines() or [""])[-1]
        detail = (f"{spec['task']} measurement of {spec['label']} failed in its child process "
                  f"(exit {result.returncode}){': ' + last_line if last_line else ''}")
        # -9: killed by SIGKILL, what the kernel's out-of-memory killer sends
        if result.returncode == -9 or "out of memory" in last_line.lower() or "can't allocate memory" in last_line:
            raise MemoryError(detail)
        raise RuntimeError(detail)
    return json.loads(result.stdout.strip().splitlines()[-1])


def peak_memory_mib(label: str, name: str, batch: int, input_size: int, train: bool, threads: int) -> float | None:
    """Peak resident memory (MiB above the baseline) of one batch of ``label``, in a fresh child process."""
    if not Path("/proc/self/clear_refs").exists() or label.startswith("onnxruntime"):
        return None
    spec = {"task": "memory", "label": label, "name": name, "batch": batch, "input_size": input_size, "train": train,
            "onnx": False, "threads": threads}
    return _run_child(spec)["peak_mib"]


def _child_runner(spec: dict[str, Any], workdir: Path) -> Runner:
    torch.set_num_threads(spec["threads"])
    runners, _ = build_runners(spec["name"], spec["batch"], spec["input_size"], spec["train"], spec["onnx"],
                               spec["threads"], workdir, only=spec["label"])
    return runners[spec["label"]][0]


def _memory_child(spec: dict[str, Any]) -> dict[str, float]:
    def rss(field: str) -> int:
        return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith(field + ":"))

    with tempfile.TemporaryDirectory() as workdir:
        run = _child_runner(spec, Path(workdir))
        baseline = rss("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        run()
        return {"peak_mib": (rss("VmHWM") - baseline) / 1024}


def _timing_child(spec: dict[str, Any]) -> dict[str, list[Any]]:
    label = spec["label"]
    timings = time_interleaved({label: (_child_runner(spec, Path(spec["workdir"])), 0)}, spec["rounds"],
                               spec["warmup"])
    return {"seconds": timings.seconds[label], "minor_faults": timings.minor_faults[label]}


def run_bench(name: str, batch: int = 8, input_size: int | None = None, train: bool = False, onnx: bool = False,
              threads: int | None = None, rounds: int = 10, warmup: int = 3, memory: bool = True,
              isolated: bool = False) -> dict[str, Any]:
    """Measure every configuration; returns a JSON-able report (see :func:`format_report`).

    ``isolated`` times each configuration in fresh processes of its own (:func:`time_isolated`) instead of all in
    this one (:func:`time_interleaved`); ``warmup`` runs are then made in every process (measured: onnxruntime's
    first 2–3 runs in a fresh process are 10–30% slower).

    Raises:
        ValueError: ``batch``, ``threads`` or ``rounds`` below 1, ``warmup`` below 0, ``input_size`` below the
            network's smallest; ``train`` with one value per channel at the last batch norm.
    """
    for label, value in (("batch", batch), ("input_size", input_size), ("threads", threads), ("rounds", rounds)):
        if value is not None and value < 1:
            raise ValueError(f"{label} must be at least 1, got {value}")
    if warmup < 0:
        raise ValueError(f"warmup must be at least 0, got {warmup}")
    threads = threads if threads is not None else torch.get_num_threads()
    torch.set_num_threads(threads)
    config = get_config(name)
    input_size = input_size if input_size is not None else config.default_input_size
    config.check_input_size((input_size, input_size), name)
    if train:
        check_batch_statistics(config, batch, input_size)
    with tempfile.TemporaryDirectory() as workdir:
        runners, notes = build_runners(name, batch, input_size, train, onnx, threads, Path(workdir))
        macs = {label: macs for label, (_, macs) in runners.items()}
        if isolated:
            del runners  # the children build their own; this process only made the ONNX files they reuse
            spec = {"name": name, "batch": batch, "input_size": input_size, "train": train, "onnx": onnx,
                    "threads": threads, "workdir": workdir}
            timings = time_isolated(list(macs), spec, rounds, warmup)
        else:
            timings = time_interleaved(runners, rounds, warmup)
    peak = matmul_peak_gflops(threads)
    measurements = []
    for label, label_macs in macs.items():
        seconds = statistics.median(timings.seconds[label])
        faults = timings.minor_faults[label]
        measurements.append(Measurement(
            label=label, images_per_second=batch / seconds, latency_ms=1e3 * seconds,
            gflops=2 * label_macs * batch / seconds / 1e9,
            peak_memory_mib=peak_memory_mib(label, name, batch, input_size, train, threads) if memory else None,
            macs_per_image=label_macs, times_ms=[1e3 * t for t in timings.seconds[label]],
            minor_faults_per_batch=statistics.median(faults) if faults else None))
    return {"model": name, "mode": "train" if train else "inference", "batch": batch, "input_size": input_size,
            "threads": threads, "rounds": rounds, "warmup": warmup, "settle_seconds": SETTLE_SECONDS,
            "timing": f"isolated: each configuration in {min(ISOLATED_PASSES, rounds)} fresh processes of its own"
                      if isolated else "interleaved in one process",
            "matmul_peak_gflops": peak, "torch": torch.__version__, "notes": notes,
            "measurements": [asdict(m) for m in measurements]}


def format_report(report: dict[str, Any]) -> str:
    """The report as a table with ratios to torchvision (or to ours when measured alone)."""
    rows = report["measurements"]
    by_label = {row["label"]: row for row in rows}
    base = by_label.get("torchvision", rows[0])["images_per_second"]
    header = ["configuration", "img/s", "latency ms", f"÷ {'torchvision' if 'torchvision' in by_label else 'ours'}",
              "GFLOP/s", "% of peak", "peak MiB", "page faults"]
    lines = [[row["label"], f"{row['images_per_second']:.2f}", f"{row['latency_ms']:.1f}",
              f"{row['images_per_second'] / base:.2f}", f"{row['gflops']:.0f}",
              f"{100 * row['gflops'] / report['matmul_peak_gflops']:.0f}",
              "-" if row["peak_memory_mib"] is None else f"{row['peak_memory_mib']:.0f}",
              "-" if row["minor_faults_per_batch"] is None else f"{row['minor_faults_per_batch']:.0f}"]
             for row in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=False)]
    text = [f"{report['model']} {report['mode']}, batch {report['batch']}, {report['input_size']}×"
            f"{report['input_size']}, {report['threads']} threads, torch {report['torch']}; matmul peak "
            f"{report['matmul_peak_gflops']:.0f} GFLOP/s (float32); timed {report['timing']}, median of "
            f"{report['rounds']} runs; page faults: minor faults per batch (fresh pages touched)"]
    text += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
             for line in [header, ["-" * w for w in widths], *lines]]
    if "onnxruntime-ours" in by_label and "onnxruntime-torchvision" in by_label:
        ratio = by_label["onnxruntime-ours"]["images_per_second"] / by_label[
            "onnxruntime-torchvision"]["images_per_second"]
        text.append(f"onnxruntime: our export ÷ torchvision's export = {ratio:.2f}")
    text += [f"note: {note}" for note in report["notes"]]
    return "\n".join(text)


if __name__ == "__main__":
    _spec = json.loads(sys.argv[1])
    print(json.dumps(_memory_child(_spec) if _spec["task"] == "memory" else _timing_child(_spec)))
