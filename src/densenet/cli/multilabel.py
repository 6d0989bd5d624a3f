"""``densenet eval`` of multi-label weights: per-label AUROC, average precision and thresholds, and the ROC curves."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from densenet.meta import ModelMeta
from densenet.training.multilabel import DEFAULT_THRESHOLD, MultiLabelResult
from densenet.training.plots import plot_roc_curves
from densenet.training.roc_files import plot_label_rocs


def report_multilabel(args: argparse.Namespace, result: MultiLabelResult, meta: ModelMeta, out: Path) -> int:
    """Write ``eval_<dataset>_roc.png`` (every label's curve) and ``eval_<dataset>_roc/<label>.png`` (one per label)
    into ``out`` and print the per-label table (or JSON with ``--json``); the thresholds shown are the ones saved
    with the weights (chosen on the training run's validation split)."""
    figure = plot_roc_curves(result, out / f"eval_{args.dataset}_roc.png", title=f"{args.dataset}: {result.headline()}")
    per_label = plot_label_rocs(result, out / f"eval_{args.dataset}_roc", title=args.dataset)
    saved = list(meta.thresholds or (DEFAULT_THRESHOLD,) * len(result.class_names))
    if args.json:
        report = {"weights": str(args.weights), "dataset": args.dataset, **result.to_dict(), "roc_png": str(figure)}
        for name, threshold in zip(result.class_names, saved, strict=True):
            report["per_label"][name]["saved_threshold"] = threshold
            report["per_label"][name]["roc_png"] = str(per_label[name])
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.weights} on {args.dataset} ({result.samples} images, {len(result.class_names)} labels): "
          f"{result.headline()}  label accuracy {result.accuracy:.2%}  loss {result.loss:.4f}")
    width = max(len(name) for name in result.class_names)
    print(f"  {'label'.ljust(width)}   AUROC      AP  threshold  ROC curve")
    for name, auroc, ap, threshold in zip(result.class_names, result.auroc, result.ap, saved, strict=True):
        cells = "  one class" if math.isnan(auroc) else f"  {auroc:.4f}  {ap:.4f}"
        print(f"  {name.ljust(width)} {cells}  {threshold:9.4f}  {per_label[name]}")
    print(f"ROC curves: {figure} (all labels), {figure.with_suffix('')}/ (one PNG per label)")
    return 0
