"""Shared pieces of the benchmarks: machine facts, model builders, peak-memory workers, JSON results.

Peak memory is measured in a fresh process per configuration: build the model and a batch, read the resident
set size (``VmRSS``) as the baseline, reset the high-water mark (``echo 5 > /proc/self/clear_refs``), run one
training step (forward, backward, SGD step), and report ``VmHWM − baseline``. A watchdog kills a worker whose
resident set passes a limit, so configurations that cannot fit are recorded as such instead of swapping the
machine to death.

glibc's allocator adds fragmentation to peak RSS: by default its mmap threshold rises after large frees, so
later large tensors come from the heap and freed memory is not returned. ``ALLOCATORS`` lists the settings a
benchmark can run under; each result records the one it used.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# The four ways to train densenet121 that the training benchmarks compare: torchvision's two modes, ours (the explicit
# memory-efficient path) and our plain autograd reference.
TRAINING_CONFIGURATIONS: dict[str, dict[str, object]] = {
    "torchvision": {"impl": "torchvision", "memory_efficient": False},
    "torchvision-memory-efficient": {"impl": "torchvision", "memory_efficient": True},
    "ours": {"impl": "ours", "memory_efficient": True},
    "ours-reference": {"impl": "ours", "memory_efficient": False},
}
ALLOCATORS: dict[str, dict[str, str]] = {
    "glibc-default": {},
    # A fixed threshold disables glibc's dynamic adjustment: allocations ≥ 128 KiB always use mmap and go back
    # to the system when freed, so peak RSS tracks live memory.
    "glibc-mmap-128k": {"MALLOC_MMAP_THRESHOLD_": "131072"},
    # What `densenet train` runs under on CPU (recipe `keep_freed_memory: true`, the default): the worker calls
    # densenet.training.allocator.keep_freed_memory() before building the model.
    "densenet-train": {"DENSENET_BENCH_KEEP_FREED_MEMORY": "1"},
}


def machine() -> dict[str, Any]:
    """Facts that qualify every number: CPU, core count, torch version, threads."""
    import torch

    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


# Input fields a spec may carry (N-D benchmarks): ours takes them as config overrides, MONAI as its own arguments.
INPUT_KEYS = ("spatial_dims", "in_chans", "num_classes")


def build_model(spec: dict[str, Any]):
    """``{"impl": "torchvision", "name": ..., "memory_efficient": ...}``,
    ``{"impl": "ours", "name": ... | "config": {...}, "memory_efficient": ...}`` or
    ``{"impl": "monai", "name": "densenet121", "spatial_dims": 3, "in_chans": 1, "num_classes": 2}`` (and
    :data:`INPUT_KEYS` for ours) → a model in train mode."""
    if spec["impl"] == "torchvision":
        import torchvision

        return getattr(torchvision.models, spec["name"])(memory_efficient=spec["memory_efficient"]).train()
    if spec["impl"] == "monai":
        from monai.networks import nets

        builder = {"densenet121": nets.DenseNet121, "densenet169": nets.DenseNet169,
                   "densenet201": nets.DenseNet201, "densenet264": nets.DenseNet264}[spec["name"]]
        return builder(spatial_dims=spec["spatial_dims"], in_channels=spec["in_chans"],
                       out_channels=spec["num_classes"]).train()
    import densenet

    overrides = {key: spec[key] for key in INPUT_KEYS if key in spec}
    if overrides:
        return densenet.create_model(spec["name"], memory_efficient=spec["memory_efficient"], **overrides).train()

    if "config" in spec:
        config = densenet.DenseNetConfig.from_dict(spec["config"]).replace(memory_efficient=spec["memory_efficient"])
        return densenet.DenseNet(config).train()
    return densenet.create_model(spec["name"], memory_efficient=spec["memory_efficient"]).train()


def _rss_kib(field: str, pid: str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def peak_memory_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run inside the child: one training step of ``spec``; peak RSS above the baseline, in bytes."""
    import torch

    if os.environ.get("DENSENET_BENCH_KEEP_FREED_MEMORY") == "1":
        from densenet.training.allocator import keep_freed_memory

        if not keep_freed_memory():
            raise RuntimeError("keep_freed_memory() was refused: the densenet-train allocator setting does not apply")
    torch.set_num_threads(spec.get("threads", 2))
    torch.manual_seed(0)
    model = build_model(spec)
    if spec.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    side = spec["input_size"]
    x = torch.randn(spec["batch"], spec.get("in_chans", 3), *[side] * spec.get("spatial_dims", 2))
    if spec.get("channels_last"):
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, spec.get("num_classes", 10), (spec["batch"],))
    baseline = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    optimizer.step()
    seconds = time.perf_counter() - start
    peak = _rss_kib("VmHWM")
    return {"baseline_bytes": baseline * 1024, "peak_above_baseline_bytes": (peak - baseline) * 1024,
            "step_seconds": seconds, "loss": loss.item()}


def measure_peak_memory(spec: dict[str, Any], allocator: str, limit_bytes: int, timeout: float = 1800) -> dict:
    """Run :func:`peak_memory_worker` in a fresh process under ``allocator``; kill it past ``limit_bytes`` RSS.

    Returns the worker's result, or ``{"exceeded_limit": True, ...}`` when it was killed.
    """
    env = {**os.environ, **ALLOCATORS[allocator], "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    highest, started = 0, time.monotonic()
    while process.poll() is None:
        with contextlib.suppress(FileNotFoundError, RuntimeError, ProcessLookupError):  # the child just exited
            highest = max(highest, _rss_kib("VmRSS", str(process.pid)) * 1024)
        if highest > limit_bytes or time.monotonic() - started > timeout:
            process.kill()
            process.wait()
            return {"exceeded_limit": highest > limit_bytes, "timed_out": highest <= limit_bytes,
                    "rss_when_stopped_bytes": highest}
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"worker failed for {spec}: {stderr.strip().splitlines()[-1] if stderr else '?'}")
    return {"exceeded_limit": False, **json.loads(stdout.strip().splitlines()[-1])}


def write_json(name: str, data: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` atomically, with no absolute path of this machine in it (see
    :func:`portable`), and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(portable(data), indent=2) + "\n")
    os.replace(temporary, path)
    return path


def portable(value: Any) -> Any:
    """``value`` with every string that is a path inside the checkout made relative to it and every other path
    under the home directory written from ``~``: results say where things were without naming this machine's
    directories."""
    if isinstance(value, dict):
        return {key: portable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(item) for item in value]
    if isinstance(value, str) and value.startswith("/"):
        path = Path(value)
        for base, shown in ((ROOT, None), (Path.home(), "~")):
            if path.is_relative_to(base):
                relative = path.relative_to(base)
                return str(relative) if shown is None else f"{shown}/{relative}"
    return value


def print_table(header: list[str], rows: list[list[Any]]) -> None:
    """A plain aligned text table."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for index, row in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--worker":
    print(json.dumps(peak_memory_worker(json.loads(sys.argv[2]))))
