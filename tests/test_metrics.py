"""Metrics pinned to values worked out by hand (Arrange / Act / Assert)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from common import protocol
from common.metrics import position_metrics, sequence_metrics, task_metrics, topk_accuracy
from common.tasks import IGNORE_INDEX, TASKS


def _binary_prob(p_positive) -> np.ndarray:
    p1 = np.asarray(p_positive, dtype=float)
    return np.stack([1.0 - p1, p1], axis=1)


def test_sequence_metrics_on_a_hand_computed_confusion_matrix():
    # Arrange: TP=3, FN=1, FP=1, TN=5.
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    prob = _binary_prob([0.9, 0.8, 0.7, 0.2, 0.6, 0.1, 0.1, 0.3, 0.4, 0.2])

    # Act
    m = sequence_metrics(y, prob)

    # Assert: MCC = (3*5 - 1*1) / sqrt(4*4*6*6) = 14/24.
    assert m[protocol.MCC] == pytest.approx(14 / 24)
    assert m[protocol.ACCURACY] == pytest.approx(0.8)
    assert m[protocol.BALANCED_ACCURACY] == pytest.approx((3 / 4 + 5 / 6) / 2)
    assert m[protocol.F1] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert set(m) == set(protocol.SEQUENCE_METRIC_KEYS)


def test_sequence_auroc_and_auprc_on_a_hand_ranked_example():
    # Ranking by score: 0.8 (pos), 0.4 (neg), 0.35 (pos), 0.1 (neg).
    y = np.array([0, 0, 1, 1])
    prob = _binary_prob([0.1, 0.4, 0.35, 0.8])

    m = sequence_metrics(y, prob)

    # 3 of the 4 (pos, neg) pairs are ordered right; AP = 1/2 * 1 + 1/2 * 2/3.
    assert m[protocol.AUROC] == pytest.approx(0.75)
    assert m[protocol.AUPRC] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_single_class_gives_nan_ranking_metrics_not_an_error():
    y = np.array([1, 1, 1])
    prob = _binary_prob([0.9, 0.2, 0.7])

    m = sequence_metrics(y, prob)

    assert math.isnan(m[protocol.AUROC]) and math.isnan(m[protocol.AUPRC])
    assert m[protocol.ACCURACY] == pytest.approx(2 / 3)
    assert m[protocol.MCC] == 0.0
    assert m[protocol.BALANCED_ACCURACY] == pytest.approx(2 / 3)


def test_single_class_predicted_perfectly_warns_nothing():
    y = np.array([1, 1])
    prob = _binary_prob([0.9, 0.8])

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = sequence_metrics(y, prob)

    assert m[protocol.ACCURACY] == 1.0 and m[protocol.MCC] == 0.0 and math.isnan(m[protocol.AUROC])


def test_multiclass_sequence_metrics_are_macro_averages():
    y = np.array([0, 1, 2, 2])
    prob = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])

    m = sequence_metrics(y, prob)

    # Per-class F1: class 0 (P 1/2, R 1) 2/3; class 1: 1; class 2 (P 1, R 1/2): 2/3.
    assert m[protocol.F1] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert m[protocol.ACCURACY] == pytest.approx(0.75)
    assert 0.0 <= m[protocol.AUROC] <= 1.0


# Splice example: labels and (neither, donor, acceptor) probabilities, one row per base.
SPLICE_Y = np.array([0, 1, 0, 0, 2, 1, 0, 2, 0, 0])
SPLICE_PROB = np.array([
    [0.80, 0.10, 0.10],
    [0.10, 0.80, 0.10],  # donor, ranked first
    [0.90, 0.05, 0.05],
    [0.30, 0.60, 0.10],  # not a site, ranked second for donor
    [0.20, 0.10, 0.70],  # acceptor, ranked first
    [0.50, 0.40, 0.10],  # donor, ranked third, argmax wrong
    [0.90, 0.02, 0.08],
    [0.30, 0.10, 0.60],  # acceptor, ranked second
    [0.70, 0.10, 0.20],
    [0.95, 0.03, 0.02],
])


def test_position_metrics_on_a_hand_computed_splice_example():
    m = position_metrics(SPLICE_Y, SPLICE_PROB)

    # Donor ranking T, F, T: AP = 1/2 * 1 + 1/2 * 2/3; top-2 holds one of the two donors.
    assert m[protocol.PR_AUC_DONOR] == pytest.approx(5 / 6)
    assert m[protocol.TOPK_DONOR] == pytest.approx(0.5)
    # Acceptor: both true sites ranked first.
    assert m[protocol.PR_AUC_ACCEPTOR] == pytest.approx(1.0)
    assert m[protocol.TOPK_ACCEPTOR] == pytest.approx(1.0)
    assert m[protocol.PR_AUC_MEAN] == pytest.approx((5 / 6 + 1.0) / 2)
    # Argmax wrong at bases 3 and 5 only.
    assert m[protocol.ACCURACY] == pytest.approx(0.8)
    assert set(m) == set(protocol.POSITION_METRIC_KEYS)


def test_padding_positions_are_ignored():
    y = np.concatenate([SPLICE_Y, [IGNORE_INDEX, IGNORE_INDEX]])
    # Padding rows would be the top donor scores if they were counted.
    prob = np.concatenate([SPLICE_PROB, [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]])

    assert position_metrics(y, prob) == position_metrics(SPLICE_Y, SPLICE_PROB)


def test_a_class_without_sites_is_nan_and_the_mean_uses_the_other():
    y = np.array([0, 1, 0, 0])
    prob = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.8, 0.1, 0.1]])

    m = position_metrics(y, prob)

    assert math.isnan(m[protocol.PR_AUC_ACCEPTOR]) and math.isnan(m[protocol.TOPK_ACCEPTOR])
    assert m[protocol.PR_AUC_DONOR] == pytest.approx(1.0)
    assert m[protocol.PR_AUC_MEAN] == pytest.approx(1.0)


def test_topk_breaks_ties_by_position():
    is_site = np.array([False, True, False])
    tied = np.array([0.5, 0.5, 0.5])

    assert topk_accuracy(is_site, tied) == 0.0  # k = 1: the first of the tied positions is taken
    assert math.isnan(topk_accuracy(np.zeros(3, dtype=bool), tied))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_headline_metric_is_a_key_task_metrics_produces(name):
    spec = TASKS[name]
    rng = np.random.default_rng(0)
    y = np.arange(40) % spec.num_classes
    prob = rng.dirichlet(np.ones(spec.num_classes), size=40)

    m = task_metrics(name, y, prob)

    assert spec.headline_metric in m
    assert np.isfinite(m[spec.headline_metric])


@pytest.mark.parametrize(("y", "prob", "message"), [
    (np.array([0, 1]), np.zeros((3, 2)), "2 labels but 3 rows"),
    (np.array([0, 2]), np.full((2, 2), 0.5), r"labels must lie in 0\.\.1"),
    (np.array([0, 1]), np.array([[0.5, np.nan], [0.5, 0.5]]), "NaN or infinity"),
    (np.array([], dtype=int), np.zeros((0, 2)), "no examples"),
    (np.array([0.0, 1.0]), np.full((2, 2), 0.5), "labels must be integers"),
    (np.array([[0, 1]]), np.full((2, 2), 0.5), r"expected y_true \[N\] and prob \[N, C\]"),
])
def test_sequence_metrics_rejects_bad_input(y, prob, message):
    with pytest.raises(ValueError, match=message):
        sequence_metrics(y, prob)


def test_position_metrics_rejects_too_few_class_columns():
    with pytest.raises(ValueError, match="expected 3 class columns"):
        position_metrics(np.array([0, 1]), np.full((2, 2), 0.5))


def test_task_metrics_rejects_a_class_count_that_is_not_the_tasks():
    with pytest.raises(ValueError, match=r"task 'promoter': expected prob of shape \[N, 2\]"):
        task_metrics("promoter", np.array([0, 1]), np.full((2, 3), 1 / 3))


def test_task_metrics_rejects_an_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'histone'"):
        task_metrics("histone", np.array([0, 1]), np.full((2, 2), 0.5))
