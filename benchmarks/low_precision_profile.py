"""Where the time of a low-precision densenet121 forward goes: ours (torch.profiler, self time per operator) and
OpenVINO's (its per-layer performance counters, by layer type), same weights and batch (issue "int8 and bf16").

    flock /work/bench.lock env OMP_NUM_THREADS=2 python benchmarks/low_precision_profile.py --batch 8 \
        --dtypes int8 bfloat16 [--openvino] [--threads 2] [--runs 5]

Ours: ``densenet bench``'s configurations (:func:`densenet.deploy.bench.peers.ours_runners`: trained-like weights,
int8 calibrated with min/max on four random batches), ``--runs`` forwards under ``torch.profiler`` after warm-up;
per operator its self CPU time per forward and call count. OpenVINO: ``PERF_COUNT`` on, the same number of
inferences, real time per forward summed by ``node_type`` / ``exec_type``. For both, ``cores_busy``: CPU seconds
of the process per wall second over the unprofiled runs (how many of the threads asked for did work). Writes
``benchmarks/results/low_precision_profile_b{batch}.json`` and prints the top rows.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from densenet.deploy.bench.peers import bench_calibration, ours_runners
from densenet.deploy.bench.runners import trained_like
from densenet.deploy.optimize import optimize_for_inference
from densenet.registry import create_model
from harness import machine, write_json
from openvino_alone import time_request

OPENVINO_PRECISION = {"float32": "f32", "bfloat16": "bf16", "int8": "f32"}


def ours(model: torch.nn.Module, x: torch.Tensor, dtypes: list[str], runs: int) -> dict[str, Any]:
    """Per dtype: wall ms per forward (unprofiled median) and the profiler's self time per operator."""
    calibration = bench_calibration(x)
    runners, notes = ours_runners(model, x, tuple(dtypes), calibration, lambda label: True)
    if "float32" in dtypes:
        fast = optimize_for_inference(model)

        def float32() -> torch.Tensor:
            with torch.inference_mode():
                return fast(x)
        runners["ours-float32"] = float32
    results: dict[str, Any] = {"notes": notes}
    for label, run in runners.items():
        for _ in range(3):
            run()
        walls = []
        cpu = time.process_time()
        for _ in range(runs):
            start = time.perf_counter()
            run()
            walls.append(time.perf_counter() - start)
        cores = (time.process_time() - cpu) / sum(walls)  # CPU seconds per wall second: the threads at work
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                run()
        rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in rows) / runs / 1000
        results[label] = {
            "wall_ms": 1000 * statistics.median(walls), "cores_busy": cores, "profiled_self_ms": total,
            "ops": [{"op": e.key, "self_ms": e.self_cpu_time_total / runs / 1000, "calls": e.count // runs}
                    for e in rows if e.self_cpu_time_total / runs / 1000 > 0.05]}
    return results


def openvino(model: torch.nn.Module, x: torch.Tensor, dtypes: list[str], runs: int, threads: int) -> dict[str, Any]:
    """Per dtype: wall ms per inference and the per-layer real time summed by layer type and kernel."""
    import nncf
    import openvino as ov

    converted = ov.convert_model(model.eval(), example_input=x)
    core = ov.Core()
    results: dict[str, Any] = {}
    for dtype in dtypes:
        network = converted
        if dtype == "int8":
            network = nncf.quantize(converted, nncf.Dataset([b.numpy() for b in bench_calibration(x)]),
                                    subset_size=4)
        compiled = core.compile_model(network, "CPU", {
            "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[dtype], "PERF_COUNT": True})
        request = compiled.create_infer_request()
        array = x.numpy()
        timed = time_request(request, array, runs)
        by_type: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
        for _ in range(runs):
            request.infer({0: array})
            for info in request.get_profiling_info():
                if info.status == info.Status.EXECUTED:
                    key = f"{info.node_type} [{info.exec_type}]"
                    by_type[key][0] += info.real_time.total_seconds() * 1000 / runs
                    by_type[key][1] += 1
        rows = sorted(by_type.items(), key=lambda kv: -kv[1][0])
        results[f"openvino-{dtype}"] = {
            "wall_ms": timed["median_ms"], "cores_busy": timed["cores_busy"],
            "inference_num_threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "layers_ms": sum(v[0] for _, v in rows),
            "layers": [{"type": key, "ms": ms, "count": count // runs} for key, (ms, count) in rows]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--dtypes", nargs="+", default=["int8", "bfloat16"])
    parser.add_argument("--openvino", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = trained_like(create_model("densenet121")).eval()
    x = torch.randn(args.batch, 3, args.input_size, args.input_size)
    results = ours(model, x, args.dtypes, args.runs)
    if args.openvino:
        results.update(openvino(model, x, args.dtypes, args.runs, args.threads))
    for label, result in results.items():
        if label == "notes":
            continue
        print(f"== {label}: {result['wall_ms']:.1f} ms per forward, {result['cores_busy']:.2f} cores busy")
        for row in (result.get("ops") or result.get("layers"))[:12]:
            print("   " + "  ".join(f"{value:.2f}" if isinstance(value, float) else str(value)
                                    for value in row.values()))
    name = args.output or f"low_precision_profile_b{args.batch}"
    write_json(name, {"machine": machine(), "batch": args.batch, "threads": args.threads,
                                         "runs": args.runs, "results": results})


if __name__ == "__main__":
    main()
