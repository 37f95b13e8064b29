"""The alarm record: what an operator sees and decides on, as the controller hands it to plugins.

What lives here: the :class:`Alarm` dataclass (one alarm of the alarms store with its blame, rows
and findings), the states and verdicts it may have, and the errors an operation on an alarm
raises (:class:`AlarmError` and its three kinds). They are core so that orchestrator plugins can
read alarms and catch those errors with nothing but ``import atomwatch``.

What does not: the SQLite store that keeps alarms and their audit trail, opens, extends and
closes them (:mod:`atomwatch.controller.alarms`), and what the controller does on a verdict
(:mod:`atomwatch.controller.verdicts`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STATES = ("open", "malicious", "closed")
VERDICTS = ("normal", "malicious")


class AlarmError(ValueError):
    """An operation on an alarm that cannot be done (bad verdict, missing actor …)."""


class AlarmNotFound(AlarmError):
    """No alarm has that id."""


class AlarmStateError(AlarmError):
    """The alarm is not in a state that allows the operation."""


class AlarmStoreUnavailable(AlarmError):
    """The alarms file cannot be read right now (damaged, unreadable); the message says why."""


@dataclass
class Alarm:
    """One alarm of one (scope, detector): ``state`` is one of :data:`STATES`; ``blame`` holds one
    dict per blamed column (``column``, ``vm_uuid``, ``vm_name``, ``metric``, ``score``, ``rows``
    …), ``rows`` the abnormal rows kept (ATOM's A: the first and the latest ones of a long alarm,
    ``rows_dropped`` counts the others), ``findings`` what orchestrators attached."""

    id: int
    scope: str
    detector: str
    state: str
    opened_at: float
    updated_at: float
    closed_at: float | None
    first_row: int
    last_row: int
    level: int
    score: float
    threshold: float
    blame: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    verdict: str | None = None
    resolution: str | None = None
    findings: list[dict[str, Any]] = field(default_factory=list)
    rows_dropped: int = 0

    @property
    def site(self) -> str:
        return self.scope.split("/", 1)[0]

    @property
    def host(self) -> str:
        return self.scope.split("/", 1)[1] if "/" in self.scope else self.scope

    def blamed_vms(self) -> list[str]:
        """The VMs (uuid) blamed, most blamed first."""
        counts: dict[str, float] = {}
        for b in self.blame:
            counts[b.get("vm_uuid", "")] = counts.get(b.get("vm_uuid", ""), 0) + 1
        return sorted(counts, key=lambda v: -counts[v])

    def to_dict(self, audit: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        if audit is not None:
            d["audit"] = audit
        return d
