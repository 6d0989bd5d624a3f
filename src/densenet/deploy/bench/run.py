"""``densenet bench`` end to end: check the request, build the configurations, time them, measure their memory,
and assemble the JSON-able report."""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from densenet.deploy.bench.ceiling import conv_ceiling_gops
from densenet.deploy.bench.peers import DTYPES, PEERS, dtype_of
from densenet.deploy.bench.report import Measurement, matmul_peak_gflops
from densenet.deploy.bench.runners import bench_config, build_runners, is_weights_directory
from densenet.deploy.bench.timing import (
    ISOLATED_PASSES,
    SETTLE_SECONDS,
    peak_memory_mib,
    time_interleaved,
    time_isolated,
)
from densenet.deploy.quantize import is_quantized
from densenet.model import check_batch_statistics
from densenet.weights import read_pretrained_config


def run_bench(name: str, batch: int = 8, input_size: int | None = None, train: bool = False, onnx: bool = False,
              threads: int | None = None, rounds: int = 10, warmup: int = 3, memory: bool = True,
              isolated: bool = False, dtypes: tuple[str, ...] | None = None,
              peers: tuple[str, ...] = (), spatial_dims: int = 2) -> dict[str, Any]:
    """Measure every configuration; returns a JSON-able report (see :func:`~densenet.deploy.bench.format_report`).

    ``isolated`` times each configuration in fresh processes of its own
    (:func:`~densenet.deploy.bench.timing.time_isolated`) instead of all in this one
    (:func:`~densenet.deploy.bench.timing.time_interleaved`); ``warmup`` runs are then made in every process (a
    fresh process's first runs are slower, onnxruntime's most: benchmarks/NOTES.md). ``dtypes`` and ``peers``:
    ours in each dtype, and the other runtimes in the same dtypes (:mod:`~densenet.deploy.bench.peers`). Each row's
    share of the ceiling is against oneDNN's convolution in that row's dtype (:mod:`~densenet.deploy.bench.ceiling`).
    ``spatial_dims`` 1 or 3 times the model built for signals or volumes (``input_size`` along every axis; its
    default the model's, 96 for volumes): ours alone (torchvision's DenseNet is 2-D), with ``onnx`` also our ONNX
    export; other runtimes (``peers``) are compared on images only.
    ``name``: a registered model (trained-like weights) or a weights directory (``save_pretrained`` or ``densenet
    quantize``'s; default input size: its preprocessing's crop). ``dtypes`` default: float32, and int8 too for a
    ``densenet quantize`` directory (its own int8 model: :func:`~densenet.deploy.bench.peers.ours_int8`).

    Raises:
        ValueError: ``batch``, ``threads`` or ``rounds`` below 1, ``warmup`` below 0, ``input_size`` below the
            network's smallest; ``train`` with one value per channel at the last batch norm; an unknown dtype or
            peer, or ``train`` with other dtypes or peers; ``spatial_dims`` not 1, 2 or 3, or peers with 1 or 3;
            no configuration left to measure (each one's reason in the message).
    """
    for label, value in (("batch", batch), ("input_size", input_size), ("threads", threads), ("rounds", rounds)):
        if value is not None and value < 1:
            raise ValueError(f"{label} must be at least 1, got {value}")
    if warmup < 0:
        raise ValueError(f"warmup must be at least 0, got {warmup}")
    if dtypes is None:
        dtypes = ("float32", "int8") if is_weights_directory(name) and is_quantized(name) else ("float32",)
    for label, values, known in (("dtype", dtypes, DTYPES), ("peer", peers, PEERS)):
        unknown = [value for value in values if value not in known]
        if unknown:
            raise ValueError(f"unknown {label} {unknown[0]!r}; choose from {', '.join(known)}")
    if not dtypes:
        raise ValueError("at least one dtype is needed")
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
    if spatial_dims != 2 and peers:
        raise ValueError("--peers compare image (2-D) models only; signals and volumes time ours (and --onnx)")
    if train and (tuple(dtypes) != ("float32",) or peers):
        raise ValueError("--train times float32 training steps against torchvision only: no --dtypes or --peers")
    previous = torch.get_num_threads()
    threads = threads if threads is not None else previous
    torch.set_num_threads(threads)
    try:
        return _run(name, batch, input_size, train, onnx, threads, rounds, warmup, memory, isolated, tuple(dtypes),
                    tuple(peers), spatial_dims)
    finally:
        torch.set_num_threads(previous)  # the caller's process keeps its own setting


def _run(name: str, batch: int, input_size: int | None, train: bool, onnx: bool, threads: int, rounds: int,
         warmup: int, memory: bool, isolated: bool, dtypes: tuple[str, ...], peers: tuple[str, ...],
         spatial_dims: int = 2) -> dict[str, Any]:
    """:func:`run_bench` after its checks, on ``threads`` threads."""
    config = bench_config(name, spatial_dims)
    if input_size is None:
        input_size = (read_pretrained_config(name)[1].input_preprocessing(config).crop if is_weights_directory(name)
                      else config.default_input_size)
    config.check_input_size((input_size,) * spatial_dims, name)
    if train:
        check_batch_statistics(config, batch, input_size)
    with tempfile.TemporaryDirectory() as workdir:
        runners, notes = build_runners(name, batch, input_size, train, onnx, threads, Path(workdir), dtypes=dtypes,
                                       peers=peers, spatial_dims=spatial_dims)
        macs = {label: label_macs for label, (_, label_macs) in runners.items()}
        if not macs:
            raise ValueError("nothing to measure: " + "; ".join(notes))
        if isolated:
            del runners  # the children build their own; this process only made the ONNX files they reuse
            spec = {"name": name, "batch": batch, "input_size": input_size, "train": train, "onnx": onnx,
                    "threads": threads, "workdir": workdir, "dtypes": dtypes, "peers": peers,
                    "spatial_dims": spatial_dims}
            timings = time_isolated(list(macs), spec, rounds, warmup)
        else:
            timings = time_interleaved(runners, rounds, warmup)
    peak = matmul_peak_gflops(threads)
    ceilings = {dtype: conv_ceiling_gops(threads, dtype) for dtype in sorted({dtype_of(label) for label in macs})}
    measurements = []
    for label, label_macs in macs.items():
        peak_mib = (peak_memory_mib(label, name, batch, input_size, train, threads, dtypes, peers, spatial_dims)
                    if memory else None)
        measurements.append(Measurement.from_times(label, batch, label_macs, timings.seconds[label],
                                                   timings.minor_faults[label], peak_mib))
    return {"model": name, "mode": "train" if train else "inference", "batch": batch, "input_size": input_size,
            "spatial_dims": spatial_dims,
            "threads": threads, "rounds": rounds, "warmup": warmup, "settle_seconds": SETTLE_SECONDS,
            "timing": f"isolated: each configuration in {min(ISOLATED_PASSES, rounds)} fresh processes of its own"
                      if isolated else "interleaved in one process",
            "matmul_peak_gflops": peak, "conv_ceiling_gops": ceilings, "dtypes": list(dtypes), "peers": list(peers),
            "torch": torch.__version__, "notes": notes,
            "measurements": [asdict(m) for m in measurements]}

