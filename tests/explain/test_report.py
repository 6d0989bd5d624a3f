"""``densenet report`` / ``densenet train --report``: one self-contained HTML page, checked in headless Chromium
with no network; a page that needs the network or shows a broken image fails the same check."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from browser import check_report, chromium
from densenet.cli import main

SECTIONS = ("recipe", "model", "curves", "confusion", "per-class", "wrong", "timings")
# CI sets DENSENET_REQUIRE_CHROMIUM=1 (.ci/run): there a missing browser fails the tests instead of skipping them.
needs_chromium = pytest.mark.skipif(
    chromium() is None and not os.environ.get("DENSENET_REQUIRE_CHROMIUM"),
    reason="chromium is not installed (make test installs it)")


def test_train_report_is_self_contained_and_complete(localisation_run):
    page = localisation_run / "report.html"  # written by densenet train --report (the fixture)
    text = page.read_text()
    assert all(f'<section id="{key}">' in text for key in SECTIONS)
    images = re.findall(r'<img alt="[^"]*" src="([^"]*)"', text)
    assert len(images) >= 3 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "background, cross, ring, square" in text and "precision" in text and "training seconds" in text
    assert "true <b>" in text or "Every evaluation image was classified correctly" in text


def test_report_metrics_agree_with_densenet_eval(localisation_run, localisation_data, tmp_path, capsys):
    """The report's accuracy and per-class recall are those ``densenet eval`` computes for best/ (another path:
    training.metrics' accumulator over the loader's batches)."""
    assert main(["eval", "--weights", str(localisation_run / "best"), "--dataset", "folder", "--data-dir",
                 str(localisation_data), "--json", "--out", str(tmp_path)]) == 0
    evaluation = json.loads(capsys.readouterr().out)
    text = (localisation_run / "report.html").read_text()
    assert f"top-1 accuracy <b>{evaluation['top1']:.2%}</b> on {evaluation['samples']} evaluation images" in text
    for name, recall in evaluation["per_class"].items():
        assert f"<td>{name}</td><td>" in text and f"</td><td>{recall:.3f}</td>" in text


def test_report_command_rewrites_the_page(localisation_run, capsys):
    page = localisation_run / "report.html"
    page.write_text("stale")
    assert main(["report", str(localisation_run), "--wrong", "2"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {page}"
    assert page.read_text().count("<figure>") <= 2 and "<section id=\"wrong\">" in page.read_text()


@needs_chromium
def test_report_renders_in_a_browser(localisation_run, tmp_path):
    rendering = check_report(localisation_run / "report.html", tmp_path / "report.png", SECTIONS)
    assert rendering.loaded >= 3


@needs_chromium
def test_a_page_with_a_network_or_broken_image_fails_the_check(localisation_run, tmp_path):
    text = (localisation_run / "report.html").read_text()
    remote = tmp_path / "remote.html"  # a page that needs the network: caught before rendering
    remote.write_text(text.replace("</h1>", '</h1><img alt="logo" src="https://example.com/logo.png">', 1))
    with pytest.raises(AssertionError, match="refers to other hosts"):
        check_report(remote, tmp_path / "remote.png", SECTIONS)
    # a broken image (a truncated PNG) and an image whose address is built at run time (not in the HTML text, so
    # only the browser can tell that it needs the network): offline, neither loads
    broken = ('<img alt="broken" src="data:image/png;base64,iVBORw0KGgo="><img id="late" alt="late">'
              '<script>document.getElementById("late").src = "ht" + "tp://example.com/x.png";</script>')
    page = tmp_path / "broken.html"
    page.write_text(text.replace("</h1>", "</h1>" + broken, 1))
    total = text.count("<img") + 2
    with pytest.raises(AssertionError, match=rf"only {total - 2} of {total} images loaded"):
        check_report(page, tmp_path / "broken.png", SECTIONS)


def test_a_run_without_metrics_is_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["report", str(tmp_path / "run")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"densenet report: error: {tmp_path / 'run'} has no metrics.csv yet: nothing to report until an "
                     "epoch has finished"]
    (tmp_path / "run" / "metrics.csv").write_text("epoch,train_loss\n")
    assert main(["report", str(tmp_path / "run")]) == 1
    assert "has no epochs yet" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "run")
    assert main(["report", str(tmp_path / "run")]) == 1
    assert "is not a run directory" in capsys.readouterr().err
