"""Multi-label pieces against hand-computed values: the masked BCE (and its gradient), positive weights, AUROC and
AP on fixed scores, max-F1 thresholds, the accumulator, and the task seam's choices."""

from __future__ import annotations

import math

import pytest
import torch

from densenet.data.images import ImageTensors
from densenet.meta import MULTI_LABEL, ModelMeta
from densenet.training.multilabel import (
    MaskedBCE,
    MultiLabelAccumulator,
    best_f1_threshold,
    choose_thresholds,
    label_metrics,
    positive_weights,
)
from densenet.training.task import MultiLabel, SingleLabel, task_for

NAN = math.nan
LOGITS = torch.tensor([[0.0, 2.0], [-1.0, 3.0]])
TARGETS = torch.tensor([[1.0, NAN], [0.0, 1.0]])
# −log σ(0) = ln 2;  −log(1 − σ(−1)) = ln(1 + e^−1);  −log σ(3) = ln(1 + e^−3)
TERMS = (math.log(2), math.log(1 + math.exp(-1)), math.log(1 + math.exp(-3)))


def test_masked_bce_is_the_mean_over_known_entries():
    assert MaskedBCE()(LOGITS, TARGETS).item() == pytest.approx(sum(TERMS) / 3, rel=1e-6)


def test_masked_bce_with_positive_weights_weighs_known_positives_only():
    loss = MaskedBCE(torch.tensor([2.0, 5.0]))(LOGITS, TARGETS)
    assert loss.item() == pytest.approx((2 * TERMS[0] + TERMS[1] + 5 * TERMS[2]) / 3, rel=1e-6)


def test_unknown_entries_get_no_gradient_and_an_unknown_batch_no_loss():
    logits = LOGITS.clone().requires_grad_()
    MaskedBCE()(logits, TARGETS).backward()
    assert logits.grad[0, 1] == 0
    # d/dx of BCE = σ(x) − y, over 3 known entries
    assert logits.grad[0, 0].item() == pytest.approx((0.5 - 1) / 3)
    assert MaskedBCE()(LOGITS, torch.full((2, 2), NAN)).item() == 0


def test_positive_weights_are_negatives_over_positives():
    labels = torch.tensor([[1, 0], [0, NAN], [0, 1], [1, 0]])
    assert torch.equal(positive_weights(labels, ["a", "b"]), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="no known positive or no known negative for b"):
        positive_weights(torch.tensor([[1, 0], [0, 0]]), ["a", "b"])


# scores 0.1, 0.4, 0.35, 0.8 for targets 0, 0, 1, 1 (plus an unknown that must be ignored):
# AUROC = pairs (positive above negative) / 4 = (0.35>0.1, 0.8>0.1, 0.8>0.4) = 3/4
# AP = Σ (R_n − R_{n−1}) P_n over the ranking 0.8(+), 0.4(−), 0.35(+), 0.1(−) = ½·1 + ½·⅔ = 5/6
SCORES = torch.tensor([[0.1], [0.4], [0.35], [0.8], [0.99]])
LABELS = torch.tensor([[0.0], [0.0], [1.0], [1.0], [NAN]])


def test_auroc_and_average_precision_on_fixed_scores():
    auroc, ap = label_metrics(SCORES, LABELS)
    assert auroc == [pytest.approx(0.75)] and ap == [pytest.approx(5 / 6)]


def test_a_label_with_one_class_has_no_auroc():
    auroc, ap = label_metrics(torch.tensor([[0.2, 0.3], [0.6, 0.1]]), torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    assert math.isnan(auroc[0]) and math.isnan(ap[0]) and auroc[1] == 0.0


def test_max_f1_threshold():
    # t = 0.35 calls 0.35, 0.4, 0.8 positive: P = 2/3, R = 1, F1 = 0.8; t = 0.8: P = 1, R = ½, F1 = ⅔;
    # t = 0.4: P = ½, R = ½; t = 0.1: P = ½, R = 1, F1 = ⅔
    assert choose_thresholds(SCORES, LABELS) == [pytest.approx(0.35)]
    # ties go to the higher threshold: 0.6 and 0.9 both give F1 = 1 on these
    assert best_f1_threshold(torch.tensor([0.2, 0.6, 0.9]).numpy(), torch.tensor([0, 1, 1]).numpy()) == \
        pytest.approx(0.6)
    assert best_f1_threshold(torch.tensor([0.2, 0.6]).numpy(), torch.tensor([0, 0]).numpy()) == 0.5


def test_accumulator_result():
    accumulator = MultiLabelAccumulator(["a", "b"])
    accumulator.update(LOGITS[:1], TARGETS[:1])
    accumulator.update(LOGITS[1:], TARGETS[1:])
    result = accumulator.result()
    assert result.samples == 2 and result.loss == pytest.approx(sum(TERMS) / 3, rel=1e-6)
    # at 0.5: (0,0) logit 0 → positive, right; (1,0) negative, right; (1,1) positive, right
    assert result.accuracy == 1.0
    assert math.isnan(result.auroc[1])  # b's known entries are one positive only
    report = result.to_dict()
    assert report["per_label"]["b"]["auroc"] is None and report["mean_auroc"] == result.auroc[0]
    with pytest.raises(ValueError, match="no image was evaluated"):
        MultiLabelAccumulator(["a"]).result()


def test_task_follows_the_data():
    single = ImageTensors(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["x", "y"])
    multi = ImageTensors(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.tensor([[1, 0], [0, 1], [0, NAN]]),
                         ["x", "y"])
    assert isinstance(task_for(single, ["x", "y"], "none", 0.1), SingleLabel)
    task = task_for(multi, ["x", "y"], "auto", 0.0)
    assert isinstance(task, MultiLabel) and torch.equal(task.criterion.pos_weight, torch.tensor([2.0, 1.0]))
    with pytest.raises(ValueError, match="--pos-weight applies to multi-label data"):
        task_for(single, ["x", "y"], "auto", 0.0)
    with pytest.raises(ValueError, match="--label-smoothing applies to single-label"):
        task_for(multi, ["x", "y"], "none", 0.1)


def test_thresholds_travel_in_the_meta():
    meta = MultiLabel().saved_meta(ModelMeta(class_names=("a", "b")), _result())
    assert meta.task == MULTI_LABEL and meta.thresholds == pytest.approx((0.35, 0.5))  # b: no positive
    assert ModelMeta.from_dict(meta.to_dict()) == meta
    with pytest.raises(ValueError, match="probabilities in"):
        ModelMeta(task=MULTI_LABEL, thresholds=(1.5,))
    with pytest.raises(ValueError, match="task must be one of"):
        ModelMeta(task="regression")


def _result():
    accumulator = MultiLabelAccumulator(["a", "b"])
    accumulator.update(torch.logit(SCORES[:4]).expand(4, 2).clone(), torch.cat([LABELS[:4], torch.zeros(4, 1)], 1))
    return accumulator.result()
