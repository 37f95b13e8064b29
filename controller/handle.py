"""The object controller-side plugins get in their event hooks: :class:`PluginHandle`.

What lives here: the controller's implementation of :class:`atomwatch.ControllerHandle` — it
forwards to the agent commands, the alarms store, the verdicts and the scope status, and gives
nothing else of the controller away. What does not: the protocol itself (core,
:mod:`atomwatch.handles`), and the pieces it forwards to (:mod:`.commands`, :mod:`.alarms`,
:mod:`.verdicts`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from atomwatch.alarm import Alarm
from atomwatch.handles import Progress, ScopeStatus

from .alarms import AlarmStore
from .commands import AgentCommands
from .verdicts import Verdicts

log = logging.getLogger(__name__)


class PluginHandle:
    """One per controller (plugins may key their state on it); implements
    :class:`atomwatch.ControllerHandle`."""

    def __init__(
        self,
        commands: AgentCommands,
        alarms: AlarmStore,
        verdicts: Verdicts,
        scope_status: Mapping[str, ScopeStatus],
        plugin_options: Callable[[str], dict[str, Any]],
    ) -> None:
        self._commands = commands
        self._alarms = alarms
        self._verdicts = verdicts
        self._scope_status = scope_status
        self._plugin_options = plugin_options

    async def send_command(
        self,
        site: str,
        host: str,
        command: str,
        params: dict[str, Any] | None = None,
        timeout: float = 60.0,
        on_progress: Progress | None = None,
    ) -> dict[str, Any]:
        return await self._commands.send(site, host, command, params, timeout=timeout, on_progress=on_progress)

    def get_alarm(self, alarm_id: int) -> Alarm:
        return self._alarms.get(alarm_id)

    def note(self, alarm_id: int, actor: str, action: str, details: dict[str, Any] | None = None) -> None:
        self._alarms.note(alarm_id, actor, action, details)

    def add_findings(self, alarm_id: int, actor: str, finding: dict[str, Any]) -> Alarm:
        return self._verdicts.add_findings(alarm_id, actor, finding)

    def close_alarm(self, alarm_id: int, actor: str, resolution: str, details: dict[str, Any] | None = None) -> Alarm:
        return self._verdicts.close_alarm(alarm_id, actor, resolution, details)

    def scope_status(self, scope: str) -> ScopeStatus | None:
        return self._scope_status.get(scope)

    def plugin_options(self, name: str) -> dict[str, Any]:
        return self._plugin_options(name)
