"""The hook specifications: every hook a plugin may implement, on either side.

Agent side: ``register_collectors`` and ``register_agent_commands``. Controller side:
``register_detectors`` and the alarm events orchestrators act on. Every hook is documented, one ``:param:`` line per argument, and every
argument typed; ``tests/test_plugins.py`` fails on an undocumented one. Controller-side event
hooks get a :class:`~atomwatch.handles.ControllerHandle`, never the controller itself.

What does not live here: the machinery that loads and calls plugins
(:mod:`atomwatch.pluginmanager`) and the types the hooks exchange (:mod:`atomwatch.types`,
:mod:`atomwatch.alarm`, :mod:`atomwatch.handles`).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from . import hookspec
from .alarm import Alarm
from .handles import ControllerHandle
from .subcommands import Subcommand
from .types import AgentSettings, Anomaly, Collector, CommandHandler, DetectorFactory

# --------------------------------------------------------------------------- agent side


@hookspec
def register_collectors(config: AgentSettings) -> list[Collector] | None:
    """Return the collectors this plugin runs on this agent, or None to run none.

    Called once at agent start. ``config.plugin_options(name)`` holds the options a user gave the
    plugin (``--set name.key=value`` or the ``[plugins.name]`` table of the config file). A plugin
    that cannot run here (its library is missing, its endpoint unset) returns None and logs why.
    Each collector's ``collect()`` is then called once per tick in a worker thread.

    :param config: the agent's site, host, tick and time budget, and every plugin's options.
    """


@hookspec
def register_agent_commands(config: AgentSettings) -> dict[str, CommandHandler] | None:
    """Return ``{command name: async handler}`` for commands the controller may send this agent.

    A handler is awaited as ``handler(params, progress)``; it returns a result dict (the ``ok``
    reply's ``result``), awaits ``progress({...})`` to report long work, and raises
    ``atomwatch.CommandError`` with a readable message to fail. ``rebirth`` and ``set-delta`` are
    built into the agent and cannot be overridden.

    :param config: the agent's site, host, tick and time budget, and every plugin's options.
    """


# --------------------------------------------------------------------------- controller side
#
# The event hooks below may return an awaitable: the controller runs it as a task of its own
# (an exception in it is logged) and does not wait for it. None means nothing more to do.


@hookspec
def register_detectors() -> list[DetectorFactory] | None:
    """Return detector factories. Each has a unique ``name`` (what ``--detector`` selects), a
    one-line ``description`` and ``create(scope, options)`` that makes one detector instance for
    one scope (by default all VMs of one host), or raises ``atomwatch.NotConfigured`` when it
    needs options it was not given (the controller then runs without it, said once at INFO)."""


@hookspec
def anomaly_detected(anomaly: Anomaly, handle: ControllerHandle) -> Awaitable[object] | None:
    """Called for every anomaly a detector returns, before any alarm is opened or extended.

    :param anomaly: what the detector found: scope, row, score, threshold and blamed columns.
    :param handle: what the plugin may do with the controller (one handle per controller).
    """


@hookspec
def alarm_opened(alarm: Alarm, handle: ControllerHandle) -> Awaitable[object] | None:
    """Called when an anomaly opens a new alarm. Orchestrators start their work here, e.g. ask
    the agent for an introspection.

    :param alarm: the new alarm, as recorded (state ``open``, one abnormal row; the store writes it
        to its file in the background).
    :param handle: what the plugin may do with the controller (one handle per controller).
    """


@hookspec
def alarm_updated(alarm: Alarm, change: str, handle: ControllerHandle) -> Awaitable[object] | None:
    """Called after any other change of an alarm. The alarm's audit trail already holds the change.

    :param alarm: the alarm after the change.
    :param change: what changed: ``extended``, ``findings``, ``closed``, ``verdict normal`` …
    :param handle: what the plugin may do with the controller (one handle per controller).
    """


@hookspec
def verdict_given(
    alarm: Alarm, verdict: str, actor: str, params: dict[str, Any], handle: ControllerHandle
) -> Awaitable[object] | None:
    """Called when an operator gives a verdict on an alarm.

    :param alarm: the alarm after the verdict (closed on *normal*, ``malicious`` on *malicious*).
    :param verdict: ``normal`` or ``malicious``.
    :param actor: who gave the verdict.
    :param params: extra choices of the operator (e.g. ``pid``: which suspect to terminate).
    :param handle: what the plugin may do with the controller (one handle per controller).
    """


# --------------------------------------------------------------------------- command line


@hookspec
def register_commands() -> list[Subcommand] | None:
    """Return the subcommands this plugin adds to the ``atomwatch`` command line.

    Each :class:`atomwatch.Subcommand` has a ``name`` (``atomwatch NAME``), a one-line ``help``,
    ``add_arguments(parser)`` and ``run(args, context) -> int``; the context
    (:class:`atomwatch.SubcommandContext`) gives what a plugin may not import itself, such as the
    controller's alarms. A name that is already a built-in subcommand or another plugin's is
    refused (logged) and the first one kept. Called only when the command line runs.
    """
