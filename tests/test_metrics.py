"""The metrics module against confusion matrices computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.metrics import (
    confusion_matrix,
    penalty_matrix,
    roc_auc,
    summarize,
    weighted_error,
    wilson_interval,
)

OCT_LABELS = ["CNV", "DME", "DRUSEN", "NORMAL"]
OCT_REFERRALS = ["urgent", "urgent", "routine", "observation"]


def _one_hot(predicted: list[int], classes: int) -> np.ndarray:
    probabilities = np.full((len(predicted), classes), 0.1 / (classes - 1))
    probabilities[np.arange(len(predicted)), predicted] = 0.9
    return probabilities


def test_penalties_are_figure_s4() -> None:
    expected = np.array(
        [
            [0, 1, 2, 4],  # CNV scored as DME, DRUSEN, NORMAL
            [1, 0, 2, 4],
            [1, 1, 0, 1],
            [1, 1, 1, 0],
        ],
        dtype=float,
    )
    assert np.array_equal(penalty_matrix(OCT_LABELS, OCT_REFERRALS), expected)


def test_hand_computed_oct_example() -> None:
    # 10 images. True: CNV x3, DME x2, DRUSEN x2, NORMAL x3.
    y_true = [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]
    # Errors: a CNV called NORMAL (4), a DME called DRUSEN (2), a DRUSEN called CNV (1),
    # a NORMAL called DRUSEN (1).
    y_pred = [0, 0, 3, 1, 2, 2, 0, 3, 3, 2]
    matrix = confusion_matrix(np.array(y_true), np.array(y_pred), 4)
    assert matrix.tolist() == [[2, 0, 0, 1], [0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 1, 2]]
    assert weighted_error(matrix, penalty_matrix(OCT_LABELS, OCT_REFERRALS)) == pytest.approx(
        (4 + 2 + 1 + 1) / 10
    )
    result = summarize("oct4", OCT_LABELS, OCT_REFERRALS, np.array(y_true), _one_hot(y_pred, 4))
    assert result["accuracy"]["value"] == pytest.approx(6 / 10)
    # Urgent images: 5; referred urgently: CNV,CNV,DME = 3 -> sensitivity 3/5.
    assert result["sensitivity"]["value"] == pytest.approx(3 / 5)
    # Non-urgent: 5; not referred urgently: DRUSEN, NORMAL x2, NORMAL->DRUSEN = 4 -> 4/5.
    assert result["specificity"]["value"] == pytest.approx(4 / 5)
    assert result["weighted_error"]["value"] == pytest.approx(0.8)
    cnv = result["per_class"]["CNV"]
    assert (cnv["support"], cnv["recall"], cnv["precision"]) == pytest.approx((3, 2 / 3, 2 / 3))
    assert cnv["recall_ci95"] == pytest.approx([0.2077, 0.9385], abs=1e-4)
    low, high = result["accuracy"]["ci95"]
    assert low < 0.6 < high
    assert "urgent_vs_rest" in result["roc"]


def test_auc_by_hand() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.55, 0.4])
    positive = np.array([True, True, False, True, False, False])
    # Pairs (pos, neg) ranked correctly: 0.9>all 3, 0.8>all 3, 0.6>0.55,0.4 -> 8 of 9.
    assert roc_auc(scores, positive) == pytest.approx(8 / 9)
    assert roc_auc(np.array([0.5, 0.5]), np.array([True, False])) == pytest.approx(0.5)


def test_wilson_interval_known_value() -> None:
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)


def test_cxr_aucs() -> None:
    labels = ["BACTERIA", "NORMAL", "VIRUS"]
    referrals = ["urgent", "observation", "supportive care"]
    y_true = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.6, 0.1, 0.3],
            [0.1, 0.8, 0.1],
            [0.2, 0.7, 0.1],
            [0.3, 0.1, 0.6],
            [0.1, 0.2, 0.7],
        ]
    )
    result = summarize("cxr3", labels, referrals, y_true, probabilities)
    assert result["roc"]["pneumonia_vs_normal"]["value"] == pytest.approx(1.0)
    assert result["roc"]["bacterial_vs_viral"]["value"] == pytest.approx(1.0)
    assert result["positive_labels"] == ["BACTERIA"]
    assert result["accuracy"]["value"] == pytest.approx(1.0)
