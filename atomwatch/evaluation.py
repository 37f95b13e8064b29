"""Scoring a detector's flags against labels: point-wise and point-adjusted metrics.

What lives here: functions over two 0/1 arrays of equal length (``y_true`` labels, ``y_pred``
flags), computed with numpy alone — :func:`segments` (the true anomalous segments),
:func:`point_adjust` (the standard time-series adjustment: if any point of a true anomalous
segment is flagged, every point of that segment counts as flagged; flags outside segments are
left as they are), :func:`scores` (precision, recall, F1, confusion matrix, counts) and
:func:`evaluate` (both views at once, plus how many segments were detected). Shared by
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
