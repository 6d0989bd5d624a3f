"""Per-label ROC-curve files: names safe for file systems, distinct, one PNG per label."""

from __future__ import annotations

import math

import torch

from densenet.fileio import MAX_STEM
from densenet.training.multilabel import MultiLabelResult
from densenet.training.roc_files import label_file_stems, plot_label_rocs


def test_label_file_stems_are_safe_and_distinct():
    names = ["Pleural Effusion", "left/right", "../etc", "Ödem: 1", "nul", "Mass", "mass", "mass", "", "x" * 300]
    assert label_file_stems(names) == ["Pleural_Effusion", "left_right", "_etc", "_dem_1", "nul_", "Mass", "mass-2",
                                       "mass-3", "label", "x" * MAX_STEM]


def test_plot_label_rocs_writes_one_png_per_label(tmp_path):
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, float("nan")], [0.0, 0.0]])  # (N, L): label b one class
    result = MultiLabelResult(samples=4, class_names=["a", "b/c"], probabilities=torch.tensor([[0.9, 0.2], [0.1, 0.3],
                                                                                   [0.8, 0.5], [0.3, 0.1]]),
                              targets=targets, loss=0.5, auroc=[1.0, math.nan], ap=[1.0, math.nan],
                              thresholds=[0.5, 0.5], accuracy=1.0)
    paths = plot_label_rocs(result, tmp_path / "roc", "test")
    assert paths == {"a": tmp_path / "roc" / "a.png", "b/c": tmp_path / "roc" / "b_c.png"}
    assert all(path.read_bytes()[:4] == b"\x89PNG" for path in paths.values())
