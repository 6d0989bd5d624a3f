"""``densenet export`` and ``densenet bench``: weights in another format, checked; ours timed against torchvision."""

from __future__ import annotations

import argparse
import json

from densenet.cli.common import count, positive_int


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``export`` and ``bench`` to the ``densenet`` subcommands."""
    export = commands.add_parser("export", help="export weights to ONNX, TorchScript or an ExportedProgram, verified")
    export.add_argument("--weights", required=True, help="directory written by save_pretrained")
    export.add_argument("--format", required=True, metavar="FORMAT", help="onnx, torchscript or exported-program")
    export.add_argument("--output", required=True, help="file to write (its directory must exist)")
    export.add_argument("--input-size", type=positive_int, default=None,
                        help="input side (default: the weights' crop size)")
    export.add_argument("--json", action="store_true", help="print the check as JSON")
    export.set_defaults(handler=cmd_export)

    bench = commands.add_parser("bench", help="images/s, latency and peak memory, ours against torchvision")
    bench.add_argument("model", help="registered model name")
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
    report = export_model(model, args.format, args.output, input_size=size)
    if args.json:
        print(json.dumps({"path": str(report.path), "format": report.format, "max_abs_diff": report.max_abs_diff,
                          "max_rel_diff": report.max_rel_diff, "checked_batch": report.checked_batch}, indent=2))
    else:
        print(f"wrote {report.path} ({report.format}, dynamic batch); checked against PyTorch on a batch of "
              f"{report.checked_batch}: max abs difference {report.max_abs_diff:.2e} "
              f"({report.max_rel_diff:.2e} of the largest logit)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``densenet bench``: ours against torchvision, interleaved, with GFLOP/s against the matmul peak."""
    from densenet.deploy.bench import format_report, run_bench

    if args.batch < 1 or args.rounds < 1:
        raise ValueError("--batch and --rounds must be at least 1")
    report = run_bench(args.model, batch=args.batch, input_size=args.input_size, train=args.train, onnx=args.onnx,
                       threads=args.threads, rounds=args.rounds, warmup=args.warmup,
                       memory=not args.no_memory, isolated=args.isolated)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
