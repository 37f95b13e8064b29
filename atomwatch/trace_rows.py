"""A recorded trace as the rows a live scope would produce, optionally tracked as an agent would.

What lives here: :func:`trace_rows` (a :class:`~atomwatch.traces.Trace` as :class:`Row` objects:
columns named by :meth:`SeriesKey.from_column`, ``index`` = the CSV row number from 0, ``ts`` = the
timestamp column or the row number), :func:`tracked_values` (the controller's copies under ATOM's
tracking) and :func:`detect_trace` (a fresh detector over a whole trace).

What does not: reading files (:mod:`atomwatch.traces`), the detector registry
(:mod:`atomwatch.detectors`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .config import Relative
from .detectors import DetectionRun, run_detector
from .series import SeriesKey
from .traces import Trace
from .tracking import AtomTracker
from .types import DetectorFactory, Row


def trace_rows(
    trace: Trace, scope: str = "offline", deltas: Mapping[str, float | Relative] | None = None
) -> Iterator[Row]:
    """The rows of a trace as one scope's stream (the same column tuple object for every row).

    With ``deltas`` (metric name → Δ, ``"*"`` for every other metric; a metric with neither is
    tracked with Δ = 0) the values go through ATOM's tracking first, as an agent would send
    them: each row holds the controller's copies, within Δ of the recorded values, and each
    column's Δ — what the live controller hands its detectors. Without, the recorded values.
    """
    columns = tuple(SeriesKey.from_column(c) for c in trace.columns)
    ts = trace.timestamps
    values, delta = (trace.values, None) if deltas is None else tracked_values(columns, trace.values, deltas)
    for i in range(trace.rows):
        yield Row(
            scope=scope,
            index=i,
            ts=float(ts[i]) if ts is not None else float(i),
            columns=columns,
            values=values[i],
            deltas=delta,
        )


def tracked_values(
    columns: Sequence[SeriesKey], values: np.ndarray, deltas: Mapping[str, float | Relative]
) -> tuple[np.ndarray, np.ndarray]:
    """(the controller's copies of ``values`` (rows × columns) under ATOM's tracking, each
    column's Δ): ``deltas`` maps a metric name to its Δ, ``"*"`` any other metric (else 0); a
    :class:`~atomwatch.config.Relative` Δ (``--delta 5%``) is resolved by :func:`column_deltas`."""
    delta = column_deltas(columns, values, deltas)
    bad = [c.column for c, d in zip(columns, delta) if not (d >= 0 and np.isfinite(d))]
    if bad:
        raise ValueError(f"Δ must be a finite number ≥ 0; not so for {', '.join(bad[:5])}")
    tracker = AtomTracker(delta)
    out = np.empty_like(np.asarray(values, dtype=np.float64))
    for i, row in enumerate(values):
        tracker.step(row)
        out[i] = tracker.g
    return out, delta


def column_deltas(
    columns: Sequence[SeriesKey], values: np.ndarray, deltas: Mapping[str, float | Relative]
) -> np.ndarray:
    """Each column's Δ: its metric's entry of ``deltas``, else ``"*"``'s, else 0; a
    :class:`~atomwatch.config.Relative` one is its fraction of the column's mean magnitude over
    ``values`` (rows × columns; 0 for a column with no finite value)."""
    values = np.asarray(values, dtype=np.float64)
    out = np.zeros(len(columns))
    for j, c in enumerate(columns):
        d = deltas.get(c.metric, deltas.get("*", 0.0))
        if isinstance(d, Relative):
            column = values[:, j] if values.ndim == 2 and values.shape[0] else np.zeros(0)
            finite = column[np.isfinite(column)]
            out[j] = d.fraction * abs(float(finite.mean())) if finite.size else 0.0
        else:
            out[j] = float(d)
    return out


def detect_trace(
    factory: DetectorFactory,
    trace: Trace,
    options: Mapping[str, Any] | None = None,
    scope: str = "offline",
    deltas: Mapping[str, float] | None = None,
) -> DetectionRun:
    """A fresh detector from ``factory`` over every row of ``trace`` (tracked with ``deltas``
    first when given, see :func:`trace_rows`)."""
    detector = factory.create(scope, dict(options or {}))
    run = run_detector(detector, trace_rows(trace, scope, deltas))
    run.detector = factory.name
    return run
