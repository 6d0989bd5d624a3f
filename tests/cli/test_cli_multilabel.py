"""CSV data sets through the CLI: the generated multi-label shapes learn (train → eval → predict), a single-label
CSV trains, and malformed CSVs are one-line errors."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from densenet.cli import main
from densenet.data.shapes import LABELS, write_shapes_dataset
from imagefolder import CLASSES, make_image_folder

TINY_FLAGS = ["--model-arg", "block_config=[2,2]", "--model-arg", "growth_rate=8", "--log-every", "0",
              "--workers", "0"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), train=256, val=96, size=32, seed=1)


@pytest.fixture(scope="module")
def shapes_run(shapes, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "shapes"
    code = main(["train", "--dataset", "csv", "--data-dir", str(shapes), "--image-size", "32", "--epochs", "6",
                 "--batch-size", "16", "--lr", "0.3", "--schedule", "cosine", "--augment", "none", "--pos-weight",
                 "auto", "--out", str(run), *TINY_FLAGS])
    assert code == 0
    return run


def test_generated_multi_label_set_learns(shapes_run, shapes, capsys, tmp_path):
    with (shapes_run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {"eval_mean_auroc", "eval_mean_ap", *(f"eval_auroc/{name}" for name in LABELS)} <= set(rows[0])
    best = max(float(row["eval_mean_auroc"]) for row in rows)
    assert best >= 0.85  # chance is 0.5; the full-size run (benchmarks/NOTES.md) reaches ≥ 0.95
    assert float(rows[-1]["eval_auroc/stripes"]) > 0.99  # the texture is the easiest label
    saved = json.loads((shapes_run / "best" / "config.json").read_text())
    assert saved["task"] == "multi_label" and saved["class_names"] == list(LABELS)
    assert len(saved["thresholds"]) == len(LABELS) and all(0 < t < 1 for t in saved["thresholds"])
    assert (shapes_run / "roc_curves.png").read_bytes()[:4] == b"\x89PNG"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(shapes_run / "tensorboard"))
    events.Reload()
    assert {"eval/mean_auroc", "eval/mean_ap", "eval/auroc/cross", "eval/ap/cross"} <= set(events.Tags()["scalars"])
    assert events.Scalars("eval/mean_auroc")[-1].value == pytest.approx(float(rows[-1]["eval_mean_auroc"]))

    assert main(["eval", "--weights", str(shapes_run / "best"), "--dataset", "csv", "--data-dir", str(shapes),
                 "--json", "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "multi_label" and report["samples"] == 96
    assert report["mean_auroc"] == pytest.approx(best, abs=2e-3)  # best/ is the epoch with the best mean AUROC
    assert [report["per_label"][name]["saved_threshold"] for name in LABELS] == pytest.approx(saved["thresholds"])
    assert Path(report["roc_png"]).read_bytes()[:4] == b"\x89PNG"

    assert main(["eval", "--weights", str(shapes_run / "best"), "--dataset", "csv", "--data-dir", str(shapes),
                 "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "mean AUROC" in table and all(f"  {name}" in table for name in LABELS) and "ROC curves:" in table

    files = sorted((shapes / "images" / "val").glob("*.png"))[:6]
    assert main(["predict", "--weights", str(shapes_run / "best"), *map(str, files), "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    truth = _truth(shapes / "val.csv")
    for prediction in predictions:
        probabilities = prediction["probabilities"]
        assert list(probabilities) == list(LABELS)
        assert prediction["positives"] == [name for name, t in zip(LABELS, saved["thresholds"], strict=True)
                                           if probabilities[name] >= t]
        expected = truth[Path(prediction["file"]).name]["stripes"]
        if expected != "":
            assert ("stripes" in prediction["positives"]) == (expected == "1")
    assert main(["predict", "--weights", str(shapes_run / "best"), str(files[0])]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(files[0])) and line.count("%") == len(LABELS) and "positives: " in line


def _truth(table: Path) -> dict[str, dict[str, str]]:
    with table.open() as handle:
        return {Path(row["path"]).name: row for row in csv.DictReader(handle)}


def test_single_label_csv_trains(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "colours", train=12, val=4, size=16)
    for split, table in (("train", "train.csv"), ("val", "val.csv")):
        rows = ["path,label"] + [f"{path.relative_to(folder)},{path.parent.name}"
                                 for path in sorted((folder / split).rglob("*.*"))]
        (folder / table).write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    assert main(["train", "--dataset", "csv", "--data-dir", str(folder), "--image-size", "16", "--epochs", "3",
                 "--batch-size", "12", "--lr", "0.05", "--out", str(run), *TINY_FLAGS]) == 0
    assert "final eval top-1" in capsys.readouterr().out
    saved = json.loads((run / "best" / "config.json").read_text())
    assert saved["task"] == "single_label" and saved["class_names"] == sorted(CLASSES) and saved["thresholds"] is None
    assert main(["eval", "--weights", str(run / "best"), "--dataset", "csv", "--data-dir", str(folder), "--json",
                 "--out", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 12


def _one_line_error(capsys, argv: list[str], command: str, pattern: str) -> None:
    assert main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"densenet {command}: error: "), lines
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize(("table", "pattern"), [
    ("", r"train\.csv is empty"),
    ("file,a,b\nimages/train/00000.png,1,0\n", "has no 'path' column"),
    ("path,a,b\nimages/train/missing.png,1,0\n", r"line 2: file .*missing\.png does not exist"),
    ("path,a,b\nimages/train/00000.png,1,maybe\n", "line 2: column 'b' holds 'maybe'"),
])
def test_bad_csv_is_one_line_error(shapes, tmp_path, capsys, table, pattern):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "images").symlink_to(shapes / "images")
    (root / "train.csv").write_text(table)
    (root / "val.csv").write_text("path,a,b\nimages/val/00000.png,1,0\n")
    _one_line_error(capsys, ["train", "--dataset", "csv", "--data-dir", str(root), "--epochs", "1",
                             "--out", str(tmp_path / "run"), *TINY_FLAGS], "train", pattern)
    assert not (tmp_path / "run").exists()


def test_task_mismatches_are_one_line_errors(shapes, shapes_run, tmp_path, capsys):
    folder = make_image_folder(tmp_path / "colours", train=2, val=2, size=16)
    _one_line_error(capsys, ["train", "--dataset", "folder", "--data-dir", str(folder), "--pos-weight", "auto",
                             "--out", str(tmp_path / "run"), *TINY_FLAGS], "train", "--pos-weight applies to multi")
    _one_line_error(capsys, ["eval", "--weights", str(shapes_run / "best"), "--dataset", "folder", "--data-dir",
                             str(folder)], "eval", "the weights are multi-label; folder's evaluation split is single")


def test_multilabel_demo(shapes, tmp_path, capsys):
    assert main(["demo", "--multilabel", "--data-dir", str(shapes), "--epochs", "1", "--train-limit", "64",
                 "--eval-limit", "32", "--samples", "2", "--out", str(tmp_path / "run"), "--log-every", "0"]) == 0
    out = capsys.readouterr().out
    assert "multi-label shapes (circle, square, triangle, cross, stripes): final mean AUROC" in out
    assert out.count("images/val/") == 2 and "predicted " in out and " true " in out
    assert json.loads((tmp_path / "run" / "best" / "config.json").read_text())["task"] == "multi_label"


LABEL_SECTIONS = ("recipe", "model", "curves", "roc", "per-label", "wrong", "timings")


def test_report_of_a_multi_label_run(shapes_run, shapes, tmp_path, capsys):
    """``densenet report`` on a multi-label run: per-label ROC curves and AUROC/AP (the means those ``densenet eval``
    computes through the training metrics, another path), the most confidently wrong label decisions with heatmaps;
    rendered offline in Chromium when it is installed."""
    assert main(["report", str(shapes_run), "--wrong", "3"]) == 0
    page = shapes_run / "report.html"
    text = page.read_text()
    assert all(f'<section id="{key}">' in text for key in LABEL_SECTIONS) and 'id="confusion"' not in text
    means = re.search(r"mean AUROC <b>([\d.]+)</b>, mean AP <b>([\d.]+)</b>", text)
    assert means, "no mean AUROC/AP in the page"
    capsys.readouterr()
    assert main(["eval", "--weights", str(shapes_run / "best"), "--dataset", "csv", "--data-dir", str(shapes),
                 "--json", "--out", str(tmp_path)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert float(means.group(1)) == pytest.approx(evaluated["mean_auroc"], abs=1e-3)
    assert float(means.group(2)) == pytest.approx(evaluated["mean_ap"], abs=1e-3)
    wrong = re.search(r'<section id="wrong">.*?</section>', text, re.S).group(0)
    assert wrong.count('<img alt="heatmap" src="data:image/png;base64,') == 3
    from browser import check_report, chromium

    if chromium() is not None:
        check_report(page, tmp_path / "report.png", LABEL_SECTIONS)


def test_explain_a_multi_label_model_per_requested_label(shapes_run, shapes, tmp_path, capsys):
    files = sorted((shapes / "images" / "val").glob("*.png"))[:2]
    capsys.readouterr()
    assert main(["explain", "--weights", str(shapes_run / "best"), *map(str, files), "--target", "square",
                 "--target", "stripes", "--out", str(tmp_path / "maps"), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(Path(r["path"]).name, r["class"]) for r in records] == [
        (f.name, label) for f in files for label in ("square", "stripes")]
    assert {p.name for p in (tmp_path / "maps").iterdir()} == {
        f"{f.stem}_{label}.{ext}" for f in files for label in ("square", "stripes") for ext in ("png", "npy")}
