"""What ``densenet bench`` reports: per configuration images per second, latency, achieved GFLOP/s next to the
machine's measured float32 matrix-multiply peak (the physical ceiling for these convolutions), peak memory and page
faults; and the table it prints.

Achieved GFLOP/s counts 2 FLOPs per multiply-accumulate actually executed (a training step counts 3× the forward).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch


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


def format_report(report: dict[str, Any]) -> str:
    """The report (:func:`~densenet.deploy.bench.run_bench`'s) as a table with ratios to torchvision (or to ours
    when measured alone)."""
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
