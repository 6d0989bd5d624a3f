"""``densenet explain`` (class activation maps of image files) and ``densenet report`` (a run as one HTML file)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from densenet.cli.common import positive_int

METHOD_NAMES = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam", "scorecam")
"""``densenet.explain.cam.METHODS``, repeated so that ``densenet --help`` does not import pytorch-grad-cam (a test
keeps the two equal)."""


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``explain`` and ``report`` to the ``densenet`` subcommands."""
    explain = commands.add_parser("explain", help="heatmaps (Grad-CAM and others) of image files: overlay PNG + .npy")
    explain.add_argument("--weights", required=True, help="save_pretrained directory (a run's best/ or last/)")
    explain.add_argument("inputs", nargs="+", help="image files or directories (searched recursively)")
    explain.add_argument("--method", default="gradcam", choices=METHOD_NAMES, help="CAM method (default: gradcam)")
    explain.add_argument("--target", default=None, metavar="CLASS", action="append",
                         help="class to explain in every image (default: the predicted one; multi-label: the labels "
                              "present); repeat it for several labels of a multi-label model")
    explain.add_argument("--out", required=True, help="directory for <stem>.png and <stem>.npy")
    explain.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass")
    explain.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    explain.add_argument("--json", action="store_true", help="print one JSON record per image")
    explain.set_defaults(handler=cmd_explain)

    report = commands.add_parser("report", help="write RUN_DIR/report.html: one self-contained page about a run")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by densenet train")
    report.add_argument("--wrong", type=positive_int, default=8,
                        help="most confidently wrong evaluation images to show with their heatmaps (default: 8)")
    report.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    report.set_defaults(handler=cmd_report)


def cmd_explain(args: argparse.Namespace) -> int:
    """``densenet explain``: per image, an overlay PNG and the raw map, named after the image."""
    from densenet.deploy.inference import input_paths, load_model, preprocessing_of
    from densenet.explain.api import explain
    from densenet.explain.cam import is_multi_label
    from densenet.explain.write import file_stem, write_explanations
    from densenet.training.distributed import resolve_device

    model = load_model(args.weights, resolve_device(args.device))
    paths = input_paths(args.inputs, preprocessing_of(model))
    multi_label = is_multi_label(model)
    stems = [file_stem(Path(path)) for path in paths]
    clash = next((path for i, path in enumerate(paths) if stems.index(stems[i]) != i), None)
    if clash is not None:  # refused before anything is written
        raise ValueError(f"{paths[stems.index(file_stem(clash))]} and {clash} would both write "
                         f"{file_stem(clash)}.png: explain them separately")
    for start in range(0, len(paths), args.batch_size):  # a chunk of images in memory at a time
        chunk = paths[start:start + args.batch_size]
        # none, one class for all, or (multi-label) the same list of labels for each image
        targets = None if args.target is None else args.target[0] if len(args.target) == 1 else [args.target] * len(
            chunk)
        explanations = explain(model, chunk, targets=targets, method=args.method, batch_size=args.batch_size)
        write_explanations(explanations, Path(args.out), args.method, multi_label)
        for explanation in explanations:
            if args.json:
                print(json.dumps(explanation.to_dict()))
            else:
                print(f"{explanation.path}  {explanation.class_name} {explanation.probability:.2%}  "
                      f"{' '.join(map(str, explanation.files))}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``densenet report``: ``RUN_DIR/report.html``."""
    from densenet.explain.report import write_report
    from densenet.training.distributed import resolve_device

    path = write_report(Path(args.run_dir), wrong=args.wrong, device=resolve_device(args.device))
    print(f"report: {path}")
    return 0
