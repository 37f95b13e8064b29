"""Hook specifications of the controller side (detectors, orchestrators, anomaly events).

A detector plugin implements ``register_detectors``; an orchestrator plugin implements any of
the event hooks. Event hooks may return an awaitable: the controller schedules it on its event
loop and logs, never propagates, its failure. Every hook here is documented;
``tests/test_plugins.py`` fails on an undocumented one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from atomwatch import hookspec
from atomwatch.types import Anomaly, DetectorFactory

if TYPE_CHECKING:
    from .app import Controller


@hookspec
def register_detectors() -> list[DetectorFactory] | None:
    """Return detector factories. Each has a unique ``name`` (what ``--detector`` selects), a
    one-line ``description`` and ``create(scope, options)`` that makes one detector instance for
    one scope (by default all VMs of one host), or raises ``atomwatch.NotConfigured`` when it
    needs options it was not given (the controller then runs without it, said once at INFO)."""


@hookspec
def anomaly_detected(anomaly: Anomaly, controller: "Controller") -> Any:
    """Called for every anomaly a detector returns, before any alarm is opened or extended."""


@hookspec
def alarm_opened(alarm: Any, controller: "Controller") -> Any:
    """Called when an anomaly opens a new alarm (``alarm`` is a ``controller.alarms.Alarm``).
    Orchestrators start their work here, e.g. ask the agent for an introspection."""


@hookspec
def alarm_updated(alarm: Any, change: str, controller: "Controller") -> Any:
    """Called after any other change of an alarm: ``change`` names it (``extended``, ``findings``,
    ``closed`` …). The alarm's audit trail already holds the change."""


@hookspec
def verdict_given(alarm: Any, verdict: str, actor: str, params: dict, controller: "Controller") -> Any:
    """Called when an operator (``actor``) gives ``verdict`` — ``normal`` or ``malicious`` — on an
    alarm; ``params`` carries extra choices (e.g. which suspect to terminate)."""
