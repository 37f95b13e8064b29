"""The score-based metrics of atomwatch.evaluation: average precision (AUC-PR), TSB-AD's VUS-PR
and false-alarm runs, each against a case worked out by hand (and AUC-PR against scikit-learn)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from atomwatch.evaluation import auc_pr, false_alarms, range_pr_curve, vus_pr

# eight points, one labelled segment [2, 4); scores all distinct
Y = [0, 0, 1, 1, 0, 0, 0, 0]
S = [0.1, 0.5, 0.9, 0.3, 0.8, 0.2, 0.0, 0.05]


def test_auc_pr_by_hand():
    # from the top: 0.9 (hit: R .5, P 1), 0.8, 0.5 (misses), 0.3 (hit: R 1, P 2/4)
    assert auc_pr(Y, S) == pytest.approx(0.5 * 1 + 0.5 * 0.5)


def test_auc_pr_matches_scikit_learn_with_ties():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    y = (rng.random(500) < 0.1).astype(int)
    s = np.round(rng.random(500) + y * 0.3, 1)  # heavy ties
    assert auc_pr(y, s) == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)


def test_range_curve_with_a_two_point_margin_by_hand():
    w = math.sqrt(0.5)  # the margin points 1 and 4 weigh √(1 − 1/2)
    recall, precision = range_pr_curve(Y, S, buffer=2, thresholds=8)
    # thresholds flag, in turn: {2}, +4 (margin), +1 (margin), +3 (the segment's second point)
    p1, p2, p3 = 2 + 0.5 * w, 2 + w, 2 + w
    assert recall[:4] == pytest.approx([0.5, (1 + w) / p1, (1 + 2 * w) / p2, 1.0])
    assert precision[:4] == pytest.approx([1.0, (1 + w) / 2, (1 + 2 * w) / 3, (2 + 2 * w) / 4])
    assert p3 == p2  # (the fourth point is inside the segment: P′ does not move)


def test_vus_pr_by_hand():
    w = math.sqrt(0.5)
    r = [0.5, (1 + w) / (2 + 0.5 * w), (1 + 2 * w) / (2 + w), 1.0]
    p = [1.0, (1 + w) / 2, (1 + 2 * w) / 3, (2 + 2 * w) / 4]
    ap2 = sum((r[i] - (r[i - 1] if i else 0.0)) * p[i] for i in range(4))
    # margins 0 and 1 have no soft point (half a point rounds down): plain average precision
    assert vus_pr(Y, S, window=2, thresholds=8) == pytest.approx((0.75 + 0.75 + ap2) / 3)
    assert vus_pr(Y, S, window=0, thresholds=8) == pytest.approx(auc_pr(Y, S))


def test_vus_pr_rewards_a_flag_just_before_the_segment():
    y = np.zeros(100, dtype=int)
    y[50:60] = 1
    early = np.zeros(100)
    early[46:50] = 1.0  # a detector that fires four points early and stops at the onset
    late = np.zeros(100)
    late[70:74] = 1.0  # the same flags far from the segment
    assert auc_pr(y, early) == auc_pr(y, late)  # point-wise they are the same miss
    assert vus_pr(y, early, window=20) > vus_pr(y, late, window=20) + 0.1


def test_perfect_score_has_vus_pr_one():
    y = np.zeros(300, dtype=int)
    y[[40, 41, 42, 200, 201]] = 1
    assert vus_pr(y, y.astype(float), window=30, thresholds=300) == pytest.approx(1.0)


def test_false_alarms_counts_runs_away_from_labels():
    y = [0, 0, 1, 1, 0, 0, 0, 0, 0, 0]
    p = [1, 0, 0, 1, 1, 0, 1, 1, 0, 1]  # run at 0, run 3-4 (touches the label), run 6-7, run 9
    assert false_alarms(y, p) == 3


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: auc_pr([0, 1], [0.1]), "score must be one-dimensional with 2 points"),
        (lambda: auc_pr([0, 1], [0.1, float("nan")]), "score must be finite"),
        (lambda: vus_pr([0, 0], [0.1, 0.2], window=3), "no anomalous point"),
        (lambda: vus_pr([0, 1], [0.1, 0.2], window=-1), "window must be ≥ 0"),
        (lambda: auc_pr([0, 2], [0.1, 0.2]), "y_true must hold only 0/1"),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
