"""What controller-side plugins are handed instead of the controller: :class:`ControllerHandle`.

What lives here: the :class:`ControllerHandle` protocol (exactly what an orchestrator may do:
send a command to an agent and await its reply, read an alarm, write to its audit trail, attach
findings, close it, read a scope's latest detector status, read plugin options), the shape of a
scope's status (:class:`ScopeStatus`), the progress callback type and :class:`CommandFailed`,
the error a command to an agent ends with.

What does not: the object that implements the handle (``atomwatch.controller.handle``), the
controller itself, and the alarm record (:mod:`atomwatch.alarm`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypedDict

from .alarm import Alarm
from .protocol import Reply

#: Called with every progress reply (``status == "progress"``) of a command while it runs.
Progress = Callable[[Reply], Any]


class CommandFailed(Exception):
    """An agent answered a command with an error, or did not answer in time."""


class ScopeStatus(TypedDict):
    """A scope's latest detection tick: the row index and time, and each detector's ``status()``
    (e.g. PCA-SPE's ``spe`` and ``q_alpha``, or any detector's ``score`` and ``threshold``)."""

    row: int
    ts: float
    detectors: dict[str, dict[str, Any]]


class ControllerHandle(Protocol):
    """What the controller lets a plugin do from its event hooks (``anomaly_detected``,
    ``alarm_opened``, ``alarm_updated``, ``verdict_given``). One handle per controller: a plugin
    may key its own state on it. Methods that change an alarm call ``alarm_updated`` in turn.
    Alarm methods raise :class:`atomwatch.AlarmNotFound` for an unknown id."""

    async def send_command(
        self,
        site: str,
        host: str,
        command: str,
        params: dict[str, Any] | None = None,
        timeout: float = 60.0,
        on_progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Send ``command`` to the agent of ``site``/``host`` and await its final reply; returns
        the reply's result dict. Raises :class:`CommandFailed` with the agent's error, on timeout
        or when the controller is not connected."""
        ...

    def get_alarm(self, alarm_id: int) -> Alarm:
        """The alarm as it is now, findings included."""
        ...

    def note(self, alarm_id: int, actor: str, action: str, details: dict[str, Any] | None = None) -> None:
        """Write ``action`` by ``actor`` to the alarm's audit trail without changing the alarm."""
        ...

    def add_findings(self, alarm_id: int, actor: str, finding: dict[str, Any]) -> Alarm:
        """Attach a finding (a dict with at least ``kind`` and ``summary``) to the alarm."""
        ...

    def close_alarm(self, alarm_id: int, actor: str, resolution: str, details: dict[str, Any] | None = None) -> Alarm:
        """Close the alarm with ``resolution``; raises :class:`atomwatch.AlarmStateError` if it
        is closed already."""
        ...

    def scope_status(self, scope: str) -> ScopeStatus | None:
        """The scope's status after the latest detection tick, or None before its first row."""
        ...

    def plugin_options(self, name: str) -> dict[str, Any]:
        """The options the user gave plugin ``name`` (an empty dict if none)."""
        ...
