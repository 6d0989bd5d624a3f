"""Promises about the repository's committed files rather than the package: benchmark results name no directory
of the machine they ran on."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = sorted((ROOT / "benchmarks" / "results").glob("*.json"))


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return [value] if isinstance(value, str) else []


@pytest.mark.parametrize("path", RESULTS, ids=[path.name for path in RESULTS])
def test_committed_results_hold_no_absolute_path(path):
    absolute = [s for s in _strings(json.loads(path.read_text())) if s.startswith("/")]
    assert not absolute, f"{path.name} records absolute paths: {absolute[:3]}"


def test_results_writer_makes_paths_portable():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from harness import portable
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    home = str(Path.home())
    data = {"run": str(ROOT / "runs" / "x"), "cache": [f"{home}/.cache/data"], "other": "/opt/elsewhere", "n": 3}
    assert portable(data) == {"run": "runs/x", "cache": ["~/.cache/data"], "other": "/opt/elsewhere", "n": 3}
