"""``densenet train`` and ``densenet demo``: one flag per :class:`~densenet.training.recipe.TrainConfig` field,
layered over the ``--config`` files (and a resumed run's own ``config.yaml``)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from densenet.cli.common import positive_int
from densenet.training.recipe import TrainConfig, field_kinds, load_config

if TYPE_CHECKING:
    from densenet.training.engine import TrainResult


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``train`` and ``demo`` to the ``densenet`` subcommands."""
    train = commands.add_parser("train", help="train a model (single process, or under torchrun)")
    add_train_arguments(train)
    train.add_argument("--report", action="store_true", help="write RUN_DIR/report.html at the end (densenet report)")
    train.set_defaults(handler=cmd_train)

    demo = commands.add_parser("demo", help="train a DenseNet-BC on the bundled digits and predict held-out digits")
    add_train_arguments(demo)
    demo.add_argument("--samples", type=positive_int, default=8, help="held-out digits to predict")
    demo.add_argument("--multilabel", action="store_true",
                      help="instead of digits: generate the multi-label shapes set (CSV, 5 labels, 15%% unknown) "
                      "into --data-dir (default runs/shapes-data), train a tiny DenseNet-BC on it, and predict "
                      "held-out images")
    demo.add_argument("--volumes", action="store_true",
                      help="train a 3D DenseNet on synthetic volumes (spheres, cubes, rods in noise) instead, and "
                           "predict held-out volumes read back from NIfTI files (needs densenet[volumes])")
    demo.set_defaults(handler=cmd_demo)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--resume`` and one flag per :class:`TrainConfig` field (flags win over the files)."""
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML recipe (repeatable; later files and flags win)")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue an interrupted run from RUN_DIR/checkpoint.pt, with RUN_DIR/config.yaml")
    for item in dataclasses.fields(TrainConfig):
        if item.name == "resume":
            continue
        flag = "--" + item.name.replace("_", "-")
        default = item.default_factory() if item.default is dataclasses.MISSING else item.default
        help_text = item.metadata["help"]
        if "default" not in help_text:  # some say what their default depends on
            help_text += f" (default: {_shown(default)})"
        kinds = field_kinds(item.name)
        if item.name == "model_args":
            parser.add_argument("--model-arg", dest="model_arg", action="append", metavar="KEY=VALUE",
                                default=argparse.SUPPRESS, help=help_text + " (one per flag, value in YAML)")
        elif bool in kinds.kinds:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        elif list in kinds.kinds:
            parser.add_argument(flag, nargs="+", type=kinds.element, default=argparse.SUPPRESS, help=help_text)
        else:
            kind = next(k for k in kinds.kinds if k is not type(None))
            parser.add_argument(flag, type=kind, choices=item.metadata.get("choices"), default=argparse.SUPPRESS,
                                help=help_text)


def _shown(default: object) -> str:
    """A recipe default as the help text shows it: ``none``, ``off``/``on``, space-separated lists, YAML maps."""
    if default is None:
        return "none"
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, list):
        return " ".join(map(str, default))
    if isinstance(default, dict):
        return "{}" if not default else str(default)
    return str(default)


def train_config(args: argparse.Namespace, base: dict[str, object] | None = None) -> TrainConfig:
    """Layer ``base`` (a command's own defaults, e.g. a demo's recipe), the run's own config.yaml (``--resume``), the
    ``--config`` files and the flags."""
    names = {item.name for item in dataclasses.fields(TrainConfig)}
    overrides = {name: value for name, value in vars(args).items() if name in names and name != "resume"}
    if "model_arg" in args:
        overrides["model_args"] = _model_args(args.model_arg)
    files = list(args.config)
    if args.resume:
        run_config = Path(args.resume) / "config.yaml"
        if not run_config.is_file():
            raise FileNotFoundError(f"nothing to resume: {run_config} does not exist")
        files.insert(0, run_config)
        overrides.update(out=args.resume, resume=True)
    return load_config(*files, base=base, **overrides)


def _model_args(items: list[str]) -> dict[str, object]:
    """``--model-arg KEY=VALUE`` flags as a mapping, each value read as YAML."""
    model_args = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-arg takes KEY=VALUE, got {item!r}")
        try:
            model_args[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise ValueError(f"--model-arg {item!r}: the value is not valid YAML "
                             f"({str(error).splitlines()[0]})") from error
    return model_args


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def stopped_line(result: TrainResult, command: str) -> int:
    """Print the one line of a run stopped by a signal (which, where it was, the checkpoint, how to continue) on
    stderr; return the exit status, 128 + the signal number as a shell reports a process the signal ended."""
    from densenet.training.signals import signal_name

    signum = result.stop_signal or signal.SIGINT
    if _is_main_process():
        print(f"densenet {command.split()[0]}: stopped by {signal_name(signum)} at epoch {result.epoch + 1}, step "
              f"{result.step}; checkpoint saved in {result.checkpoint}; continue with: densenet {command} --resume "
              f"{result.run_dir}", file=sys.stderr)
    return 128 + signum


def cmd_train(args: argparse.Namespace) -> int:
    """``densenet train``: train, writing the run directory; SIGINT (Ctrl-C) or SIGTERM saves a checkpoint and exits
    with 128 + the signal number (130, 143)."""
    from densenet.training.engine import train
    from densenet.training.multilabel import MultiLabelResult

    result = train(train_config(args))
    if result.interrupted:
        return stopped_line(result, "train")
    if not _is_main_process():
        return 0
    assert result.final is not None
    if isinstance(result.final, MultiLabelResult):
        print(f"final eval {result.final.headline()} (best mean AUROC {result.best_acc:.3f}) after "
              f"{len(result.history)} epochs, {result.train_seconds:.1f} s of training; run directory {result.run_dir}")
        return 0
    print(f"final eval top-1 {result.final.top1:.2%} (best {result.best_acc:.2%}) after {len(result.history)} "
          f"epochs, {result.train_seconds:.1f} s of training; run directory {result.run_dir}")
    if getattr(args, "report", False):
        from densenet.explain.report import write_report

        print(f"report: {write_report(result.run_dir, device=result.model.classifier.weight.device)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``densenet demo``: the digits run, then predictions for held-out digits read back from PNG files."""
    from densenet.cli.demo import run_demo

    if args.multilabel and args.volumes:
        raise ValueError("densenet demo takes --multilabel or --volumes, not both")
    if args.multilabel:
        from densenet.cli.shapes_demo import SHAPES_RECIPE, report_shapes_demo

        return report_shapes_demo(train_config(args, base=SHAPES_RECIPE), samples=args.samples)
    if args.volumes:
        from densenet.cli.demo_volumes import VOLUMES_DEMO, run_volume_demo

        demo = run_volume_demo(train_config(args, base=VOLUMES_DEMO), samples=args.samples)
    else:
        demo = run_demo(train_config(args), samples=args.samples)
    run = demo.run
    what = "volumes" if args.volumes else "digits"
    if run.interrupted:
        return stopped_line(run, "demo --volumes" if args.volumes else "demo")
    assert run.final is not None
    final = run.final
    print(f"test accuracy {final.top1:.2%} ({round(final.top1 * final.samples)}/{final.samples} held-out {what}) "
          f"after {len(run.history)} epochs, {run.train_seconds:.1f} s of training")
    print(f"run directory {run.run_dir} (weights in last/ and best/, metrics.csv, curves.png, confusion_matrix.png)")
    print(f"predictions of the final weights for {len(demo.predictions)} held-out {what}:")
    for prediction, truth in zip(demo.predictions, demo.truths, strict=True):
        guesses = ", ".join(f"{name} {p:.1%}" for name, p in zip(prediction.names, prediction.probabilities,
                                                                 strict=True))
        mark = "ok" if prediction.names[0] == truth else "WRONG"
        print(f"  {prediction.path}  true {truth}  predicted {guesses}  {mark}")
    return 0
