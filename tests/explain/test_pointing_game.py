"""Proof that the maps mean something: on a generated localisation set trained through the CLI, the Grad-CAM
maximum falls inside the object's box (pointing game) for ≥ 85 % of the test images, for the weights as loaded
from ``best/`` (the default memory-efficient model) and optimized alike; with every weight re-drawn (Adebayo et al.'s
randomisation check) the score drops to chance, the fraction of the image the boxes cover."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import densenet
from densenet.explain.checks import box_fraction, pointing_game, randomized_copy


def _test_images(data: Path) -> tuple[list[Path], list[list[int]], list[str]]:
    boxes = json.loads((data / "boxes.json").read_text())
    names = sorted(name for name in boxes if name.startswith("test/"))
    return [data / name for name in names], [boxes[name] for name in names], [Path(n).parent.name for n in names]


def test_maps_point_at_the_object_and_not_after_randomisation(localisation_run, localisation_data, capsys):
    paths, boxes, classes = _test_images(localisation_data)
    model = densenet.from_pretrained(localisation_run / "best")
    assert model.config.memory_efficient  # the form our tool trains and saves by default
    trained = densenet.explain(model, paths, targets=classes)
    score = pointing_game([e.heatmap for e in trained], boxes)
    optimized = densenet.explain(densenet.optimize_for_inference(model), paths, targets=classes)
    for plain, fast in zip(trained, optimized, strict=True):
        np.testing.assert_allclose(plain.heatmap, fast.heatmap, atol=1e-3)
    random_scores = [pointing_game([e.heatmap for e in densenet.explain(randomized_copy(model, seed), paths,
                                                                          targets=classes)], boxes)
                     for seed in range(5)]
    chance = box_fraction(boxes, (24, 24))
    with capsys.disabled():
        print(f"\npointing game on {len(paths)} test images: trained {score:.3f}, randomized "
              f"{np.mean(random_scores):.3f} (seeds: {', '.join(f'{s:.3f}' for s in random_scores)}), "
              f"chance {chance:.3f}")
    assert score >= 0.85
    assert np.mean(random_scores) <= 2 * chance  # chance: 0.085 for 7×7 boxes in 24×24 images


def test_predicted_class_maps_point_too(localisation_run, localisation_data):
    """Without a requested class the predicted one is explained; on the images classified right it points as well."""
    paths, boxes, classes = _test_images(localisation_data)
    explanations = densenet.explain(densenet.from_pretrained(localisation_run / "best"), paths)
    right = [(e.heatmap, box) for e, box, c in zip(explanations, boxes, classes, strict=True) if e.class_name == c]
    assert len(right) >= 0.8 * len(paths)
    assert pointing_game(*zip(*right, strict=True)) >= 0.85
    assert all(0 < e.probability <= 1 for e in explanations)
