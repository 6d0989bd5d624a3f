"""``densenet eval`` and ``densenet predict``: metrics of saved weights on a data set, top-k classes of images."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from densenet.cli.common import count, positive_int
from densenet.data.datasets import DATASETS

VOLUME_BATCH = 4  # volumes per forward pass by default: DenseNet-121 at 96³ peaks at ~0.5 GB per volume in inference


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``eval`` and ``predict`` to the ``densenet`` subcommands."""
    evaluate = commands.add_parser("eval", help="top-1/top-5, per-class accuracy and confusion matrix of weights")
    evaluate.add_argument("--weights", required=True, help="save_pretrained directory (a run's best/ or last/)")
    evaluate.add_argument("--dataset", required=True, choices=DATASETS, help="data set whose evaluation split to use")
    evaluate.add_argument("--data-dir", default=None,
                          help="root of cifar10/cifar100 or of an image, volume or signal folder")
    evaluate.add_argument("--download", action="store_true", help="let torchvision download cifar10/cifar100")
    evaluate.add_argument("--eval-limit", type=positive_int, default=None, help="use at most N images")
    evaluate.add_argument("--batch-size", type=positive_int, default=None,
                          help="images per forward pass (default: 256; volumes: 4)")
    evaluate.add_argument("--workers", type=count, default=None,
                          help="loader processes for image files (default: half the CPUs, at most 8)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument("--out", default=None, help="where the confusion-matrix PNG goes (default: --weights)")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of the table")
    evaluate.set_defaults(handler=cmd_eval)

    predict = commands.add_parser("predict", help="top-k classes of image files (or volume or signal files, as the "
                                                  "weights say)")
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
    from densenet.data.datasets import DataSpec
    from densenet.deploy.inference import evaluate_dataset, load_model, preprocessing_of
    from densenet.training.distributed import resolve_device
    from densenet.training.plots import plot_confusion

    model = load_model(args.weights, resolve_device(args.device))
    preprocessing = preprocessing_of(model)
    spec = DataSpec(name=args.dataset, data_dir=args.data_dir, download=args.download, image_size=preprocessing.crop,
                    augment="none", in_chans=preprocessing.channels, eval_limit=args.eval_limit)
    batch_size = args.batch_size or (VOLUME_BATCH if preprocessing.spatial_dims == 3 else 256)
    result = evaluate_dataset(model, spec, batch_size=batch_size, workers=args.workers)
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
    from densenet.deploy.inference import load_model, predict, preprocessing_of
    from densenet.training.distributed import resolve_device

    model = load_model(args.weights, resolve_device(args.device))
    batch_size = args.batch_size or (VOLUME_BATCH if preprocessing_of(model).spatial_dims == 3 else 64)
    predictions = predict(model, args.inputs, k=args.top_k, batch_size=batch_size)
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2))
        return 0
    width = max(len(str(p.path)) for p in predictions)
    for prediction in predictions:
        cells = [f"{name} {p:6.2%}" for name, p in zip(prediction.names, prediction.probabilities, strict=True)]
        print(f"{str(prediction.path).ljust(width)}  " + "  ".join(cells))
    return 0
