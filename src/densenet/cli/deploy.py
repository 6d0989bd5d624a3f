"""``densenet export``, ``densenet quantize`` and ``densenet bench``: weights in another format, checked; an int8
model from calibration images; ours timed against torchvision and other runtimes."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from densenet.cli.common import count, positive_int
from densenet.data.datasets import DATASETS

if TYPE_CHECKING:
    from densenet.deploy.export import ExportReport


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``export`` and ``bench`` to the ``densenet`` subcommands."""
    export = commands.add_parser("export", help="export weights to ONNX, TorchScript or an ExportedProgram, verified")
    export.add_argument("--weights", required=True, help="directory written by save_pretrained")
    export.add_argument("--format", required=True, metavar="FORMAT", help="onnx, torchscript or exported-program")
    export.add_argument("--output", required=True, help="file to write (its directory must exist)")
    export.add_argument("--input-size", type=positive_int, default=None,
                        help="input side (default: the weights' crop size)")
    export.add_argument("--int8", action="store_true",
                        help="ONNX (QDQ) of the int8 model in --weights (a directory written by densenet quantize)")
    export.add_argument("--json", action="store_true", help="print the check as JSON")
    export.set_defaults(handler=cmd_export)

    quantize = commands.add_parser("quantize", help="int8 model from trained weights and calibration images")
    quantize.add_argument("--weights", required=True, help="save_pretrained directory (a run's best/ or last/)")
    quantize.add_argument("--dataset", required=True, choices=DATASETS, help="data set whose training split calibrates")
    quantize.add_argument("--data-dir", default=None, help="root of cifar10/cifar100 or of an image folder")
    quantize.add_argument("--out", required=True, help="directory to write (eval, predict and bench take it)")
    quantize.add_argument("--calibration-images", type=positive_int, default=512,
                          help="training images to calibrate the activation ranges with (a fixed random subset)")
    quantize.add_argument("--observer", choices=("histogram", "minmax"), default="histogram",
                          help="activation range: least squared error over a histogram, or min/max")
    quantize.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    quantize.add_argument("--workers", type=count, default=None,
                          help="loader processes for image files (default: half the CPUs, at most 8)")
    quantize.set_defaults(handler=cmd_quantize)

    bench = commands.add_parser("bench", help="images/s, latency and peak memory, ours against torchvision and "
                                "other runtimes, per dtype")
    bench.add_argument("model", help="registered model name (trained-like weights), or a weights directory "
                       "(save_pretrained or densenet quantize's)")
    bench.add_argument("--batch", type=positive_int, default=8, help="images per batch")
    bench.add_argument("--input-size", type=positive_int, default=None,
                       help="input side (default 224, CIFAR models 32)")
    bench.add_argument("--train", action="store_true", help="time training steps instead of inference")
    bench.add_argument("--onnx", action="store_true", help="also time onnxruntime on both models' ONNX exports")
    bench.add_argument("--threads", type=positive_int, default=None,
                       help="intra-op threads (default: torch's)")
    bench.add_argument("--rounds", type=positive_int, default=10,
                       help="timed rounds after warm-up (the median is reported)")
    bench.add_argument("--warmup", type=count, default=3,
                       help="untimed batches before the timed ones (in every process with --isolated)")
    bench.add_argument("--no-memory", action="store_true", help="skip the per-configuration peak-memory runs")
    bench.add_argument("--isolated", action="store_true",
                       help="time each configuration in fresh processes of its own (as deployed), not all in one")
    bench.add_argument("--dtypes", nargs="+", default=None, metavar="DTYPE",
                       help="ours in each of float32, bfloat16, int8 (default: float32; and int8 for a densenet "
                            "quantize directory)")
    bench.add_argument("--peers", nargs="+", default=[], metavar="PEER",
                       help="other runtimes in the same dtypes: openvino, onnxruntime (skipped with a note when "
                            "not installed: pip install 'densenet[bench]')")
    bench.add_argument("--spatial-dims", type=int, choices=(1, 2, 3), default=2,
                       help="1 (signals) or 3 (volumes): the model built for that input, --input-size along every "
                            "axis (default 96 for volumes), ours alone (torchvision's DenseNet is 2-D)")
    bench.add_argument("--json", action="store_true", help="print JSON instead of the table")
    bench.set_defaults(handler=cmd_bench)


def cmd_export(args: argparse.Namespace) -> int:
    """``densenet export``: write the model in another format and check it against PyTorch."""
    from densenet.deploy.export import FORMATS, export_model
    from densenet.weights import from_pretrained

    if args.format not in FORMATS:
        raise ValueError(f"unsupported export format {args.format!r}; choose one of {', '.join(FORMATS)}")
    model = from_pretrained(args.weights)
    saved = model.meta.preprocessing
    size = args.input_size if args.input_size is not None else (saved.crop if saved else None)
    report = (_export_int8(args, size) if args.int8
              else export_model(model, args.format, args.output, input_size=size))
    if args.json:
        print(json.dumps({"path": str(report.path), "format": report.format, "max_abs_diff": report.max_abs_diff,
                          "max_rel_diff": report.max_rel_diff, "checked_batch": report.checked_batch}, indent=2))
    else:
        against = "our int8 model" if args.int8 else "PyTorch"
        print(f"wrote {report.path} ({report.format}, dynamic batch); checked against {against} on a batch of "
              f"{report.checked_batch}: max abs difference {report.max_abs_diff:.2e} "
              f"({report.max_rel_diff:.2e} of the largest logit)")
    return 0


def _export_int8(args: argparse.Namespace, size: int | None) -> ExportReport:
    from densenet.deploy.export_int8 import export_int8_onnx
    from densenet.deploy.quantize import is_quantized, load_quantized

    if args.format != "onnx":
        raise ValueError(f"--int8 exports ONNX only, not {args.format}")
    if not is_quantized(args.weights):
        raise ValueError(f"{args.weights} holds no int8 model: make one with densenet quantize first")
    return export_int8_onnx(load_quantized(args.weights), args.output, input_size=size)


def cmd_quantize(args: argparse.Namespace) -> int:
    """``densenet quantize``: calibrate on training images, write an int8 model directory."""
    from densenet.deploy.quantize import calibration_data, check_int8_model, quantize, save_quantized
    from densenet.weights import from_pretrained

    model = from_pretrained(args.weights)
    check_int8_model(model)  # before reading any data
    loader = calibration_data(model, args.dataset, args.data_dir, args.calibration_images, args.batch_size,
                              args.workers)
    quantized = quantize(model, loader, observer=args.observer)
    save_quantized(model, quantized, args.out)
    print(f"wrote {args.out}: int8 model ({len(quantized.qparams)} activation ranges by {args.observer} observer "
          f"on {quantized.calibration['images']} {args.dataset} training images); densenet eval, predict and "
          "bench take it like any weights directory")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``densenet bench``: ours against torchvision, interleaved, with GFLOP/s against the matmul peak."""
    from densenet.deploy.bench import format_report, run_bench

    if args.batch < 1 or args.rounds < 1:
        raise ValueError("--batch and --rounds must be at least 1")
    report = run_bench(args.model, batch=args.batch, input_size=args.input_size, train=args.train, onnx=args.onnx,
                       threads=args.threads, rounds=args.rounds, warmup=args.warmup,
                       memory=not args.no_memory, isolated=args.isolated,
                       dtypes=None if args.dtypes is None else tuple(args.dtypes),
                       peers=tuple(args.peers), spatial_dims=args.spatial_dims)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
