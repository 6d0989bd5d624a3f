"""Top-1 of trained weights in float32, bfloat16 and int8 on a whole evaluation split (issue "int8 and bf16").

    python benchmarks/low_precision_accuracy.py --weights RUN/best --dataset folder \
        --data-dir ~/.cache/densenet/cifar10-jpeg --name cifar10 [--calibration-images 512] [--observer histogram]

Float32 is ``optimize_for_inference(model)``, bfloat16 ``optimize_for_inference(model, dtype=torch.bfloat16)``,
int8 ``densenet.quantize`` calibrated on ``--calibration-images`` training images (a fixed random subset,
``densenet quantize``'s choice). Every image of the evaluation split is used; the evaluation images are decoded once
(a cached folder) and shared by the three. Appends/replaces the entry ``--name`` in
``benchmarks/results/low_precision_accuracy.json``, with the differences to float32 in points and the issue's
limits (bf16 within 0.2 points; int8 within 0.5 on CIFAR-10, 0.3 on the digits demo).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from densenet.data.datasets import DataSpec, load_split
from densenet.data.loader import EpochBatches, Loader
from densenet.deploy.inference import evaluate, preprocessing_of
from densenet.deploy.optimize import optimize_for_inference
from densenet.deploy.quantize import calibration_data, quantize
from densenet.weights import from_pretrained
from harness import RESULTS, machine, write_json

LIMITS = {"bfloat16": 0.2, "int8": 0.5}
OUTPUT = RESULTS / "low_precision_accuracy.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--name", required=True, help="entry name in the JSON")
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--observer", default="histogram")
    parser.add_argument("--int8-limit", type=float, default=LIMITS["int8"], help="points (digits demo: 0.3)")
    parser.add_argument("--note", default="", help="how the weights were trained")
    args = parser.parse_args()

    model = from_pretrained(args.weights).eval()
    started = time.perf_counter()
    quantized = quantize(model, calibration_data(model, args.dataset, args.data_dir, args.calibration_images,
                                                 workers=0), observer=args.observer)
    quantize_seconds = time.perf_counter() - started
    models = {"float32": optimize_for_inference(model), "bfloat16": optimize_for_inference(model, dtype=torch.bfloat16),
              "int8": quantized}
    preprocessing = preprocessing_of(model)
    spec = DataSpec(name=args.dataset, data_dir=args.data_dir, image_size=preprocessing.crop, augment="none",
                    in_chans=preprocessing.channels, cache=args.dataset == "folder")
    split = load_split(spec, "eval", preprocessing)
    batches = list(Loader(split, preprocessing, EpochBatches(len(split), 250, shuffle=False), workers=0))
    results = {}
    for dtype, net in models.items():
        result = evaluate(net, batches, split.class_names)
        results[dtype] = {"top1": result.top1, "top5": result.top5, "loss": result.loss, "images": result.samples}
        print(f"{args.name} {dtype}: top-1 {result.top1:.2%} on {result.samples} images", flush=True)
    limits = {**LIMITS, "int8": args.int8_limit}
    for dtype in ("bfloat16", "int8"):
        delta = 100 * (results[dtype]["top1"] - results["float32"]["top1"])
        results[dtype].update(points_vs_float32=delta, limit_points=limits[dtype], within=abs(delta) <= limits[dtype])
        print(f"{dtype} − float32: {delta:+.2f} points (limit ±{limits[dtype]})")
    weights = Path(args.weights).resolve()
    entry = {"weights": f"<run {weights.parent.name}>/{weights.name}", "dataset": args.dataset, "note": args.note,
             "observer": args.observer,
             "calibration_images": quantized.calibration["images"], "quantize_seconds": quantize_seconds,
             "results": results, "machine": machine()}
    saved = json.loads(OUTPUT.read_text()) if OUTPUT.exists() else {}
    saved[args.name] = entry
    write_json(OUTPUT.stem, saved)


if __name__ == "__main__":
    main()
