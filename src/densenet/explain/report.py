"""``densenet report``: a run directory as one self-contained HTML page (``RUN_DIR/report.html``).

Everything is inside the file — images as ``data:`` URIs, no script or style from elsewhere — so it opens offline
and can be sent as one attachment. Sections: the recipe (``config.yaml``), the model (closed-form summary, F8/F9),
learning curves (``metrics.csv``), the confusion matrix and per-class precision/recall/F1 of the best weights on
the run's evaluation split (scikit-learn) — for a multi-label run per-label ROC curves and AUROC/AP
(:mod:`~densenet.explain.report_labels`) —, the most confidently wrong evaluation images with their Grad-CAM maps,
and timings. A small script counts the images that decoded (``img.complete && naturalWidth > 0``) into
``<body data-images-loaded>`` and the title, which the browser test reads.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from densenet.analysis import summarize
from densenet.data.datasets import load_split
from densenet.data.images import ImageFiles, ImageTensors
from densenet.data.transforms import normalize_batch
from densenet.deploy.inference import load_input, load_model, preprocessing_of, run_model
from densenet.explain.api import explain
from densenet.explain.cam import is_multi_label, label_thresholds, probabilities
from densenet.explain.report_labels import label_table, label_targets, roc_uri, wrong_label_cards
from densenet.explain.write import panels
from densenet.fileio import write_text
from densenet.meta import Preprocessing


@dataclass
class EvalOutcome:
    """The best weights on the evaluation split: per image (those that could be read) the true class and the
    class probabilities."""

    indices: list[int]
    targets: np.ndarray  # (M,) class indices, or (M, L) labels with nan = unknown
    probabilities: np.ndarray  # (M, K)
    class_names: list[str]
    skipped: int


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """``metrics.csv`` as one dict per epoch.

    Raises:
        FileNotFoundError / ValueError: no metrics yet (the run has not finished an epoch).
    """
    path = run_dir / "metrics.csv"
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a run directory")
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.csv yet: nothing to report until an epoch has finished")
    with path.open(newline="") as handle:
        rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]
    if not rows:
        raise ValueError(f"{path} has no epochs yet: nothing to report until an epoch has finished")
    return rows


def _batch(split: ImageTensors | ImageFiles, indices: list[int], preprocessing: Preprocessing
           ) -> tuple[torch.Tensor, list[int]]:
    """Normalised images ``(B, C, crop, crop)`` of ``indices`` and the indices that could be read."""
    if isinstance(split, ImageTensors):
        return normalize_batch(preprocessing, split.images[indices]), indices
    images, kept = [], []
    for index in indices:
        try:
            images.append(load_input(split.samples[index][0], preprocessing))
            kept.append(index)
        except (ValueError, OSError):  # unreadable: training skipped and logged it too; counted in the report
            continue
    return (torch.stack(images) if images else torch.empty(0)), kept


def evaluate_split(model: torch.nn.Module, split: ImageTensors | ImageFiles, batch_size: int = 256) -> EvalOutcome:
    """Class probabilities of every readable image of ``split``."""
    preprocessing = preprocessing_of(model)
    device = next(model.parameters()).device
    targets = split.targets.tolist() if isinstance(split, ImageTensors) else [  # class indices or (L,) label vectors
        t.tolist() if isinstance(t, torch.Tensor) else t for _, t in split.samples]
    kept, probs = [], []
    for start in range(0, len(split), batch_size):
        images, indices = _batch(split, list(range(start, min(start + batch_size, len(split)))), preprocessing)
        if indices:
            probs.append(probabilities(model, run_model(model, images.to(device))).cpu().numpy())
            kept += indices
    if not kept:
        raise ValueError("no evaluation image could be read")
    return EvalOutcome(kept, np.asarray([targets[i] for i in kept]), np.concatenate(probs), list(split.class_names),
                       len(split) - len(kept))


def _png(figure: object) -> str:
    """A matplotlib figure as a ``data:image/png;base64`` URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)  # type: ignore[attr-defined]
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _curves(history: list[dict[str, float]]) -> str:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.6))
    for axis, metric, label in zip(figure.subplots(1, 2), ("loss", "acc"), ("loss", "top-1 accuracy"), strict=True):
        epochs = [row["epoch"] for row in history]
        for split in ("train", "eval"):
            axis.plot(epochs, [row.get(f"{split}_{metric}", np.nan) for row in history], marker=".", label=split)
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return _png(figure)


def _confusion(confusion: np.ndarray, names: list[str]) -> str:
    from matplotlib.figure import Figure

    side = min(max(4.0, 0.45 * len(names) + 2), 30.0)
    figure = Figure(figsize=(side, side))
    axis = figure.subplots()
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if len(names) <= 30:
        axis.set_xticks(range(len(names)), names, rotation=90)
        axis.set_yticks(range(len(names)), names)
        for (t, p), count in np.ndenumerate(confusion):
            if count:
                axis.text(p, t, str(count), ha="center", va="center", fontsize=8,
                          color="white" if shares[t, p] > 0.5 else "black")
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    figure.tight_layout()
    return _png(figure)


def _wrong_cards(model: torch.nn.Module, split: ImageTensors | ImageFiles, outcome: EvalOutcome, count: int) -> str:
    """The ``count`` most confidently wrong images, each with its Grad-CAM map of the predicted class."""
    from matplotlib.figure import Figure

    predicted = outcome.probabilities.argmax(axis=1)
    confidence = outcome.probabilities.max(axis=1)
    wrong = [i for i in np.argsort(-confidence, kind="stable") if predicted[i] != outcome.targets[i]][:count]
    if not wrong:
        return "<p>Every evaluation image was classified correctly.</p>"
    images, _ = _batch(split, [outcome.indices[i] for i in wrong], preprocessing_of(model))
    cards = []
    for row, explanation in zip(wrong, explain(model, images), strict=True):
        figure = Figure(figsize=(2.4, 2.4))
        axis = figure.subplots()
        axis.imshow(panels(explanation.image, explanation.heatmap)[0][1])
        axis.set_axis_off()
        figure.tight_layout(pad=0.1)
        true_name = outcome.class_names[outcome.targets[row]]
        caption = (f"#{outcome.indices[row]}: true <b>{html.escape(true_name)}</b>, predicted "
                   f"<b>{html.escape(explanation.class_name)}</b> {explanation.probability:.1%}")
        cards.append(f'<figure><img alt="heatmap" src="{_png(figure)}"><figcaption>{caption}</figcaption></figure>')
    return '<div class="cards">' + "".join(cards) + "</div>"


def _table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _classification(outcome: EvalOutcome) -> tuple[str, str]:
    """The confusion matrix (``data:`` URI) and the per-class precision/recall/F1 table (scikit-learn)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(outcome.class_names)))
    predicted = outcome.probabilities.argmax(axis=1)
    confusion = confusion_matrix(outcome.targets, predicted, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(outcome.targets, predicted, labels=labels,
                                                                     zero_division=0)
    rows = [[name, f"{p:.3f}", f"{r:.3f}", f"{f:.3f}", int(s)]
            for name, p, r, f, s in zip(outcome.class_names, precision, recall, f1, support, strict=True)]
    accuracy = float((predicted == outcome.targets).mean())
    table = (f"<p>top-1 accuracy <b>{accuracy:.2%}</b> on {len(outcome.targets)} evaluation images"
             + (f" ({outcome.skipped} unreadable, skipped)" if outcome.skipped else "") + "</p>"
             + _table(["class", "precision", "recall", "F1", "images"], rows))
    return _confusion(confusion, outcome.class_names), table


def _model_section(model: torch.nn.Module) -> str:
    """Architecture, class names and the closed-form summary (F8, F9) at the input size the weights expect."""
    crop = preprocessing_of(model).crop
    summary = summarize(model.config, crop)
    rows = [[row.name, "×".join(map(str, row.output_shape)), f"{row.params:,}", f"{row.macs:,}"]
            for row in summary.rows]
    names = ", ".join(model.meta.class_names or []) or f"{model.config.num_classes} unnamed classes"
    return (f"<p>{html.escape(model.meta.name or 'custom DenseNet')}: {summary.params:,} parameters, "
            f"{summary.macs:,} multiply-adds per {crop}×{crop} image; classes: {html.escape(names)}</p>"
            + _table(["stage", "output", "parameters", "MACs"], rows))


def _timings(history: list[dict[str, float]]) -> str:
    rows = [[int(row["epoch"]), f"{row.get('train_seconds', float('nan')):.2f}",
             f"{row.get('images_per_second', float('nan')):.0f}"] for row in history]
    total = sum(row.get("train_seconds", 0.0) for row in history)
    return f"<p>{total:.1f} s of training over {len(history)} epochs</p>" + _table(
        ["epoch", "training seconds", "images/s"], rows)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 70em; }} table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }} pre {{ background: #f6f6f6; padding: 1em; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 1em; }} figure {{ margin: 0; width: 14em; }} img {{ max-width: 100%; }}
</style></head>
<body data-images-loaded="pending">
<h1>{title}</h1>
{sections}
<script>
window.addEventListener("load", function () {{
  var images = Array.from(document.images);
  var loaded = images.filter(function (img) {{ return img.complete && img.naturalWidth > 0; }}).length;
  document.body.dataset.imagesLoaded = loaded + "/" + images.length;
  document.title = document.title + " [images " + loaded + "/" + images.length + "]";
}});
</script>
</body></html>
"""


def _section(key: str, heading: str, body: str) -> str:
    return f'<section id="{key}"><h2>{html.escape(heading)}</h2>{body}</section>'


def _class_sections(model: torch.nn.Module, split: ImageTensors | ImageFiles, outcome: EvalOutcome,
                    wrong: int) -> list[str]:
    """Single-label: the confusion matrix, per-class precision/recall/F1, the most confidently wrong images."""
    confusion_uri, per_class = _classification(outcome)
    return [
        _section("confusion", "Confusion matrix (best weights)", f'<img alt="confusion matrix" src="{confusion_uri}">'),
        _section("per-class", "Per-class precision, recall, F1", per_class),
        _section("wrong", "Most confidently wrong (Grad-CAM of the predicted class)",
                 _wrong_cards(model, split, outcome, wrong)),
    ]


def _label_sections(model: torch.nn.Module, split: ImageTensors | ImageFiles, outcome: EvalOutcome,
                    wrong: int) -> list[str]:
    """Multi-label (:mod:`~densenet.explain.report_labels`): per-label ROC curves, AUROC/AP/threshold per label,
    the most confidently wrong label decisions."""
    targets, names = label_targets(split, outcome.indices), outcome.class_names  # (M, L)
    thresholds = label_thresholds(model, len(names)).numpy()
    preprocessing = preprocessing_of(model)
    return [
        _section("roc", "Per-label ROC curves (best weights)",
                 f'<img alt="ROC curves" src="{roc_uri(targets, outcome.probabilities, names)}">'),
        _section("per-label", "Per-label AUROC, average precision and saved threshold",
                 label_table(targets, outcome.probabilities, names, thresholds, _table)),
        _section("wrong", "Most confidently wrong label decisions (Grad-CAM of the label)",
                 wrong_label_cards(model, lambda indices: _batch(split, indices, preprocessing), outcome.indices,
                                   targets, outcome.probabilities, names, wrong, _png)),
    ]


def render_report(run_dir: Path, wrong: int = 8, device: str | torch.device = "cpu") -> str:
    """The report page of ``run_dir`` as HTML text.

    Raises:
        FileNotFoundError / ValueError: no metrics yet, no ``best/`` weights, or the evaluation data is gone.
    """
    from densenet.training.recipe import load_config

    history = read_metrics(run_dir)
    if not (run_dir / "best" / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} has no best/ weights yet: nothing to report until an epoch has finished")
    recipe_text = (run_dir / "config.yaml").read_text()
    model = load_model(run_dir / "best", device)
    split = load_split(load_config(run_dir / "config.yaml").data_spec(), "eval", preprocessing_of(model))
    outcome = evaluate_split(model, split)
    results = _label_sections if is_multi_label(model) else _class_sections
    sections = [
        _section("recipe", "Recipe", f"<pre>{html.escape(yaml.safe_dump(yaml.safe_load(recipe_text)))}</pre>"),
        _section("model", "Model", _model_section(model)),
        _section("curves", "Learning curves", f'<img alt="learning curves" src="{_curves(history)}">'),
        *results(model, split, outcome, wrong),
        _section("timings", "Timings", _timings(history)),
    ]
    return PAGE.format(title=html.escape(f"densenet run {run_dir.resolve().name}"), sections="\n".join(sections))


def write_report(run_dir: str | Path, wrong: int = 8, device: str | torch.device = "cpu") -> Path:
    """Write ``run_dir/report.html`` (atomically) and return its path."""
    run_dir = Path(run_dir)
    page = render_report(run_dir, wrong, device)
    path = run_dir / "report.html"
    write_text(path, page)
    return path
