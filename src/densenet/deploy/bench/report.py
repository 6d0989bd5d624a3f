"""What ``densenet bench`` reports: per configuration images per second, latency, achieved GFLOP/s (int8: GOP/s)
as a share of the ceiling of its dtype (oneDNN's convolution, measured: :mod:`~densenet.deploy.bench.ceiling`; the
float32 matrix-multiply rate is kept in the report for reference), peak memory and page faults; and the table it
prints.

Achieved GFLOP/s counts 2 FLOPs per multiply-accumulate actually executed (a training step counts 3× the forward).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from densenet.deploy.bench.peers import DTYPES, dtype_of


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

    @classmethod
    def from_times(cls, label: str, batch: int, macs_per_image: int, seconds: list[float], minor_faults: list[int],
                   peak_memory_mib: float | None) -> Measurement:
        """The numbers of ``seconds`` per batch of ``batch`` images: the median time gives img/s and latency."""
        median = statistics.median(seconds)
        return cls(label=label, images_per_second=batch / median, latency_ms=1e3 * median,
                   gflops=2 * macs_per_image * batch / median / 1e9, peak_memory_mib=peak_memory_mib,
                   macs_per_image=macs_per_image, times_ms=[1e3 * t for t in seconds],
                   minor_faults_per_batch=statistics.median(minor_faults) if minor_faults else None)


def matmul_peak_gflops(threads: int, size: int = 4096, repeats: int = 3) -> float:
    """Measured float32 ``size×size`` matrix-multiply throughput with ``threads`` threads (kept for reference; the
    ceiling is oneDNN's convolution rate, :mod:`~densenet.deploy.bench.ceiling`)."""
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


def format_report(report: dict[str, Any]) -> str:
    """The report (:func:`~densenet.deploy.bench.run_bench`'s) as a table with ratios to torchvision (or to ours
    when measured alone)."""
    rows = report["measurements"]
    by_label = {row["label"]: row for row in rows}
    base = by_label.get("torchvision", rows[0])["images_per_second"]
    ceilings = report.get("conv_ceiling_gops") or {"float32": report["matmul_peak_gflops"]}
    header = ["configuration", "img/s", "latency ms", f"÷ {'torchvision' if 'torchvision' in by_label else 'ours'}",
              "GFLOP/s", "% of ceiling", "peak MiB", "page faults"]
    lines = [[row["label"], f"{row['images_per_second']:.2f}", f"{row['latency_ms']:.1f}",
              f"{row['images_per_second'] / base:.2f}", f"{row['gflops']:.0f}",
              f"{100 * row['gflops'] / ceilings[dtype_of(row['label'])]:.0f}",
              "-" if row["peak_memory_mib"] is None else f"{row['peak_memory_mib']:.0f}",
              "-" if row["minor_faults_per_batch"] is None else f"{row['minor_faults_per_batch']:.0f}"]
             for row in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=False)]
    shape = "×".join([str(report["input_size"])] * report.get("spatial_dims", 2))
    text = [f"{report['model']} {report['mode']}, batch {report['batch']}, {shape}, {report['threads']} threads, "
            f"torch {report['torch']}; ceiling (oneDNN "
            f"convolution, GFLOP/s; int8 GOP/s): "
            + ", ".join(f"{dtype} {value:.0f}" for dtype, value in ceilings.items())
            + f"; float32 matmul {report['matmul_peak_gflops']:.0f}; timed {report['timing']}, median of "
            f"{report['rounds']} runs; page faults: minor faults per batch (fresh pages touched)"]
    text += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
             for line in [header, ["-" * w for w in widths], *lines]]
    if "onnxruntime-ours" in by_label and "onnxruntime-torchvision" in by_label:
        ratio = by_label["onnxruntime-ours"]["images_per_second"] / by_label[
            "onnxruntime-torchvision"]["images_per_second"]
        text.append(f"onnxruntime: our export ÷ torchvision's export = {ratio:.2f}")
    text += _dtype_ratios(by_label)
    text += [f"note: {note}" for note in report["notes"]]
    return "\n".join(text)


def _dtype_ratios(by_label: dict[str, dict[str, Any]]) -> list[str]:
    """Per dtype: ours ÷ each peer in the same dtype, and ours ÷ our float32."""
    def rate(label: str) -> float | None:
        return by_label[label]["images_per_second"] if label in by_label else None

    lines = []
    for dtype in DTYPES:
        ours = rate("ours" if dtype == "float32" else f"ours-{dtype}")
        if ours is None:
            continue
        cells = [f"÷ {peer} {dtype} {ours / other:.2f}" for peer in ("openvino", "onnxruntime")
                 if (other := rate(f"{peer}-{dtype}")) is not None]
        if dtype != "float32" and (float32 := rate("ours")) is not None:
            cells.append(f"÷ ours float32 {ours / float32:.2f}")
        if cells:
            lines.append(f"ours {dtype}: " + ", ".join(cells))
    return lines
