"""How ``densenet bench`` times and measures: interleaved in one process, or each configuration in fresh processes
of its own, and the child processes that time one configuration or measure its peak memory.

Interleaved (:func:`time_interleaved`): every configuration lives in one process and they take turns, round after
round, each round in a new seeded random order, so a change of machine load hits all alike and none keeps the same
neighbour. Isolated (:func:`time_isolated`): each configuration runs in fresh processes of its own, the way it runs
when deployed — in one shared process a model's speed depends on what the others left in the heap (how many fresh
pages it must fault in; benchmarks/NOTES.md has the counts). The minor page faults of each run are counted in both
modes. Peak memory (:func:`peak_memory_mib`): one more batch in a fresh child, its resident-set high-water mark above
the baseline it had before the run.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import resource  # Unix only: page-fault counts
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

import torch

from densenet.deploy.bench.runners import Runner, Runners, build_runners

# idle seconds before each timed run: the worker threads of the run before (OpenMP and ONNX Runtime pools that
# spin-wait after their work) must stop competing for the cores first (benchmarks/NOTES.md, the order effect)
SETTLE_SECONDS = 0.1
# isolated timing: each configuration's rounds are split over this many fresh processes, taking turns with the others'
ISOLATED_PASSES = 3
CHILD_MODULE = "densenet.deploy.bench"  # ``python -m`` entry of the child processes (its __main__)


@dataclass
class Timings:
    """Per configuration: seconds per batch, and minor page faults per batch (empty lists where not countable)."""

    seconds: dict[str, list[float]]
    minor_faults: dict[str, list[int]]

    @classmethod
    def for_labels(cls, labels: list[str]) -> Timings:
        """Empty lists for each configuration, to be filled run by run."""
        return cls({label: [] for label in labels}, {label: [] for label in labels})


def _minor_faults() -> int | None:
    """Minor page faults of this process so far (a fresh page's first touch), or None where not countable."""
    return None if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_interleaved(runners: Runners, rounds: int, warmup: int, settle: float = SETTLE_SECONDS,
                     seed: int = 0) -> Timings:
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
    is what :func:`~densenet.deploy.bench.runners.build_runners` needs, ``workdir`` included (its ONNX files are
    reused, not exported again).
    """
    shares = [rounds // passes + (index < rounds % passes) for index in range(min(passes, rounds))]
    timings = Timings.for_labels(labels)
    order = random.Random(seed)
    for share in shares:
        for label in order.sample(labels, len(labels)):
            result = run_child({**spec, "task": "time", "label": label, "rounds": share, "warmup": warmup})
            timings.seconds[label] += result["seconds"]
            timings.minor_faults[label] += result["minor_faults"]
    return timings


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement (``spec["task"]``: ``"time"`` or ``"memory"``) in a fresh process; its JSON result.

    Raises:
        MemoryError: the child ran out of memory (or the kernel's out-of-memory killer ended it).
        RuntimeError: the child failed otherwise; the message names the measurement, exit code and last line.
    """
    result = subprocess.run([sys.executable, "-m", CHILD_MODULE, json.dumps(spec)], capture_output=True,
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


def peak_memory_mib(label: str, name: str, batch: int, input_size: int, train: bool, threads: int,
                    dtypes: tuple[str, ...] = ("float32",), peers: tuple[str, ...] = (),
                    spatial_dims: int = 2) -> float | None:
    """Peak resident memory (MiB above the baseline) of one batch of ``label``, in a fresh child process; None
    where it cannot be measured (no ``/proc/self/clear_refs``, or another runtime's session)."""
    if not Path("/proc/self/clear_refs").exists() or label.startswith(("onnxruntime", "openvino")):
        return None
    spec = {"task": "memory", "label": label, "name": name, "batch": batch, "input_size": input_size, "train": train,
            "onnx": False, "threads": threads, "dtypes": list(dtypes), "peers": list(peers),
            "spatial_dims": spatial_dims}
    return run_child(spec)["peak_mib"]


def _child_runner(spec: dict[str, Any], workdir: Path) -> Runner:
    torch.set_num_threads(spec["threads"])
    runners, _ = build_runners(spec["name"], spec["batch"], spec["input_size"], spec["train"], spec["onnx"],
                               spec["threads"], workdir, only=spec["label"],
                               dtypes=tuple(spec.get("dtypes", ("float32",))), peers=tuple(spec.get("peers", ())),
                               spatial_dims=spec.get("spatial_dims", 2))
    return runners[spec["label"]][0]


def _memory_child(spec: dict[str, Any]) -> dict[str, float]:
    def rss(field: str) -> int:
        return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith(field + ":"))

    with tempfile.TemporaryDirectory() as workdir:
        run = _child_runner(spec, Path(workdir))
        baseline = rss("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        run()
        return {"peak_mib": (rss("VmHWM") - baseline) / 1024}


def _timing_child(spec: dict[str, Any]) -> dict[str, list[Any]]:
    label = spec["label"]
    timings = time_interleaved({label: (_child_runner(spec, Path(spec["workdir"])), 0)}, spec["rounds"],
                               spec["warmup"])
    return {"seconds": timings.seconds[label], "minor_faults": timings.minor_faults[label]}


def child_main(argv: list[str]) -> int:
    """The child process: run the measurement ``argv[0]`` (a JSON spec) describes, print its result as one JSON line."""
    if len(argv) != 1:
        print(f"python -m {CHILD_MODULE} is the child process of `densenet bench`, which starts it with one JSON "
              "spec; run `densenet bench` instead", file=sys.stderr)
        return 2
    spec = json.loads(argv[0])
    print(json.dumps(_memory_child(spec) if spec["task"] == "memory" else _timing_child(spec)))
    return 0
