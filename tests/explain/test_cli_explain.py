"""``densenet explain`` end to end on the localisation run, and its bad input as one line each."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import densenet
from densenet.cli import main
from densenet.explain.checks import points_inside


def _one_line_error(capsys, argv: list[str], command: str, pattern: str) -> None:
    assert main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"densenet {command}: error: "), lines
    assert re.search(pattern, lines[0]), lines[0]


def test_explain_writes_overlay_and_map_per_image(localisation_run, localisation_data, tmp_path, capsys):
    boxes = json.loads((localisation_data / "boxes.json").read_text())
    names = ["test/square/000.png", "test/cross/001.png", "test/ring/002.png"]
    wide = tmp_path / "wide.png"  # another size and shape than the network's 24×24: the map comes back at 40×30
    Image.open(localisation_data / names[0]).resize((40, 30)).save(wide)
    out = tmp_path / "maps"
    argv = ["explain", "--weights", str(localisation_run / "best"), *(str(localisation_data / n) for n in names),
            str(wide), "--out", str(out), "--json"]
    assert main(argv) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    hits: list[bool] = []
    assert [Path(r["path"]).name for r in records] == ["000.png", "001.png", "002.png", "wide.png"]
    # the same answers as the Python API on the model as loaded (the CLI runs the optimized model)
    api = densenet.explain(densenet.from_pretrained(localisation_run / "best"),
                           [*(localisation_data / n for n in names), wide])
    assert [r["class"] for r in records] == [e.class_name for e in api]
    assert [r["probability"] for r in records] == pytest.approx([e.probability for e in api], abs=1e-4)
    for record, name, expected in zip(records, [*names, None], api, strict=True):
        stem = Path(record["path"]).stem
        assert record["files"] == [str(out / f"{stem}.png"), str(out / f"{stem}.npy")]
        assert 0.25 < record["probability"] <= 1  # four classes
        assert Image.open(out / f"{stem}.png").format == "PNG"
        heatmap = np.load(out / f"{stem}.npy")
        assert heatmap.dtype == np.float32 and heatmap.min() >= 0 and heatmap.max() <= 1
        assert heatmap.shape == ((24, 24) if name else (30, 40))
        np.testing.assert_allclose(heatmap, expected.heatmap, atol=1e-3)
        if name and record["class"] == Path(name).parent.name:
            hits.append(points_inside(heatmap, boxes[name]))
    assert sum(hits) >= 2  # of the three; the pointing game over the whole test split is test_pointing_game's
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.{e}" for s in ("000", "001", "002", "wide")
                                                           for e in ("png", "npy"))

    assert main(["explain", "--weights", str(localisation_run / "best"), str(localisation_data / names[0]),
                 "--target", "ring", "--method", "layercam", "--out", str(tmp_path / "ring")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(localisation_data / names[0])) and " ring " in line and line.endswith("000.npy")


def test_bad_explain_input_is_one_line(localisation_run, localisation_data, tmp_path, capsys):
    weights, image = str(localisation_run / "best"), str(localisation_data / "test/ring/000.png")
    _one_line_error(capsys, ["explain", "--weights", weights, image, "--target", "hexagon", "--out", str(tmp_path)],
                    "explain", r"unknown class 'hexagon': the weights know background, cross, ring, square")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    _one_line_error(capsys, ["explain", "--weights", weights, str(text), "--out", str(tmp_path / "o")], "explain",
                    r"cannot read image .*notes\.png")
    _one_line_error(capsys, ["explain", "--weights", weights, str(tmp_path / "missing.png"), "--out", str(tmp_path)],
                    "explain", r"missing\.png does not exist")
    twin = tmp_path / "twin" / "000.png"
    twin.parent.mkdir()
    twin.write_bytes(Path(image).read_bytes())
    _one_line_error(capsys, ["explain", "--weights", weights, image, str(twin), "--out", str(tmp_path / "o")],
                    "explain", r"would both write 000\.png")
    assert not (tmp_path / "o").exists()  # nothing half-written
