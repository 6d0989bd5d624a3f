"""Every subcommand's help shows its options' defaults, each once."""

from __future__ import annotations

import re

import pytest

from densenet.cli import build_parser


def _help(capsys, *command: str) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    return capsys.readouterr().out


def test_help_texts_show_defaults_once(capsys):
    predict = " ".join(_help(capsys, "predict").split())  # unwrapped
    assert "classes to show per image (default: 5)" in predict and "cuda:N (default: auto)" in predict
    assert "print JSON instead of the table" in predict and "table (default" not in predict  # off says nothing
    assert "CAM method (default: gradcam)" in " ".join(_help(capsys, "explain").split())
    for command in ("train", "eval", "predict", "bench", "export", "summary", "quantize", "report", "explain"):
        options = re.split(r"\n  -", _help(capsys, command).split("options:")[1])
        assert all(option.count("(default:") <= 1 for option in options), command
