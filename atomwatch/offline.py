"""Running a detector over recorded rows exactly as the live controller does.

What lives here: :func:`trace_rows` (a :class:`~atomwatch.traces.Trace` as the :class:`Row`
objects a scope would produce: columns named by :meth:`SeriesKey.from_column`, ``index`` = the
CSV row number from 0, ``ts`` = the timestamp column or the row number), :func:`anomalies_of`
(what ``Detector.update`` may return, checked and made a list, with the detector and row named
when it is wrong), :func:`find_factory` (a detector factory by name from the plugin manager) and
:func:`run_detector` (one detector over a stream of rows). The controller's tick, ``atomwatch
detect`` and ``atomwatch evaluate`` share them.

What does not: reading files (:mod:`atomwatch.traces`), scoring against labels
(:mod:`atomwatch.evaluation`), printing (:mod:`atomwatch.commands.detect`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .series import SeriesKey
from .traces import Trace
from .types import Anomaly, Detector, DetectorFactory, Row, as_anomalies


log = logging.getLogger("atomwatch.offline")


class DetectorError(RuntimeError):
    """A detector raised, or returned something that is not an Anomaly; names detector and row."""


class UnknownDetector(LookupError):
    """No loaded plugin registers a detector of that name; ``available`` lists those that do."""

    def __init__(self, name: str, available: list[str]) -> None:
        self.name = name
        self.available = available
        super().__init__(f"no detector named {name!r}; available: {', '.join(available) or '(none loaded)'}")


def trace_rows(trace: Trace, scope: str = "offline", deltas: Mapping[str, float] | None = None) -> Iterator[Row]:
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
        yield Row(scope=scope, index=i, ts=float(ts[i]) if ts is not None else float(i), columns=columns, values=values[i], deltas=delta)


def tracked_values(columns: Sequence[SeriesKey], values: np.ndarray, deltas: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """(the controller's copies of ``values`` (rows × columns) under ATOM's tracking, each
    column's Δ): ``deltas`` maps a metric name to its Δ, ``"*"`` any other metric (else 0)."""
    from agent.tracking import AtomTracker  # (numpy only; no agent runtime)

    delta = np.array([float(deltas.get(c.metric, deltas.get("*", 0.0))) for c in columns])
    bad = [c.column for c, d in zip(columns, delta) if not (d >= 0 and np.isfinite(d))]
    if bad:
        raise ValueError(f"Δ must be a finite number ≥ 0; not so for {', '.join(bad[:5])}")
    tracker = AtomTracker(delta)
    out = np.empty_like(np.asarray(values, dtype=np.float64))
    for i, row in enumerate(values):
        tracker.step(row)
        out[i] = tracker.g
    return out, delta


def anomalies_of(result: Any, detector: str = "?", index: int | None = None) -> list[Anomaly]:
    """``update``'s return value as a list (:func:`atomwatch.types.as_anomalies`); anything that
    is not None, an Anomaly or a sequence of them is a DetectorError naming detector and row."""
    try:
        return as_anomalies(result)
    except TypeError as e:
        raise DetectorError(f"detector {detector!r} at row {index}: {e}") from None


def detector_factories(pm: Any) -> dict[str, DetectorFactory]:
    """Every detector factory the loaded plugins register, by name (first registration wins)."""
    from .plugins import call_safely

    out: dict[str, DetectorFactory] = {}
    for plugin, factories in call_safely(pm, "register_detectors"):
        for f in factories or []:
            name = getattr(f, "name", None)
            if not isinstance(name, str) or not name or not callable(getattr(f, "create", None)):
                log.error("plugin %s registered %r, which has no name or create(): ignored", plugin, f)
            elif name in out:
                log.error("plugin %s registers detector %r again: the first one is kept", plugin, name)
            else:
                out[name] = f
    return out


def find_factory(pm: Any, name: str) -> DetectorFactory:
    factories = detector_factories(pm)
    if name not in factories:
        raise UnknownDetector(name, sorted(factories))
    return factories[name]


@dataclass
class DetectionRun:
    """What one detector found over a stream."""

    detector: str
    rows: int = 0
    anomalies: list[Anomaly] = field(default_factory=list)

    def flagged(self, n: int | None = None) -> np.ndarray:
        """0/1 per row (length ``n``, default the rows seen): 1 where an anomaly was raised."""
        y = np.zeros(self.rows if n is None else n, dtype=np.int64)
        for a in self.anomalies:
            if 0 <= a.index < len(y):
                y[a.index] = 1
        return y


def run_detector(detector: Detector, rows: Iterable[Row]) -> DetectionRun:
    """Call ``detector.update`` once per row, in order, and collect the anomalies."""
    name = getattr(detector, "name", type(detector).__name__)
    run = DetectionRun(detector=name)
    for row in rows:
        try:
            result = detector.update(row)
        except Exception as e:
            raise DetectorError(f"detector {name!r} failed at row {row.index}: {type(e).__name__}: {e}") from e
        run.anomalies.extend(anomalies_of(result, name, row.index))
        run.rows += 1
    return run


def detect_trace(factory: DetectorFactory, trace: Trace, options: Mapping[str, Any] | None = None, scope: str = "offline",
                 deltas: Mapping[str, float] | None = None) -> DetectionRun:
    """A fresh detector from ``factory`` over every row of ``trace`` (tracked with ``deltas``
    first when given, see :func:`trace_rows`)."""
    detector = factory.create(scope, dict(options or {}))
    run = run_detector(detector, trace_rows(trace, scope, deltas))
    run.detector = factory.name
    return run

