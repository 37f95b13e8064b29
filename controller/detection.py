"""Running detector plugins: one instance per (scope, detector), fed one row per tick.

Detectors run in a single worker thread (never on the event loop, and never two at once on the
same instance), or in worker processes each holding a set of its own (:mod:`.detect_pool`); both
offer ``run`` (a batch of rows) and ``call`` (one method of one scope's detector). A detector whose factory raises :class:`atomwatch.NotConfigured` (it needs an
option nobody gave, e.g. a trained model) is left out and said once at INFO. A detector that
raises is logged and skipped for that row; after ``MAX_FAILURES`` consecutive failures on one
scope it is switched off for that scope, and the controller goes on with the others.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from atomwatch.types import Anomaly, Detector, DetectorFactory, NotConfigured, Row, as_anomalies

log = logging.getLogger(__name__)

MAX_FAILURES = 10


class NoSuchMethod(LookupError):
    """The scope has no such detector running, or the detector lacks the method."""


class Detection(Protocol):
    """Where rows are scored: :class:`DetectorSet` (a thread) or a :class:`.detect_pool.DetectionPool`."""

    names: list[str]

    def run(self, rows: list[Row]) -> tuple[list[Anomaly], dict[str, dict[str, Any]]]: ...

    def call(self, scope: str, name: str, method: str, *args: Any) -> Any: ...


class DetectorSet:
    def __init__(self, factories: Mapping[str, DetectorFactory], options: Mapping[str, Mapping[str, Any]]):
        self.factories = dict(factories)
        self.options = options
        self.instances: dict[tuple[str, str], Detector] = {}
        #: scope → its detectors by name (a scope's status reads only its own)
        self.by_scope: dict[str, dict[str, Detector]] = {}
        self.failures: dict[tuple[str, str], int] = {}
        self.disabled: set[tuple[str, str]] = set()
        self.not_configured: set[str] = set()  # detectors already said to be not configured

    def instance(self, scope: str, name: str) -> Detector | None:
        key = (scope, name)
        if key in self.disabled:
            return None
        det = self.instances.get(key)
        if det is None:
            try:
                det = self.factories[name].create(scope, dict(self.options.get(name, {})))
            except NotConfigured as e:
                if name not in self.not_configured:
                    self.not_configured.add(name)
                    log.info("detector %s not started (not configured): %s", name, e)
                self.disabled.add(key)
                return None
            except Exception as e:
                log.error("detector %s could not start on %s: %s", name, scope, e)
                self.disabled.add(key)
                return None
            self.instances[key] = det
            self.by_scope.setdefault(scope, {})[name] = det
        return det

    def update(self, row: Row) -> list[Anomaly]:
        """Feed one row to every detector of its scope; return their anomalies. Never raises."""
        found: list[Anomaly] = []
        for name in self.factories:
            det = self.instance(row.scope, name)
            if det is None:
                continue
            key = (row.scope, name)
            try:
                found.extend(as_anomalies(det.update(row)))
                self.failures.pop(key, None)
            except Exception:
                n = self.failures[key] = self.failures.get(key, 0) + 1
                log.exception("detector %s failed on %s row %d (%d in a row)", name, row.scope, row.index, n)
                if n >= MAX_FAILURES:
                    log.error("detector %s switched off for %s after %d failures", name, row.scope, n)
                    self.disabled.add(key)
        return found

    @property
    def names(self) -> list[str]:
        return list(self.factories)

    def run(self, rows: list[Row]) -> tuple[list[Anomaly], dict[str, dict[str, Any]]]:
        """Every row through its scope's detectors; (their anomalies, each scope's status after
        its last row: ``{"row", "ts", "detectors"}``)."""
        found: list[Anomaly] = []
        last: dict[str, Row] = {}
        for row in rows:
            found.extend(self.update(row))
            last[row.scope] = row
        return found, {s: {"row": r.index, "ts": r.ts, "detectors": self.status(s)} for s, r in last.items()}

    def call(self, scope: str, name: str, method: str, *args: Any) -> Any:
        """``method(*args)`` of ``scope``'s ``name`` detector; :class:`NoSuchMethod` when it is not
        running there or has no such method."""
        det = self.instances.get((scope, name))
        fn = getattr(det, method, None) if det is not None else None
        if fn is None:
            raise NoSuchMethod(f"{name} on {scope} has no {method}")
        return fn(*args)

    def status(self, scope: str) -> dict[str, Any]:
        out = {}
        for name, det in self.by_scope.get(scope, {}).items():
            if hasattr(det, "status"):
                try:
                    out[name] = det.status()
                except Exception as e:
                    out[name] = {"error": str(e)}
        return out
