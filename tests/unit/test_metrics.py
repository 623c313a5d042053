"""Evaluation metrics pinned to numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tl_platform.evaluation.metrics import classification_report, expected_calibration_error, softmax


def test_ece_of_a_hand_worked_example() -> None:
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.55 (wrong); 10 bins
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 1])
    # bin (0.8, 0.9]: acc 0.5, conf 0.9 -> 2/4 * 0.4 = 0.2
    # bin (0.5, 0.6]: acc 0.5, conf 0.575 -> 2/4 * 0.075 = 0.0375
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx(0.2375, abs=1e-9)


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    probs = np.array([[0.75, 0.25]] * 4)
    labels = np.array([0, 0, 0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_needs_a_bin() -> None:
    with pytest.raises(ValueError, match="bins must be at least 1, got 0"):
        expected_calibration_error(np.array([[1.0, 0.0]]), np.array([0]), bins=0)


def test_report_numbers() -> None:
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9], [0.2, 0.8]])
    labels = [0, 1, 1, 1, 0]
    report = classification_report(probs, labels, ("neg", "pos"))
    assert report.accuracy == pytest.approx(0.6)
    assert report.confusion == ((1, 1), (1, 2))
    assert report.per_class["pos"].precision == pytest.approx(2 / 3)
    assert report.per_class["neg"].recall == pytest.approx(0.5)
    assert report.macro_f1 == pytest.approx((0.5 + 2 / 3) / 2)
    assert report.summary("test_")["test_f1_pos"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("probs", "labels", "message"),
    [
        (np.zeros((2, 3)), [0, 1], r"shape \(n, 2\), got \(2, 3\)"),
        (np.zeros((2, 2)), [0], "one label per row"),
        (np.zeros((0, 2)), [], "at least one row"),
    ],
)
def test_report_refuses_mismatched_inputs(probs: np.ndarray, labels: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classification_report(probs, labels, ("neg", "pos"))


def test_softmax_rows_sum_to_one_and_are_stable() -> None:
    out = softmax(np.array([[1000.0, 1000.0], [0.0, np.log(3.0)]]))
    assert out[0] == pytest.approx([0.5, 0.5])
    assert out[1] == pytest.approx([0.25, 0.75])
