"""The ``densenet`` command.

Every subcommand reports a user's mistake as one line on stderr and a non-zero exit: status 2 for a command line
argparse rejects (unknown flag, value of the wrong type), 1 for everything else (unknown model, missing file, bad
value); set ``DENSENET_DEBUG=1`` to see the traceback of the latter instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from densenet import __version__
from densenet.analysis import Row, Summary, summarize
from densenet.config import DenseNetConfig
from densenet.data.datasets import DATASETS
from densenet.registry import get_config, list_models
from densenet.training.recipe import TrainConfig, load_config

Handler = Callable[[argparse.Namespace], int]


def _format_count(value: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.3f}{unit}"
    return str(value)


def _format_shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(v) for v in shape)


def _format_bytes(value: int) -> str:
    return f"{value / 2**20:,.1f} MiB"


def format_summary(title: str, summary: Summary, detail: bool) -> str:
    """The tutorial's table as text: one row per stage, dense layers too with ``detail``."""
    header = ("Layer", "Input", "Output", "Kernel", "Stride", "Pad", "Params", "MACs", "Parameter formula (F8)")
    lines: list[tuple[str, ...]] = []

    def add(row: Row, indent: str = "") -> None:
        lines.append((indent + row.name, _format_shape(row.input_shape), _format_shape(row.output_shape), row.kernel,
                      row.stride, row.padding, f"{row.params:,}", _format_count(row.macs), row.param_formula))

    for row in summary.rows:
        add(row)
        if detail:
            for child in row.children:
                add(child, "  ")
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header) - 1)]

    def render(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=False)) + "  " + cells[-1]

    memory = summary.activation_memory
    out = [
        f"{title}: input {summary.config.in_chans}×{summary.input_size}×{summary.input_size}, "
        f"{summary.config.num_classes} classes",
        render(header),
        render(tuple("-" * len(h) for h in header)),
        *(render(line).rstrip() for line in lines),
        "",
        f"trainable parameters   {summary.params:,}",
        f"BN buffers             {summary.bn_buffers:,} ({summary.bn_layers} batch norms: mean, variance, count)",
        f"MACs (conv + linear)   {summary.macs:,} ({summary.macs / 1e9:.3f} G; paper order: conv, then pool)",
        f"MACs executed          {summary.macs_executed:,} ({summary.macs_executed / 1e9:.3f} G; pool before conv)",
        f"activation memory      {_format_bytes(memory.memory_efficient)} explicit block (memory_efficient=True), "
        f"{_format_bytes(memory.reference)} plain autograd: one float32 training step at batch {summary.batch_size}",
    ]
    return "\n".join(out)


def _resolve_config(name: str) -> tuple[str, DenseNetConfig]:
    """A registered model name, or a ``save_pretrained`` directory."""
    if Path(name).is_dir():
        from densenet.weights import read_pretrained_config

        config, meta = read_pretrained_config(name)
        return meta.name or name, config
    return name, get_config(name)


def cmd_summary(args: argparse.Namespace) -> int:
    """``densenet summary``: the closed-form table of a model."""
    title, config = _resolve_config(args.model)
    size = args.input_size if args.input_size is not None else config.default_input_size
    summary = summarize(config, size, args.batch_size)
    if args.json:
        print(json.dumps({"model": title, **summary.to_dict()}, indent=2))
    else:
        print(format_summary(title, summary, args.detail))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``densenet list``: the registered model names."""
    print("\n".join(list_models(args.pattern)))
    return 0


def _positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    return _int_at_least(text, 1)


def _count(text: str) -> int:
    """argparse type: an integer ≥ 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    if value >= 2**31:
        raise argparse.ArgumentTypeError(f"must be below 2**31, got {value}")
    return value


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse, with a usage mistake (unknown flag, bad value, missing argument) reported as one line,
    ``densenet train: error: … (see densenet train --help)``, and exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, _usage_error(self.prog, message))


def _usage_error(prog: str, message: str) -> str:
    return f"{prog}: error: {message} (see {prog} --help)\n"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (subcommand parsers share its class)."""
    parser = _OneLineErrorParser(prog="densenet", description="DenseNet: summary, train, eval, predict, export.")
    parser.add_argument("--version", action="version", version=f"densenet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    summary = commands.add_parser("summary", help="closed-form table: shapes, parameters, MACs, memory")
    summary.add_argument("model", help="registered model name (see `densenet list`) or a save_pretrained directory")
    summary.add_argument("--input-size", type=_positive_int, default=None,
                         help="input side (default 224, CIFAR models 32)")
    summary.add_argument("--batch-size", type=_positive_int, default=1, help="batch size for the activation memory")
    summary.add_argument("--detail", action="store_true", help="list every dense layer")
    summary.add_argument("--json", action="store_true", help="print JSON instead of the table")
    summary.set_defaults(handler=cmd_summary)

    listing = commands.add_parser("list", help="registered model names")
    listing.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'densenet_bc*'")
    listing.set_defaults(handler=cmd_list)

    train = commands.add_parser("train", help="train a model (single process, or under torchrun)")
    _add_train_arguments(train)
    train.set_defaults(handler=cmd_train)

    demo = commands.add_parser("demo", help="train a DenseNet-BC on the bundled digits and predict held-out digits")
    _add_train_arguments(demo)
    demo.add_argument("--samples", type=_positive_int, default=8, help="held-out digits to predict")
    demo.set_defaults(handler=cmd_demo)

    evaluate = commands.add_parser("eval", help="top-1/top-5, per-class accuracy and confusion matrix of weights")
    evaluate.add_argument("--weights", required=True, help="save_pretrained directory (a run's best/ or last/)")
    evaluate.add_argument("--dataset", required=True, choices=DATASETS, help="data set whose evaluation split to use")
    evaluate.add_argument("--data-dir", default=None, help="root of cifar10/cifar100 or of an image folder")
    evaluate.add_argument("--download", action="store_true", help="let torchvision download cifar10/cifar100")
    evaluate.add_argument("--eval-limit", type=_positive_int, default=None, help="use at most N images")
    evaluate.add_argument("--batch-size", type=_positive_int, default=256, help="images per forward pass")
    evaluate.add_argument("--workers", type=_count, default=None,
                          help="loader processes for image files (default: half the CPUs, at most 8)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument("--out", default=None, help="where the confusion-matrix PNG goes (default: --weights)")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of the table")
    evaluate.set_defaults(handler=cmd_eval)

    predict = commands.add_parser("predict", help="top-k classes of image files")
    predict.add_argument("--weights", required=True, help="directory written by save_pretrained")
    predict.add_argument("inputs", nargs="+", help="image files or directories (searched recursively)")
    predict.add_argument("--top-k", type=_positive_int, default=5, help="classes to show per image")
    predict.add_argument("--batch-size", type=_positive_int, default=64, help="images per forward pass")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    predict.add_argument("--json", action="store_true", help="print JSON instead of the table")
    predict.set_defaults(handler=cmd_predict)

    export = commands.add_parser("export", help="export weights to ONNX, TorchScript or an ExportedProgram, verified")
    export.add_argument("--weights", required=True, help="directory written by save_pretrained")
    export.add_argument("--format", required=True, metavar="FORMAT", help="onnx, torchscript or exported-program")
    export.add_argument("--output", required=True, help="file to write (its directory must exist)")
    export.add_argument("--input-size", type=_positive_int, default=None,
                        help="input side (default: the weights' crop size)")
    export.add_argument("--json", action="store_true", help="print the check as JSON")
    export.set_defaults(handler=cmd_export)

    bench = commands.add_parser("bench", help="images/s, latency and peak memory, ours against torchvision")
    bench.add_argument("model", help="registered model name")
    bench.add_argument("--batch", type=_positive_int, default=8, help="images per batch")
    bench.add_argument("--input-size", type=_positive_int, default=None,
                       help="input side (default 224, CIFAR models 32)")
    bench.add_argument("--train", action="store_true", help="time training steps instead of inference")
    bench.add_argument("--onnx", action="store_true", help="also time onnxruntime on both models' ONNX exports")
    bench.add_argument("--threads", type=_positive_int, default=None,
                       help="intra-op threads (default: torch's)")
    bench.add_argument("--rounds", type=_positive_int, default=10,
                       help="timed rounds after warm-up (the median is reported)")
    bench.add_argument("--warmup", type=_count, default=3,
                       help="untimed batches before the timed ones (in every process with --isolated)")
    bench.add_argument("--no-memory", action="store_true", help="skip the per-configuration peak-memory runs")
    bench.add_argument("--isolated", action="store_true",
                       help="time each configuration in fresh processes of its own (as deployed), not all in one")
    bench.add_argument("--json", action="store_true", help="print JSON instead of the table")
    bench.set_defaults(handler=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; a user's mistake prints one line on stderr and returns a non-zero code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named after the subcommand they were given to, not after `densenet`
        parser.exit(2, _usage_error(f"densenet {args.command}", f"unrecognized arguments: {' '.join(extra)}"))
    if args.command in ("train", "demo", "eval"):
        _log_to_stderr()
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("densenet: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, MemoryError, RuntimeError) as error:
        if os.environ.get("DENSENET_DEBUG") or (isinstance(error, RuntimeError) and not _out_of_memory(error)):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, (MemoryError, RuntimeError)):
            message = f"out of memory ({message[:200]}): use a smaller batch, image or model"
        print(f"densenet {args.command}: error: {message}", file=sys.stderr)
        return 1


def _out_of_memory(error: RuntimeError) -> bool:
    """Whether ``error`` is torch's report of a failed allocation (CPU or CUDA)."""
    text = str(error)
    return "can't allocate memory" in text or "out of memory" in text.lower()


# training, evaluation, prediction ---------------------------------------------------------------------------------


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--resume`` and one flag per :class:`TrainConfig` field (flags win over the files)."""
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML recipe (repeatable; later files and flags win)")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue an interrupted run from RUN_DIR/checkpoint.pt, with RUN_DIR/config.yaml")
    hints = typing.get_type_hints(TrainConfig)
    for item in dataclasses.fields(TrainConfig):
        if item.name == "resume":
            continue
        flag = "--" + item.name.replace("_", "-")
        help_text = item.metadata["help"]
        hint = hints[item.name]
        options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        kinds = [typing.get_origin(option) or option for option in options]  # list[float] → list
        if item.name == "model_args":
            parser.add_argument("--model-arg", dest="model_arg", action="append", metavar="KEY=VALUE",
                                default=argparse.SUPPRESS, help=help_text + " (one per flag, value in YAML)")
        elif bool in kinds:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        elif list in kinds:
            (element,) = typing.get_args(next(option for option in options if typing.get_origin(option) is list))
            parser.add_argument(flag, nargs="+", type=element, default=argparse.SUPPRESS, help=help_text)
        else:
            kind = next(k for k in kinds if k is not type(None))
            parser.add_argument(flag, type=kind, choices=item.metadata.get("choices"), default=argparse.SUPPRESS,
                                help=help_text)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """Layer the run's own config.yaml (``--resume``), the ``--config`` files and the flags."""
    names = {item.name for item in dataclasses.fields(TrainConfig)}
    overrides = {name: value for name, value in vars(args).items() if name in names and name != "resume"}
    if "model_arg" in args:
        model_args = {}
        for item in args.model_arg:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--model-arg takes KEY=VALUE, got {item!r}")
            try:
                model_args[key.strip()] = yaml.safe_load(value)
            except yaml.YAMLError as error:
                raise ValueError(f"--model-arg {item!r}: the value is not valid YAML "
                                 f"({str(error).splitlines()[0]})") from error
        overrides["model_args"] = model_args
    files = list(args.config)
    if args.resume:
        run_config = Path(args.resume) / "config.yaml"
        if not run_config.is_file():
            raise FileNotFoundError(f"nothing to resume: {run_config} does not exist")
        files.insert(0, run_config)
        overrides.update(out=args.resume, resume=True)
    return load_config(*files, **overrides)


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def cmd_train(args: argparse.Namespace) -> int:
    """``densenet train``: train, writing the run directory; Ctrl-C saves a checkpoint and exits with 130."""
    from densenet.training.engine import train

    result = train(_train_config(args))
    if not _is_main_process():
        return 130 if result.interrupted else 0
    if result.interrupted:
        print(f"interrupted; continue with: densenet train --resume {result.run_dir}", file=sys.stderr)
        return 130
    assert result.final is not None
    print(f"final eval top-1 {result.final.top1:.2%} (best {result.best_acc:.2%}) after {len(result.history)} "
          f"epochs, {result.train_seconds:.1f} s of training; run directory {result.run_dir}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``densenet demo``: the digits run, then predictions for held-out digits read back from PNG files."""
    from densenet.cli.demo import run_demo

    demo = run_demo(_train_config(args), samples=args.samples)
    run = demo.run
    if run.interrupted:
        print(f"interrupted; continue with: densenet demo --resume {run.run_dir}", file=sys.stderr)
        return 130
    assert run.final is not None
    final = run.final
    print(f"test accuracy {final.top1:.2%} ({round(final.top1 * final.samples)}/{final.samples} held-out digits) "
          f"after {len(run.history)} epochs, {run.train_seconds:.1f} s of training")
    print(f"run directory {run.run_dir} (weights in last/ and best/, metrics.csv, curves.png, confusion_matrix.png)")
    print(f"predictions of the final weights for {len(demo.predictions)} held-out digits:")
    for prediction, truth in zip(demo.predictions, demo.truths, strict=True):
        guesses = ", ".join(f"{name} {p:.1%}" for name, p in zip(prediction.names, prediction.probabilities,
                                                                 strict=True))
        mark = "ok" if prediction.names[0] == truth else "WRONG"
        print(f"  {prediction.path}  true {truth}  predicted {guesses}  {mark}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``densenet eval``: metrics of saved weights on a data set's evaluation split."""
    from densenet.data.datasets import DataSpec
    from densenet.deploy.inference import evaluate_dataset, load_model, preprocessing_of
    from densenet.training.distributed import resolve_device
    from densenet.training.plots import plot_confusion

    model = load_model(args.weights, resolve_device(args.device))
    preprocessing = preprocessing_of(model)
    spec = DataSpec(name=args.dataset, data_dir=args.data_dir, download=args.download, image_size=preprocessing.crop,
                    augment="none", in_chans=preprocessing.channels, eval_limit=args.eval_limit)
    result = evaluate_dataset(model, spec, batch_size=args.batch_size, workers=args.workers)
    out = Path(args.out or args.weights)
    out.mkdir(parents=True, exist_ok=True)
    figure = plot_confusion(result.confusion, result.class_names, out / f"eval_{args.dataset}_confusion.png",
                            title=f"{args.dataset}: top-1 {result.top1:.2%}")
    if args.json:
        print(json.dumps({"weights": str(args.weights), "dataset": args.dataset, **result.to_dict(),
                          "confusion_png": str(figure)}, indent=2))
        return 0
    print(f"{args.weights} on {args.dataset} ({result.samples} images): top-1 {result.top1:.2%}  "
          f"top-5 {result.top5:.2%}  loss {result.loss:.4f}")
    width = max(len(name) for name in result.class_names)
    print("per-class top-1:")
    for name, accuracy in zip(result.class_names, result.per_class, strict=True):
        print(f"  {name.ljust(width)}  " + ("no image" if math.isnan(accuracy) else f"{accuracy:7.2%}"))
    print(f"confusion matrix: {figure}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """``densenet predict``: top-k classes with probabilities for each image."""
    from densenet.deploy.inference import load_model, predict
    from densenet.training.distributed import resolve_device

    model = load_model(args.weights, resolve_device(args.device))
    predictions = predict(model, args.inputs, k=args.top_k, batch_size=args.batch_size)
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2))
        return 0
    width = max(len(str(p.path)) for p in predictions)
    for prediction in predictions:
        cells = [f"{name} {p:6.2%}" for name, p in zip(prediction.names, prediction.probabilities, strict=True)]
        print(f"{str(prediction.path).ljust(width)}  " + "  ".join(cells))
    return 0


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


def _log_to_stderr() -> None:
    """Show the engine's log lines (``densenet`` logger) on stderr, without breaking progress bars."""
    import logging

    from tqdm import tqdm

    class TqdmHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            tqdm.write(self.format(record), file=sys.stderr)

    logger = logging.getLogger("densenet")
    if not logger.handlers:
        logger.addHandler(TqdmHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False


if __name__ == "__main__":
    sys.exit(main())
