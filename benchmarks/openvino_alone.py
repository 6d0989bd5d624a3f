"""OpenVINO timed alone, in a process that never imports torch, on the IR ``densenet bench`` compiles (issue "int8
and bf16 inference"): whether OpenVINO's speed in ``densenet bench`` (one process with torch, interleaved) is its
speed alone, and whether it keeps the threads it is given busy.

    python benchmarks/openvino_alone.py save --out DIR          # (torch) densenet121, trained-like weights: the IR,
                                                                # float and NNCF int8 (bench's calibration batches)
    flock /work/bench.lock env OMP_NUM_THREADS=2 python benchmarks/openvino_alone.py time --out DIR --batch 8
    flock /work/bench.lock env OMP_NUM_THREADS=2 python benchmarks/openvino_alone.py settings --out DIR --batch 8

``time`` compiles each IR with ``densenet bench``'s settings (``INFERENCE_NUM_THREADS`` = ``--threads``, one
stream, ``LATENCY``, precision hint f32 / bf16 / int8 IR in f32), and once more without CPU pinning; ``settings``
times the int8 IR under other ways of asking for the same threads (:data:`SETTINGS`). Median ms of ``--rounds``
inferences and the CPU seconds per wall second (cores busy). Writes
``benchmarks/results/openvino_alone_b{batch}[_settings].json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def save(out: Path, batches: tuple[int, ...]) -> None:
    import nncf
    import openvino as ov
    import torch

    from densenet.deploy.bench import trained_like
    from densenet.deploy.bench.peers import bench_calibration
    from densenet.registry import create_model

    torch.manual_seed(0)
    model = trained_like(create_model("densenet121")).eval()
    out.mkdir(parents=True, exist_ok=True)
    for batch in batches:
        x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        converted = ov.convert_model(model, example_input=x)
        ov.save_model(converted, str(out / f"float_b{batch}.xml"))
        int8 = nncf.quantize(converted, nncf.Dataset([b.numpy() for b in bench_calibration(x)]), subset_size=4)
        ov.save_model(int8, str(out / f"int8_b{batch}.xml"))


def time_all(out: Path, batch: int, threads: int, rounds: int) -> dict[str, dict[str, float]]:
    import numpy as np
    import openvino as ov

    core = ov.Core()
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    results = {}
    for label, ir, precision in (("float32", "float", "f32"), ("bfloat16", "float", "bf16"), ("int8", "int8", "f32")):
        for pinning in (True, False):
            compiled = core.compile_model(str(out / f"{ir}_b{batch}.xml"), "CPU", {
                "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": precision, "ENABLE_CPU_PINNING": pinning})
            key = f"openvino-{label}{'' if pinning else ' (no pinning)'}"
            results[key] = time_request(compiled.create_infer_request(), x, rounds)
            print(f"{key:32s} {results[key]['median_ms']:8.1f} ms  {results[key]['cores_busy']:.2f} cores busy",
                  flush=True)
    return results


def time_request(request: object, x: object, rounds: int) -> dict[str, float]:
    """Median wall milliseconds of ``rounds`` inferences of ``x`` by an OpenVINO infer ``request`` (after 3 warm-up
    ones), and the cores kept busy (CPU seconds per wall second)."""
    for _ in range(3):
        request.infer({0: x})
    walls = []
    cpu = time.process_time()
    for _ in range(rounds):
        start = time.perf_counter()
        request.infer({0: x})
        walls.append(time.perf_counter() - start)
    return {"median_ms": 1000 * statistics.median(walls), "cores_busy": (time.process_time() - cpu) / sum(walls)}


SETTINGS = {  # other ways to ask OpenVINO for 2 threads, tried on the int8 IR (`settings` step)
    "latency (bench's)": {"PERFORMANCE_HINT": "LATENCY"},
    "no hint": {},
    "throughput hint": {"PERFORMANCE_HINT": "THROUGHPUT"},
    "latency, pinning off, hyper-threading on": {"PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False,
                                                "ENABLE_HYPER_THREADING": True},
}


def time_settings(out: Path, batch: int, threads: int, rounds: int) -> dict[str, dict[str, float]]:
    """The int8 IR under each of :data:`SETTINGS`, always with ``threads`` threads and one stream."""
    import numpy as np
    import openvino as ov

    core = ov.Core()
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    results = {}
    for name, extra in SETTINGS.items():
        compiled = core.compile_model(str(out / f"int8_b{batch}.xml"), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, **extra})
        results[f"openvino-int8, {name}"] = time_request(compiled.create_infer_request(), x, rounds)
        print(f"{name:42s} {results[f'openvino-int8, {name}']['median_ms']:8.1f} ms  "
              f"{results[f'openvino-int8, {name}']['cores_busy']:.2f} cores busy", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("save", "time", "settings"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    if args.step == "save":
        save(args.out, (8, 1))
        return
    timer = time_all if args.step == "time" else time_settings
    results = timer(args.out, args.batch, args.threads, args.rounds)
    suffix = "" if args.step == "time" else "_settings"
    path = Path(__file__).resolve().parent / "results" / f"openvino_alone_b{args.batch}{suffix}.json"
    path.write_text(json.dumps({"batch": args.batch, "threads": args.threads, "rounds": args.rounds,
                                "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
