"""Scoring a detector's flags against labels: point-wise and point-adjusted metrics.

What lives here: functions over two 0/1 arrays of equal length (``y_true`` labels, ``y_pred``
flags), computed with numpy alone — :func:`segments` (the true anomalous segments),
:func:`point_adjust` (the standard time-series adjustment: if any point of a true anomalous
segment is flagged, every point of that segment counts as flagged; flags outside segments are
left as they are), :func:`scores` (precision, recall, F1, confusion matrix, counts),
:func:`evaluate` (both views at once, plus how many segments were detected) and
:func:`false_alarms`; and over a continuous score, :func:`auc_pr` (average precision) and
:func:`vus_pr` (TSB-AD's volume under the range-based PR surface). Shared by
``atomwatch detect --labels``, ``atomwatch evaluate`` and the deep-model work.

What does not: running detectors (:mod:`atomwatch.detectors`) or reading label files
(:mod:`atomwatch.traces`).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _binary(name: str, y: Any) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    if a.dtype == bool:
        return a.astype(np.int64)
    if a.size and not np.isin(a, (0, 1)).all():
        bad = a[~np.isin(a, (0, 1))][:3].tolist()
        raise ValueError(f"{name} must hold only 0/1, found e.g. {bad}")
    return a.astype(np.int64)


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = _binary("y_true", y_true), _binary("y_pred", y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} points, y_pred {p.size}: they must be the same length")
    return t, p


def segments(y_true: Any) -> list[tuple[int, int]]:
    """The maximal runs of 1 in ``y_true`` as half-open [start, end) index pairs."""
    t = _binary("y_true", y_true)
    edges = np.diff(np.concatenate(([0], t, [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [(int(s), int(e)) for s, e in zip(starts, ends)]


def point_adjust(y_true: Any, y_pred: Any) -> np.ndarray:
    """``y_pred`` with every true segment that has at least one flag flagged throughout."""
    t, p = _pair(y_true, y_pred)
    out = p.copy()
    for s, e in segments(t):
        if p[s:e].any():
            out[s:e] = 1
    return out


def scores(y_true: Any, y_pred: Any) -> dict[str, Any]:
    """Precision, recall and F1 of the positive class (0 where undefined), the confusion matrix
    ``[[tn, fp], [fn, tp]]`` and its four counts."""
    t, p = _pair(y_true, y_pred)
    # the counts scikit-learn's confusion_matrix(labels=[0, 1]) and precision_recall_fscore_support
    # (average="binary", zero_division=0) start from; tests/test_detect_cli.py compares the two
    tp = int(np.count_nonzero(t & p))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(t)) - tp
    tn = int(t.size) - tp - fp - fn
    cm = np.array([[tn, fp], [fn, tp]])
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "confusion_matrix": cm.astype(int).tolist(),
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "tp": tp,
    }


def evaluate(y_true: Any, y_pred: Any) -> dict[str, Any]:
    """Point-wise and point-adjusted scores, and segment counts."""
    t, p = _pair(y_true, y_pred)
    segs = segments(t)
    return {
        "points": int(t.size),
        "positives": int(t.sum()),
        "flagged": int(p.sum()),
        "segments": len(segs),
        "segments_detected": sum(1 for s, e in segs if p[s:e].any()),
        "point_wise": scores(t, p),
        "point_adjusted": scores(t, point_adjust(t, p)),
    }


# --------------------------------------------------------------------------- score-based metrics


def _scores(name: str, score: Any, n: int) -> np.ndarray:
    s = np.asarray(score, dtype=np.float64)
    if s.ndim != 1 or s.size != n:
        raise ValueError(f"{name} must be one-dimensional with {n} points (one per label), got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} must be finite, found {int((~np.isfinite(s)).sum())} NaN or infinite values")
    return s


def auc_pr(y_true: Any, score: Any) -> float:
    """Area under the precision–recall curve as average precision: Σ_k (R_k − R_{k−1})·P_k over
    the distinct score values from the highest down (a row is flagged when its score is at least
    the threshold). The same definition as scikit-learn's ``average_precision_score``; 0 with no
    positive label."""
    t = _binary("y_true", y_true)
    s = _scores("score", score, t.size)
    positives = int(t.sum())
    if positives == 0:
        return 0.0
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # the last row of each distinct value
    tp = np.cumsum(t)[last]
    flagged = last + 1
    recall = tp / positives
    precision = tp / flagged
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _buffered_labels(t: np.ndarray, segs: list[tuple[int, int]], buffer: int) -> np.ndarray:
    """The labels with a soft margin of ``buffer // 2`` points on each side of every segment,
    weighing √(1 − distance/buffer), summed where margins meet and capped at 1."""
    soft = t.astype(np.float64)
    half = buffer // 2
    if half == 0:
        return soft
    n = t.size
    for s, e in segs:  # half-open [s, e)
        before = np.arange(max(s - half, 0), s)
        soft[before] += np.sqrt(1.0 - (s - before) / buffer)
        after = np.arange(e, min(e - 1 + half + 1, n))
        soft[after] += np.sqrt(1.0 - (after - (e - 1)) / buffer)
    return np.minimum(soft, 1.0)


def _merged_ranges(segs: list[tuple[int, int]], half: int, n: int) -> list[tuple[int, int]]:
    """The segments widened by ``half`` points on each side (clipped), merged where they
    overlap, as half-open ranges."""
    out: list[tuple[int, int]] = []
    for s, e in segs:
        lo, hi = max(s - half, 0), min(e + half, n)
        if out and lo < out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


class _Levels:
    """What every margin's range-based curve shares: the flags at each threshold level (from the
    highest score down, at evenly spaced ranks of the sorted scores) and their running counts."""

    def __init__(self, y_true: Any, score: Any, thresholds: int) -> None:
        t = _binary("y_true", y_true)
        s = _scores("score", score, t.size)
        if thresholds < 1:
            raise ValueError(f"thresholds must be ≥ 1, got {thresholds}")
        self.segs = segments(t)
        if not self.segs:
            raise ValueError("y_true has no anomalous point: a range-based curve needs at least one labelled segment")
        n = t.size
        self.t = t
        levels = np.sort(s)[::-1][np.linspace(0, n - 1, thresholds).astype(int)]
        self.pred = (s[None, :] >= levels[:, None]).astype(np.float64)  # thresholds × n
        self.flagged = self.pred.sum(axis=1)
        zero = np.zeros((thresholds, 1))
        self.csum = np.concatenate((zero, np.cumsum(self.pred, axis=1)), axis=1)

    def curve(self, buffer: int) -> tuple[np.ndarray, np.ndarray]:
        t, n = self.t, self.t.size
        soft = _buffered_labels(t, self.segs, buffer)
        tp = self.pred @ soft  # inside segments: 1 per flag; in margins: the weight
        p_new = t.sum() + 0.5 * (self.pred @ (soft * (1 - t)))
        ranges = _merged_ranges(self.segs, buffer // 2, n)
        hit = sum((self.csum[:, hi] - self.csum[:, lo]) > 0 for lo, hi in ranges)
        recall = np.minimum(tp / p_new, 1.0) * (hit / len(ranges))
        precision = tp / np.maximum(self.flagged, 1)
        return recall, precision


def range_pr_curve(y_true: Any, score: Any, buffer: int, thresholds: int = 250) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at ``thresholds`` score levels (from the highest score down, at evenly
    spaced ranks of the sorted scores) under the range-based view of a ``buffer``-point margin
    around each labelled segment (Paparrizos et al., *Volume under the surface*, VLDB 2022):

    * labels outside the segments get the soft weight of :func:`_buffered_labels`;
    * a flagged point counts as a true positive with its label's weight (1 inside a segment);
    * recall = min(1, TP / P′)·(share of widened segments with a flag), where P′ is the labelled
      points plus half the weight of the flagged margin points;
    * precision = TP / flagged points.
    """
    return _Levels(y_true, score, thresholds).curve(buffer)


def vus_pr(y_true: Any, score: Any, window: int, thresholds: int = 250) -> float:
    """VUS-PR: the mean over margins ℓ = 0, 1, …, ``window`` of the area under
    :func:`range_pr_curve` (average precision: Σ (R_k − R_{k−1})·P_k from the highest threshold
    down). The measure TSB-AD ranks detectors by; ``window`` is the series' period (TSB-AD takes
    it from the autocorrelation of the first channel)."""
    if window < 0:
        raise ValueError(f"window must be ≥ 0, got {window}")
    levels = _Levels(y_true, score, thresholds)
    areas = []
    for buffer in range(window + 1):
        recall, precision = levels.curve(buffer)
        areas.append(float(np.sum(np.diff(np.r_[0.0, recall]) * precision)))
    return float(np.mean(areas))


def false_alarms(y_true: Any, y_pred: Any) -> int:
    """Flagged runs (maximal runs of 1 in ``y_pred``) that touch no labelled point: the alarms an
    operator would open and find nothing behind."""
    t, p = _pair(y_true, y_pred)
    return sum(1 for s, e in segments(p) if not t[s:e].any())
