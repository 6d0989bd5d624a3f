"""The memory pre-check before the first step: the closed form of one training step
(:func:`densenet.analysis.training_memory`), scaled by the least measured peak-to-closed-form ratio, against the
memory this process can have, and what would fit.

What is available: ``DENSENET_MEMORY_LIMIT`` if set (bytes, or with a K/M/G/T suffix in powers of 1024, e.g.
``6G``); on CUDA the device's free memory (``torch.cuda.mem_get_info``); on CPU the smaller of the cgroup's room
(v2 ``memory.max − memory.current``, v1 ``memory.limit_in_bytes − memory.usage_in_bytes``, reclaimable inactive
page cache not counted as used) and ``MemAvailable`` from ``/proc/meminfo``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from densenet.analysis import training_memory
from densenet.config import DenseNetConfig
from densenet.training.distributed import Context
from densenet.training.recipe import TrainConfig

logger = logging.getLogger("densenet")

LIMIT_ENV = "DENSENET_MEMORY_LIMIT"
# The closed form counts what a step must hold (saved tensors, weights, gradients, optimiser state); the measured
# peak adds the allocator's slack, workspaces and transients: 1.9–3.5× the closed form (densenet121 2-D 757 MiB for
# 386 saved, 3-D 833 MiB for 365; benchmarks/NOTES.md). A step needing more than PEAK_FLOOR × the closed form
# cannot fit; above PEAK_CEILING × it is expected to fit.
PEAK_FLOOR = 1.5
PEAK_CEILING = 3.5
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a page-rounded 2**63 − 1


@dataclass(frozen=True)
class Available:
    """Bytes this process may still allocate, and where the figure came from."""

    bytes: int
    source: str


def parse_bytes(text: str) -> int:
    """``"6G"`` → 6·2³⁰, ``"512MiB"`` → 512·2²⁰, ``"1000000"`` → 10⁶ (suffixes K, M, G, T in powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"{LIMIT_ENV}={text!r} is not a size: give bytes, or a number with K, M, G or T (e.g. 6G)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def available_memory(device: torch.device, cgroup_root: Path = Path("/sys/fs/cgroup"),
                     meminfo: Path = Path("/proc/meminfo")) -> Available | None:
    """What ``device`` has room for (see the module docstring); ``None`` when it cannot be told."""
    override = os.environ.get(LIMIT_ENV)
    if override:
        return Available(parse_bytes(override), LIMIT_ENV)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return Available(free, f"free on {device}")
    if device.type != "cpu":
        return None
    found = [room for room in (_cgroup_room(cgroup_root), _mem_available(meminfo)) if room is not None]
    return min(found, key=lambda room: room.bytes) if found else None


def _mem_available(meminfo: Path) -> Available | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return Available(int(line.split()[1]) * 1024, "MemAvailable")
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room(root: Path) -> Available | None:
    """The cgroup's limit minus its usage (less its inactive page cache), v2 first, then v1; ``None`` without a
    limit."""
    own = _own_cgroups()
    for directory in (root / own.get("", "").lstrip("/"), root):  # v2: one tree
        room = _room(directory / "memory.max", directory / "memory.current", directory / "memory.stat",
                     "inactive_file", "cgroup v2 memory.max")
        if room:
            return room
    for directory in (root / "memory" / own.get("memory", "").lstrip("/"), root / "memory"):  # v1
        room = _room(directory / "memory.limit_in_bytes", directory / "memory.usage_in_bytes",
                     directory / "memory.stat", "total_inactive_file", "cgroup v1 memory.limit_in_bytes")
        if room:
            return room
    return None


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup path per controller (``""`` for v2's unified tree), from ``/proc/self/cgroup``."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return {}
    paths = {}
    for line in lines:
        controllers, _, path = line.partition(":")[2].partition(":")
        for controller in controllers.split(","):
            paths[controller] = path
    return paths


def _room(limit_file: Path, usage_file: Path, stat_file: Path, inactive_key: str, source: str) -> Available | None:
    try:
        limit_text = limit_file.read_text().strip()
        usage = int(usage_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if limit_text == "max" or not limit_text.isdigit() or int(limit_text) >= _UNLIMITED:
        return None
    inactive = 0
    try:
        for line in stat_file.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == inactive_key:
                inactive = int(value)
    except (OSError, ValueError):
        pass
    return Available(max(0, int(limit_text) - max(0, usage - inactive)), source)


def check_memory(config: TrainConfig, context: Context, model: DenseNetConfig, side: int, micro_batch: int) -> None:
    """Stop a run whose step cannot fit before it starts: raise ``ValueError`` (one line: what the step needs, what
    is available, and the largest ``--batch-size`` or ``--image-size`` that would fit) when :data:`PEAK_FLOOR` times
    the closed form of a step at ``micro_batch`` images of ``side × side`` exceeds the available memory. Processes of
    one machine share its memory on CPU. Under autocast the float32 closed form overstates the step, so it is
    skipped."""
    if config.amp != "off":
        logger.debug("memory pre-check skipped: the closed form counts float32 and the run uses %s", config.amp)
        return
    available = available_memory(context.device)
    if available is None:
        logger.debug("memory pre-check skipped: the available memory of %s is unknown", context.device)
        return
    states = 2 if config.optimizer == "adamw" else 1
    sharing = int(os.environ.get("LOCAL_WORLD_SIZE", context.world_size)) if context.device.type == "cpu" else 1

    def closed_form(size: int, batch: int) -> int:
        return sharing * training_memory(model, size, batch, states).total

    def fits(size: int, batch: int) -> bool:
        return PEAK_FLOOR * closed_form(size, batch) <= available.bytes

    need = closed_form(side, micro_batch)
    if fits(side, micro_batch):
        if PEAK_CEILING * need > available.bytes:
            logger.warning("a training step needs at least %s (closed form) and %s is available (%s); the measured "
                           "peak runs 1.9-3.5x the closed form, so this may run out of memory", _gib(need),
                           _gib(available.bytes), available.source)
        return
    batch = _largest(lambda b: fits(side, b), 1, micro_batch - 1)
    size = _largest(lambda s: fits(s, micro_batch), model.min_input_size, side - 1)
    choices = ([f"--batch-size {batch * (config.batch_size // micro_batch)}"] if batch else []) + \
        ([f"--image-size {size}"] if size else [])
    advice = ("would fit: " + " or ".join(choices)) if choices else "not even 1 image at the smallest input fits: " \
                                                                   "use a smaller model"
    shape = "×".join([str(side)] * model.spatial_dims)  # 224×224, 64×64×64
    raise ValueError(f"a training step of {config.model} at {shape}, {micro_batch} image(s) per process needs "
                     f"more than {_gib(int(PEAK_FLOOR * need))} ({PEAK_FLOOR}× the closed form's {_gib(need)}) but "
                     f"{_gib(available.bytes)} is available ({available.source}); {advice}")


def _largest(fits: Callable[[int], bool], low: int, high: int) -> int | None:
    """The largest ``v`` in ``[low, high]`` with ``fits(v)`` (``fits`` true below some value, false above), by
    bisection; ``None`` when none fits."""
    if high < low or not fits(low):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def _gib(value: int) -> str:
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.1f} MiB"
