"""training.metrics.Accumulator on hand-made logits: every expected value below is worked out by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

from densenet.training.metrics import Accumulator

NAMES = ["a", "b", "c", "d", "e", "f", "g", "h"]  # "h" is never a target and never predicted (its logit is -10)

# (target, logits of classes a..g); each comment: the top-1 prediction, then the five highest classes.
BATCH_1 = [
    (0, [9, 1, 2, 3, 4, 5, 6]),  # a; a g f e d: top-1 hit
    (1, [0, 8, 1, 2, 3, 4, 5]),  # b; b g f e d: top-1 hit
    (2, [5, 0, 1, 2, 3, 4, 6]),  # g; g a f e d: miss, c not in the top five either
    (3, [1, 2, 3, 0, 9, 4, 5]),  # e; e g f c b: miss, d not in the top five
    (5, [9, 8, 7, 6, 0, 5, 1]),  # a; a b c d f: top-5 hit only
    (6, [1, 2, 3, 4, 5, 6, 7]),  # g; g f e d c: top-1 hit
]
BATCH_2 = [
    (0, [3, 9, 1, 2, 0, -1, -2]),  # b; b a d c e: top-5 hit only
    (4, [1, 2, 3, 4, 5, 6, 7]),  # g; g f e d c: top-5 hit only
    (6, [7, 6, 5, 4, 3, 2, 1]),  # a; a b c d e: miss
    (1, [-1, 2, 0, 0.5, -3, -2, 1]),  # b; b g d c a: top-1 hit
]

# confusion[true][predicted], by hand from the comments above
CONFUSION = [
    [1, 1, 0, 0, 0, 0, 0, 0],  # a: once a, once b
    [0, 2, 0, 0, 0, 0, 0, 0],  # b: twice b
    [0, 0, 0, 0, 0, 0, 1, 0],  # c: as g
    [0, 0, 0, 0, 1, 0, 0, 0],  # d: as e
    [0, 0, 0, 0, 0, 0, 1, 0],  # e: as g
    [1, 0, 0, 0, 0, 0, 0, 0],  # f: as a
    [1, 0, 0, 0, 0, 0, 1, 0],  # g: once a, once g
    [0, 0, 0, 0, 0, 0, 0, 0],  # h: no image
]


def _batch(rows: list[tuple[int, list[float]]]) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.tensor([[*values, -10.0] for _, values in rows])  # (B, 8)
    targets = torch.tensor([target for target, _ in rows])  # (B,)
    return logits, targets


def _accumulate(*batches: tuple[list[tuple[int, list[float]]], float]) -> Accumulator:
    accumulator = Accumulator(NAMES)
    for rows, loss_sum in batches:
        accumulator.update(*_batch(rows), loss_sum=loss_sum)
    return accumulator


def test_hand_made_logits_give_the_hand_counted_metrics():
    result = _accumulate((BATCH_1, 3.0), (BATCH_2, torch.tensor(2.0))).result()
    assert result.samples == 10
    assert result.top1 == pytest.approx(4 / 10)  # a, b, g in the first batch, b in the second
    assert result.top5 == pytest.approx(7 / 10)  # misses: c as g, d as e, g as a
    assert result.loss == pytest.approx((3.0 + 2.0) / 10)  # mean per image, not per batch
    assert result.confusion == CONFUSION  # rows: the true class; columns: the prediction
    assert result.class_names == NAMES
    assert result.per_class[:7] == pytest.approx([1 / 2, 2 / 2, 0, 0, 0, 0, 1 / 2])
    assert math.isnan(result.per_class[7])


def test_to_dict_is_strict_json_keyed_by_class_name():
    data = _accumulate((BATCH_1, 3.0), (BATCH_2, 2.0)).result().to_dict()
    assert data["per_class"] == {"a": 0.5, "b": 1.0, "c": 0.0, "d": 0.0, "e": 0.0, "f": 0.0, "g": 0.5, "h": None}
    assert json.loads(json.dumps(data, allow_nan=False))["confusion"] == CONFUSION


def test_totals_of_two_processes_add_up_to_one_pass():
    """What ``all_reduce`` does to the packed totals: the sum over two halves is the pass over both."""
    first, second = _accumulate((BATCH_1, 3.0)), _accumulate((BATCH_2, 2.0))
    first.totals += second.totals
    both = _accumulate((BATCH_1, 3.0), (BATCH_2, 2.0)).result()
    assert first.result().to_dict() == both.to_dict()  # (to_dict: nan, which equals nothing, becomes None)


def test_fewer_than_five_classes_and_nothing_added():
    accumulator = Accumulator(["x", "y", "z"])
    # x as y, y as y, z as x: top-1 1/3; top-5 of three classes holds every class
    accumulator.update(torch.tensor([[0.0, 1.0, -1.0], [0.0, 2.0, 1.0], [3.0, 2.0, 1.0]]), torch.tensor([0, 1, 2]))
    result = accumulator.result()
    assert result.top1 == pytest.approx(1 / 3) and result.top5 == 1.0 and result.loss == 0.0
    assert result.confusion == [[0, 1, 0], [0, 1, 0], [1, 0, 0]]
    with pytest.raises(ValueError, match="no image was evaluated"):
        Accumulator(["x", "y"]).result()
