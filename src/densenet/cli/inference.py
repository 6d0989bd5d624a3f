"""``densenet eval`` and ``densenet predict``: metrics of saved weights on a data set, top-k classes of images."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from densenet.cli.common import count, positive_int
from densenet.data.datasets import DATASETS

VOLUME_BATCH = 4  # volumes per forward pass by default: DenseNet-121 at 96³ peaks at ~0.5 GB per volume in inference


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``eval`` and ``predict`` to the ``densenet`` subcommands."""
    evaluate = commands.add_parser("eval", help="top-1/top-5, per-class accuracy and confusion matrix of weights "
                                   "(multi-label: per-label AUROC, AP and ROC curves)")
    evaluate.add_argument("--weights", required=True, help="save_pretrained directory (a run's best/ or last/)")
    evaluate.add_argument("--dataset", required=True, choices=DATASETS, help="data set whose evaluation split to use")
    evaluate.add_argument("--data-dir", default=None,
                          help="root of cifar10/cifar100, of an image, volume or signal folder, or of a csv data set")
    evaluate.add_argument("--download", action="store_true", help="let torchvision download cifar10/cifar100")
    evaluate.add_argument("--eval-limit", type=positive_int, default=None, help="use at most N images")
    evaluate.add_argument("--batch-size", type=positive_int, default=None,
                          help="images per forward pass (default: 256; volumes: 4)")
    evaluate.add_argument("--workers", type=count, default=None,
                          help="loader processes for image files (default: half the CPUs, at most 8)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument("--out", default=None, help="where the confusion-matrix (multi-label: ROC-curves) PNG goes "
                          "(default: --weights)")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of the table")
    evaluate.set_defaults(handler=cmd_eval)

    predict = commands.add_parser("predict", help="top-k classes of image files, or volume or signal files as the "
                                  "weights say (multi-label: every label and the positives)")
    predict.add_argument("--weights", required=True, help="directory written by save_pretrained")
    predict.add_argument("inputs", nargs="+", help="image (volume, signal) files or directories (searched recursively)")
    predict.add_argument("--top-k", type=positive_int, default=5, help="classes to show per image")
    predict.add_argument("--batch-size", type=positive_int, default=None,
                         help="images per forward pass (default: 64; volumes: 4)")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    predict.add_argument("--json", action="store_true", help="print JSON instead of the table")
    predict.set_defaults(handler=cmd_predict)


def cmd_eval(args: argparse.Namespace) -> int:
    """``densenet eval``: metrics of saved weights on a data set's evaluation split."""
    from densenet.cli.multilabel import report_multilabel
    from densenet.data.datasets import DataSpec
    from densenet.deploy.inference import evaluate_dataset, load_model, preprocessing_of
    from densenet.training.distributed import resolve_device
    from densenet.training.multilabel import MultiLabelResult
    from densenet.training.plots import plot_confusion

    model = load_model(args.weights, resolve_device(args.device))
    preprocessing = preprocessing_of(model)
    kind = getattr(preprocessing, "kind", "image")  # a csv table is read as the files the weights take
    spec = DataSpec(name=args.dataset, data_dir=args.data_dir, download=args.download, image_size=preprocessing.crop,
                    augment="none", in_chans=preprocessing.channels, eval_limit=args.eval_limit,
                    csv_kind=kind if args.dataset == "csv" else "auto")
    batch_size = args.batch_size or (VOLUME_BATCH if preprocessing.spatial_dims == 3 else 256)
    result = evaluate_dataset(model, spec, batch_size=batch_size, workers=args.workers)
    out = Path(args.out or args.weights)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(result, MultiLabelResult):
        return report_multilabel(args, result, model.meta, out)
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
    """``densenet predict``: top-k classes with probabilities for each image (volume, signal), printed as they come;
    an unreadable file is named on stderr and skipped, and the exit status is 1 when any was."""
    from densenet.deploy.inference import Failed, input_paths, load_model, predict_each, preprocessing_of
    from densenet.training.distributed import resolve_device

    model = load_model(args.weights, resolve_device(args.device))
    preprocessing = preprocessing_of(model)
    paths = input_paths(args.inputs, preprocessing)
    width = max(len(str(path)) for path in paths)
    predictions, failed = [], 0
    batch_size = args.batch_size or (VOLUME_BATCH if preprocessing.spatial_dims == 3 else 64)
    for item in predict_each(model, paths, k=args.top_k, batch_size=batch_size):
        if isinstance(item, Failed):
            failed += 1
            print(f"densenet predict: skipped: {item.reason}", file=sys.stderr)
        elif args.json:
            predictions.append(item.to_dict())
        else:
            cells = [f"{name} {p:6.2%}" for name, p in zip(item.names, item.probabilities, strict=True)]
            found = item.positives
            positives = "" if found is None else "  positives: " + (", ".join(found) or "none")
            print(f"{str(item.path).ljust(width)}  " + "  ".join(cells) + positives)
    if args.json:
        print(json.dumps(predictions, indent=2))
    if failed:
        print(f"densenet predict: error: {failed} of {len(paths)} file(s) could not be read", file=sys.stderr)
        return 1
    return 0
