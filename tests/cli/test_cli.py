"""The `densenet summary` and `densenet list` commands, and the one-line error contract."""

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

import densenet
from densenet.cli import build_parser, main


def test_summary_densenet121(capsys):
    assert main(["summary", "densenet121"]) == 0
    out = capsys.readouterr().out
    assert "densenet121: input 3×224×224, 1000 classes" in out
    assert "Conv1            3×224×224   64×112×112  7×7" in out
    assert "trainable parameters   7,978,856" in out
    assert "(2.834 G; paper order: conv, then pool)" in out
    assert "denselayer1" not in out


def test_summary_detail_and_json(capsys):
    assert main(["summary", "densenet121", "--detail"]) == 0
    assert "denselayer24" in capsys.readouterr().out
    assert main(["summary", "densenet_bc100_k12", "--json", "--batch-size", "64"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input_size"] == 32 and data["batch_size"] == 64
    assert data["totals"]["params"] == sum(p.numel() for p in densenet.create_model("densenet_bc100_k12").parameters())


def test_summary_spatial_dims(capsys):
    """``--spatial-dims 3``: the volume table (96³ by default for the ImageNet stem), parameters counted with K³ and
    equal to the 3D model's; no 2D pretrained weights listed beside it."""
    assert main(["summary", "densenet121", "--spatial-dims", "3"]) == 0
    out = capsys.readouterr().out
    assert "densenet121: input 3×96×96×96, 1000 classes" in out
    assert "7·7·7·3·64 + BN 2·64 = 65,984" in out
    count = sum(p.numel() for p in densenet.create_model("densenet121", spatial_dims=3).parameters())
    assert f"trainable parameters   {count:,}" in out
    assert "pretrained weights" not in out
    assert main(["summary", "densenet40_k12", "--spatial-dims", "1", "--input-size", "100"]) == 0
    assert "densenet40_k12: input 3×100, 10 classes" in capsys.readouterr().out


def test_summary_of_saved_directory(tmp_path, capsys):
    densenet.create_model("densenet40_k12", num_classes=3).save_pretrained(tmp_path)
    assert main(["summary", str(tmp_path), "--input-size", "40"]) == 0
    assert "densenet40_k12: input 3×40×40, 3 classes" in capsys.readouterr().out


def test_list(capsys):
    assert main(["list", "densenet1*"]) == 0
    assert capsys.readouterr().out.split() == ["densenet100_k12", "densenet100_k24", "densenet121", "densenet161",
                                               "densenet169"]


def test_list_pretrained_and_summary_show_the_weights(capsys):
    assert main(["list", "--pretrained"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [f"densenet{n}.imagenet1k" for n in (121, 161, 169, 201)]
    assert "acc@1 74.434  acc@5 91.972  7,978,856 parameters  30.8 MB" in lines[0]
    assert main(["list", "densenet12*", "--pretrained", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["url"].endswith("/densenet121-a639ec97.pth") and entry["preprocessing"]["crop"] == 224
    assert main(["summary", "densenet161"]) == 0
    assert "pretrained weights     densenet161.imagenet1k      acc@1 77.138" in capsys.readouterr().out
    assert main(["summary", "densenet_bc100_k12", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pretrained"] == []

def test_bad_name_is_one_line_error(capsys):
    """In this process; a real process's: tests/cli/test_cli_train.py."""
    assert main(["summary", "densnet121"]) == 1
    out, err = capsys.readouterr()
    expected = "densenet summary: error: unknown model 'densnet121'; closest: densenet121,"
    assert err.strip().startswith(expected)
    assert len(err.strip().splitlines()) == 1
    assert out == ""


def test_bad_input_size_is_one_line_error(capsys):
    assert main(["summary", "densenet121", "--input-size", "16"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "at least 29" in err


@pytest.mark.parametrize("argv, message", [
    (["train", "--batch-size", "x"], "densenet train: error: argument --batch-size: invalid int value: 'x'"),
    (["eval", "--weights", "w", "--dataset", "imagenet"], "densenet eval: error: argument --dataset: invalid choice"),
    (["predict", "--weights", "w", "a.png", "--colour"], "densenet predict: error: unrecognized arguments: --colour"),
    (["frobnicate"], "densenet: error: argument COMMAND: invalid choice: 'frobnicate'"),
])
def test_command_line_that_does_not_parse_is_one_line_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message) and lines[0].endswith("--help)"), lines


def test_densenet_debug_shows_the_traceback(monkeypatch):
    """``DENSENET_DEBUG=1``: the user's mistake raises (the traceback shows) instead of the one line, exit status 1."""
    debug = subprocess.run([sys.executable, "-m", "densenet", "summary", "densnet121"], capture_output=True, text=True,
                           check=False, env={**os.environ, "DENSENET_DEBUG": "1"})
    assert debug.returncode == 1 and debug.stdout == ""
    assert debug.stderr.startswith("Traceback (most recent call last):")
    assert debug.stderr.strip().splitlines()[-1].startswith("ValueError: unknown model 'densnet121'")
    assert "densenet summary: error:" not in debug.stderr
    monkeypatch.setenv("DENSENET_DEBUG", "1")
    with pytest.raises(ValueError, match="unknown model 'densnet121'"):
        main(["summary", "densnet121"])
    monkeypatch.delenv("DENSENET_DEBUG")
    assert main(["summary", "densnet121"]) == 1  # without it: the one line (test_bad_name_is_one_line_error)


def test_every_subcommand_is_registered_and_the_entry_point_is_main():
    parser = build_parser()
    (commands,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    assert list(commands.choices) == ["summary", "list", "train", "demo", "eval", "predict", "export", "quantize",
                                      "bench", "explain", "report"]
    (script,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "densenet"]
    assert script.value == "densenet.cli:main" and script.load() is main
