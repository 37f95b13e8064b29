"""Finding detector factories among the loaded plugins and running a detector over rows.

What lives here: :func:`detector_factories` and :func:`find_factory` (detector factories by name
from the plugin manager), :func:`anomalies_of` (what ``Detector.update`` may return, checked and
made a list, with the detector and row named when it is wrong) and :func:`run_detector` (one
detector over a stream of rows). The live controller, ``atomwatch detect`` and the deep plugin's
``evaluate`` share them.

What does not: turning recordings into rows (:mod:`atomwatch.trace_rows`), scoring against labels
(:mod:`atomwatch.evaluation`), printing (:mod:`atomwatch.cli.detect`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .pluginmanager import call_safely
from .types import Anomaly, Detector, DetectorFactory, Row, as_anomalies

log = logging.getLogger(__name__)


class DetectorError(RuntimeError):
    """A detector raised, or returned something that is not an Anomaly; names detector and row."""


class UnknownDetector(LookupError):
    """No loaded plugin registers a detector of that name; ``available`` lists those that do."""

    def __init__(self, name: str, available: list[str]) -> None:
        self.name = name
        self.available = available
        super().__init__(f"no detector named {name!r}; available: {', '.join(available) or '(none loaded)'}")


def anomalies_of(result: Any, detector: str = "?", index: int | None = None) -> list[Anomaly]:
    """``update``'s return value as a list (:func:`atomwatch.types.as_anomalies`); anything that
    is not None, an Anomaly or a sequence of them is a DetectorError naming detector and row."""
    try:
        return as_anomalies(result)
    except TypeError as e:
        raise DetectorError(f"detector {detector!r} at row {index}: {e}") from None


def detector_factories(pm: Any) -> dict[str, DetectorFactory]:
    """Every detector factory the loaded plugins register, by name (first registration wins)."""
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
