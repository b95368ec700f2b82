"""Metrics against a small example worked out by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

from simclrv2.errors import SimCLRv2Error
from simclrv2.eval.metrics import accuracy, classification_report, confusion_matrix, per_class_accuracy

# 8 samples, 3 classes. True 0: predicted 0, 0, 1. True 1: predicted 1, 2. True 2: predicted 2, 2, 0.
LABELS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
PREDS = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
CONFUSION = [[2, 1, 0],
             [0, 1, 1],
             [1, 0, 2]]


def test_accuracy_of_predictions_counts_matches():
    assert accuracy(PREDS, LABELS) == pytest.approx(5 / 8)


def test_accuracy_of_logits_takes_the_argmax():
    logits = torch.nn.functional.one_hot(PREDS, 3).float() * 3.0 - torch.tensor([1.0, 0.5, 0.2])
    assert accuracy(logits, LABELS) == pytest.approx(5 / 8)


def test_confusion_matrix_rows_are_true_classes():
    confusion = confusion_matrix(PREDS, LABELS, 3)
    assert confusion.dtype == torch.int64
    assert confusion.tolist() == CONFUSION


def test_confusion_matrix_keeps_classes_never_seen():
    confusion = confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 0]), 4)
    assert confusion.shape == (4, 4) and confusion.sum() == 2 and confusion[0].tolist() == [1, 1, 0, 0]


def test_per_class_accuracy_is_recall_with_nan_for_absent_classes():
    recalls = per_class_accuracy(torch.tensor(CONFUSION))
    assert recalls == pytest.approx([2 / 3, 1 / 2, 2 / 3])
    with_absent = per_class_accuracy(confusion_matrix(PREDS, LABELS, 4))
    assert with_absent[:3] == pytest.approx(recalls) and math.isnan(with_absent[3])


def test_report_is_json_serialisable_and_matches_the_hand_computation():
    report = classification_report(PREDS, LABELS, ["tee", "bag", "boot", "coat"])
    again = json.loads(json.dumps(report, allow_nan=False))  # strict JSON: no NaN allowed
    assert again["top1"] == pytest.approx(5 / 8)
    assert again["num_samples"] == 8
    assert again["per_class"] == pytest.approx({"tee": 2 / 3, "bag": 1 / 2, "boot": 2 / 3, "coat": None})
    assert again["mean_per_class"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert again["confusion_matrix"] == [row + [0] for row in CONFUSION] + [[0, 0, 0, 0]]
    assert again["classes"] == ["tee", "bag", "boot", "coat"]


def test_report_accepts_logits():
    logits = torch.nn.functional.one_hot(PREDS, 3).float()
    assert classification_report(logits, LABELS, ["a", "b", "c"])["top1"] == pytest.approx(5 / 8)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: accuracy(torch.tensor([0, 1]), torch.tensor([0, 1, 1])), "2 predictions but 3 labels"),
        (lambda: accuracy(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)), "no samples"),
        (lambda: accuracy(torch.tensor([0.0, 1.0]), torch.tensor([0, 1])), "integer class indices"),
        (lambda: confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3),
         r"predictions must lie in \[0, 3\)"),
        (lambda: classification_report(PREDS, LABELS, ["a", "a", "b"]), "class names must be unique"),
    ],
)
def test_bad_inputs_are_errors(call, message):
    with pytest.raises(SimCLRv2Error, match=message):
        call()
