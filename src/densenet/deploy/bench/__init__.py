"""Side-by-side speed and memory: ours against torchvision's DenseNet with identical weights (``densenet bench``).

Every configuration runs the same weights on the same batch; after warm-up runs, the median time per batch gives
images per second and latency, and achieved GFLOP/s is shown next to the machine's measured float32 matrix-multiply
peak. The rooms:

- :mod:`~densenet.deploy.bench.runners`: what is timed — ours optimized, torchvision's twin in both memory formats,
  both ONNX exports under ONNX Runtime, or one training step of each;
- :mod:`~densenet.deploy.bench.timing`: how — interleaved in one process or each configuration in fresh processes
  of its own, the child processes, page faults and peak memory;
- :mod:`~densenet.deploy.bench.report`: the numbers per configuration and the printed table;
- :mod:`~densenet.deploy.bench.run`: :func:`run_bench`, all of it end to end.

``python -m densenet.deploy.bench SPEC`` is the child process (:func:`~densenet.deploy.bench.timing.child_main`).
"""

from densenet.deploy.bench.report import Measurement, format_report, matmul_peak_gflops
from densenet.deploy.bench.run import run_bench
from densenet.deploy.bench.runners import Runner, build_runners, torchvision_twin, train_step, trained_like
from densenet.deploy.bench.timing import (
    ISOLATED_PASSES,
    SETTLE_SECONDS,
    Timings,
    peak_memory_mib,
    run_child,
    time_interleaved,
    time_isolated,
)

__all__ = ["ISOLATED_PASSES", "SETTLE_SECONDS", "Measurement", "Runner", "Timings", "build_runners", "format_report",
           "matmul_peak_gflops", "peak_memory_mib", "run_bench", "run_child", "time_interleaved", "time_isolated",
           "torchvision_twin", "train_step", "trained_like"]
